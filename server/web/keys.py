"""Typed keys for what the application and each request carry (no globals, no string keys)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from server.domain import Principal, ResetNotifier, UserStore
from server.metrics import Metrics
from server.recovery import RecoveryService
from server.service import AuthService
from server.users import UserAdministration


@dataclass(eq=False, frozen=True, slots=True)
class Requirement:
    """What a route asks of its caller: a valid token, and one of ``scopes`` when that is not empty."""

    authenticated: bool = False
    scopes: frozenset[str] = frozenset()
    # The route checks a bearer token of its own (the metrics token), which is no user's JWT.
    own_bearer: bool = False


OPEN = Requirement()

SERVICE = web.AppKey("service", AuthService)
STORE = web.AppKey("store", UserStore)
USERS = web.AppKey("users", UserAdministration)
RECOVERY = web.AppKey("recovery", RecoveryService)
# Where reset codes go (the webhook), opened before the services that use it and closed after them.
RESET_NOTIFIER = web.AppKey("reset_notifier", ResetNotifier)
METRICS = web.AppKey("metrics", Metrics)
# The bearer token GET /metrics asks for, in UTF-8; absent when none is configured.
METRICS_TOKEN = web.AppKey("metrics_token", bytes)


@dataclass(eq=False, frozen=True, slots=True)
class Readiness:
    """What GET /health/ready asks: ``probes`` must all answer (the database), ``states`` are reported
    (the rate limiter's backend, which never makes the instance unready)."""

    probes: Mapping[str, Callable[[], Awaitable[object]]]
    states: Mapping[str, Callable[[], str]]


READINESS = web.AppKey("readiness", Readiness)


@dataclass(eq=False, slots=True)
class RequestContext:
    """What the middleware learned of a request, in one object set once (each request key set costs aiohttp
    a type check through ABCMeta): when it arrived, the client's IP, and who sent it once a valid bearer token
    said so (None without one)."""

    # time.perf_counter() when the request reached the application (uvloop's loop clock counts whole ms).
    started: float
    client_ip: str
    principal: Principal | None = None


CONTEXT = web.RequestKey("context", RequestContext)
