"""What is recorded once per answered request, after its response has been sent: the access log.

aiohttp calls ``AccessLog.log`` for every request, with the time it took, inside the request's own task,
so the log context the middlewares bound (request id, client IP, user id) is still there. It writes:

- the canonical log line, ``http.request``: method, route (the path pattern, never the raw path or query
  string), status, duration and size. Health checks and scrapes are written at DEBUG only, so that a probe
  every few seconds does not fill the log at INFO;
- the request metrics (count and latency by route, method and status), when metrics are enabled.

Doing both here rather than in a middleware costs one call per request. Requests that aiohttp's HTTP
parser refused reach no application: they are logged (with no route) but not counted.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from server.web.keys import METRICS, STARTED

# Probes and scrapes arrive every few seconds.
QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
# Methods are a label of the request metrics; any other is counted as "other", so that made-up methods
# cannot multiply the metric's series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLog(AbstractAccessLogger):
    _log = structlog.get_logger("mixauth.access")
    _level_source = logging.getLogger("mixauth.access")

    @property
    def enabled(self) -> bool:
        # Always called: the metrics count every request, whatever the log level.
        return True

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        started = request.get(STARTED)
        if started is not None:  # aiohttp's own figure comes from the loop's clock, whole ms under uvloop
            time = perf_counter() - started
        route = route_of(request)
        metrics = _app_of(request).get(METRICS)
        if metrics is not None:
            method = request.method if request.method in KNOWN_METHODS else "other"
            metrics.request_answered(route or "unmatched", method, response.status, time)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not self._level_source.isEnabledFor(level):
            return
        (self._log.debug if level == logging.DEBUG else self._log.info)(
            "http.request",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(time * 1000, 3),
            bytes=response.content_length if response.content_length is not None else response.body_length,
        )


def _app_of(request: BaseRequest) -> Any:
    try:
        return request.app  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # refused by the parser: no application took it
        return {}


def route_of(request: BaseRequest) -> str | None:
    """The path pattern of the route that answered; None when no route matched."""
    # A request aiohttp's parser refused (say, an unknown method) never reached the router, and its
    # match_info property asserts: such a request has no route.
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        return None
    return resource.canonical if resource is not None else None
