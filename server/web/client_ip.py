"""The client's IP address: the socket peer, or, behind trusted reverse proxies, what they forwarded.

Only a peer listed in TRUSTED_PROXIES may speak for the client. Its ``X-Forwarded-For`` is read right to left
(each proxy appends the address it received the request from), trusted hops are skipped, and the first
untrusted address is the client: anything to its left was written by the client itself and proves nothing.
An IPv6 zone id (``fe80::1%eth0``) names an interface of the machine that wrote it, not a client: a
forwarded address that carries one is malformed, and a link-local socket peer is known by its address alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from server.config import IPNetwork
from server.domain import InvalidForwardedFor

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolve_client_ip(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[IPNetwork]) -> str:
    """The client address for a request from ``peer`` carrying the ``X-Forwarded-For`` values ``forwarded_for``.

    Raise InvalidForwardedFor when a trusted peer sends a header that is not a list of IP addresses.
    """
    if peer is None:
        return "unknown"
    if not trusted:
        return without_zone(peer)  # the common case, on every request: nothing to parse
    peer_address = _parse(without_zone(peer))
    if peer_address is None or not _is_trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else without_zone(peer)
    hops: list[IPAddress] = []
    for value in forwarded_for:
        for item in value.split(","):
            address = _parse(item.strip())
            if address is None:
                raise InvalidForwardedFor()
            hops.append(address)
    for address in reversed(hops):
        if not _is_trusted(address, trusted):
            return str(address)
    # Every hop is a trusted proxy: the farthest one is as close to the client as we can know.
    return str(hops[0]) if hops else str(peer_address)


def without_zone(peer: str | None) -> str:
    """The socket peer's address without its IPv6 zone id (``fe80::1%eth0`` is ``fe80::1``)."""
    if peer is None:
        return "unknown"
    return peer.partition("%")[0]


def _parse(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)
