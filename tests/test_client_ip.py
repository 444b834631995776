"""The client IP: the socket peer, or X-Forwarded-For read right to left through trusted proxies only."""

from __future__ import annotations

import io
import ipaddress
import json
from typing import Any

import pytest

from server.config import parse_networks
from server.domain import InvalidForwardedFor
from server.logs import configure_logging
from server.web.client_ip import resolve_client_ip
from tests.conftest import PASSWORD, ClientFactory

PROXIES = parse_networks("10.0.0.0/8, 192.0.2.1, 2001:db8:ffff::/48")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer's header is ignored
        ("203.0.113.9", ["not an address"], "203.0.113.9"),  # ... even when malformed
        ("10.1.2.3", [], "10.1.2.3"),  # a trusted peer with no header is the client itself
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # what the client wrote on the left is not believed
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1, 192.0.2.1, 10.9.9.9"], "198.51.100.1"),  # trusted hops skipped
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # repeated headers join in order
        ("10.1.2.3", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # all trusted: the farthest hop
        ("::ffff:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),  # an IPv4-mapped peer is its IPv4 address
        ("2001:db8:ffff:1::1", ["2001:DB8::7"], "2001:db8::7"),  # IPv6, normalised
        ("10.1.2.3", ["::ffff:198.51.100.1"], "198.51.100.1"),
        # A link-local peer is known by its address: the zone names an interface of this machine.
        ("fe80::1%eth0", ["198.51.100.1"], "fe80::1"),
    ],
)
def test_resolution(peer: str, forwarded: list[str], client: str) -> None:
    assert resolve_client_ip(peer, forwarded, PROXIES) == client


@pytest.mark.parametrize(
    "header",
    [
        "",
        " ",
        "198.51.100.1,",
        ",198.51.100.1",
        "198.51.100.1:8080",
        "[2001:db8::1]",
        "unknown",
        "1.2.3",
        "1.2.3.4 5.6.7.8",
        # An IPv6 zone id names an interface of whoever wrote it, never a client.
        "fe80::1%eth0",
        "198.51.100.1, fe80::1%25eth0",
        "fe80::1%1",
        "2001:db8::1%x",
        "fe80::1%\udce9",
    ],
)
def test_a_malformed_header_from_a_trusted_peer_is_refused(header: str) -> None:
    with pytest.raises(InvalidForwardedFor):
        resolve_client_ip("10.1.2.3", [header], PROXIES)


def test_nothing_is_trusted_by_default() -> None:
    assert resolve_client_ip("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"
    assert resolve_client_ip(None, ["198.51.100.1"], PROXIES) == "unknown"


def test_proxy_lists_parse_addresses_and_ranges() -> None:
    assert parse_networks("") == ()
    assert parse_networks(["10.0.0.1", "10.0.0.0/8"]) == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        parse_networks("10.0.0.0/8,nope")


@pytest.mark.parametrize("value", ["fe80::1%eth0", "fe80::%eth0/64", "10.0.0.0/8, fe80::1%1"])
def test_a_proxy_list_with_an_ipv6_zone_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or CIDR range"):
        parse_networks(value)


def test_the_zone_text_is_never_the_client_ip_without_trusted_proxies() -> None:
    assert resolve_client_ip("fe80::1%eth0", [], ()) == "fe80::1"


@pytest.mark.usefixtures("restore_logging")
async def test_a_trusted_proxy_decides_the_ip_every_limiter_and_log_line_sees(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client = await make_client(trusted_proxies=parse_networks("127.0.0.1"), user_signup_rate_limit_ip=1)

    async def signup(n: int, forwarded: str) -> Any:
        body = {"username": f"user{n}", "email": f"user{n}@example.com", "password": PASSWORD}
        return await client.post("/user", json=body, headers={"X-Forwarded-For": forwarded})

    assert (await signup(1, "198.51.100.1")).status == 200
    assert (await signup(2, "6.6.6.6, 198.51.100.1")).status == 429  # the same client, whatever it prepends
    assert (await signup(3, "198.51.100.2")).status == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = [(line["event"], line["client_ip"]) for line in lines if line["logger"] == "mixauth.auth"]
    assert events == [
        ("user.created", "198.51.100.1"),
        ("signup.rate_limited", "198.51.100.1"),
        ("user.created", "198.51.100.2"),
    ]


async def test_an_untrusted_peer_cannot_pick_its_ip(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_ip=1)
    body = {"username": "u1", "email": "u1@example.com", "password": PASSWORD}
    assert (await client.post("/user", json=body, headers={"X-Forwarded-For": "198.51.100.1"})).status == 200
    body = {"username": "u2", "email": "u2@example.com", "password": PASSWORD}
    assert (await client.post("/user", json=body, headers={"X-Forwarded-For": "198.51.100.2"})).status == 429


async def test_a_malformed_header_from_a_trusted_proxy_is_a_400(make_client: ClientFactory) -> None:
    client = await make_client(trusted_proxies=parse_networks("127.0.0.0/8"))
    response = await client.get("/user", headers={"X-Forwarded-For": "198.51.100.1, garbage"})
    assert response.status == 400
    body = await response.json()
    assert body["code"] == "invalid_forwarded_for"
    assert body["statusCode"] == 400
    assert response.headers["X-Request-Id"]


async def test_a_zoned_address_from_a_trusted_proxy_is_a_400_before_any_sign_in(
    make_client: ClientFactory, log_guard: list[str]
) -> None:
    client = await make_client(trusted_proxies=parse_networks("127.0.0.0/8"))
    body = {"username": "u1", "email": "u1@example.com", "password": PASSWORD}
    assert (await client.post("/user", json=body)).status == 200
    credentials = {"username": "u1", "password": PASSWORD}
    response = await client.post("/user/auth", json=credentials, headers={"X-Forwarded-For": "fe80::1%eth0"})
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_forwarded_for"
    events = [json.loads(line) for line in log_guard]
    assert not [event for event in events if event["event"].startswith("user.signin")]
    assert not [event for event in events if "eth0" in json.dumps(event)]
