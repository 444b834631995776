"""Typed keys for what the application and each request carry (no globals, no string keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from server.config import IPNetwork
from server.domain import Principal, UserStore
from server.metrics import Metrics
from server.service import AuthService


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a route asks of its caller: a valid token, and one of ``scopes`` when that is not empty."""

    authenticated: bool = False
    scopes: frozenset[str] = frozenset()


OPEN = Requirement()

SERVICE = web.AppKey("service", AuthService)
STORE = web.AppKey("store", UserStore)
METRICS = web.AppKey("metrics", Metrics)


class Probe(Protocol):
    async def data_version(self) -> int:
        """A cheap database query: the readiness check's answer."""
        ...


READINESS = web.AppKey("readiness", Probe)
ACCESS_RULES = web.AppKey("access_rules", dict[str, Requirement])
TRUSTED_PROXIES: web.AppKey[tuple[IPNetwork, ...]] = web.AppKey("trusted_proxies")

CLIENT_IP = web.RequestKey("client_ip", str)
# time.perf_counter() when the request reached the application (uvloop's loop clock counts whole ms).
STARTED = web.RequestKey("started", float)
PRINCIPAL = web.RequestKey("principal", Principal)
