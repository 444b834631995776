"""What is recorded once per answered request, after its response has been sent: the access log.

aiohttp calls ``AccessLog.log`` for every request, with the time it took, inside the request's own task,
so the log context the middlewares bound (request id, client IP, user id) is still there. It writes:

- the canonical log line, ``http.request``: method, route (the path pattern, never the raw path or query
  string), status, duration and size. Health checks and scrapes are written at DEBUG only, so that a probe
  every few seconds does not fill the log at INFO;
- the request metrics (count and latency by route, method and status), when metrics are enabled.

Both name the same route: the pattern of the resource the path matched, also when the method did not (a
405); for a path no resource has (a 404) the log's ``route`` is null and the metrics' label ``unmatched``.

The line takes the logging's direct path (``server.logs``): the fields structlog's chain would give it, in
its order, rendered, redacted and written by the same code, without the chain's per-call work.

Doing both here rather than in a middleware costs one call per request. Requests that aiohttp's HTTP
parser refused reach no application: they are logged (with no route) but not counted.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_exceptions import HTTPMethodNotAllowed
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from server.logs import line_logger_of
from server.web.keys import METRICS, STARTED

EVENT = "http.request"
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
        # A probe or a scrape is quiet; a wrong method on their paths is not one.
        quiet = route in QUIET_ROUTES and response.status != HTTPMethodNotAllowed.status_code
        level = logging.DEBUG if quiet else logging.INFO
        if not self._level_source.isEnabledFor(level):
            return
        size = response.content_length  # a property that parses the header: read once
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status,
            # Whole microseconds, in ms: round() to an integer costs a fifth of round() to 3 digits.
            "duration_ms": round(time * 1_000_000) / 1000,
            "bytes": size if size is not None else response.body_length,
        }
        direct = line_logger_of(self._log)
        if direct is not None:  # the same line, without structlog's per-call work
            direct.emit("debug" if level == logging.DEBUG else "info", EVENT, fields)
        else:
            (self._log.debug if level == logging.DEBUG else self._log.info)(EVENT, **fields)


def _app_of(request: BaseRequest) -> Any:
    try:
        return request.app  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # refused by the parser: no application took it
        return {}


def route_of(request: BaseRequest) -> str | None:
    """The path pattern of the resource that the request's path matched; None when none did."""
    # A request aiohttp's parser refused (say, an unknown method) never reached the router, and its
    # match_info property asserts: such a request has no route.
    try:
        match_info = request.match_info  # type: ignore[attr-defined]
        resource = match_info.route.resource
    except (AttributeError, AssertionError):
        return None
    if resource is not None:
        return str(resource.canonical)
    if isinstance(getattr(match_info, "http_exception", None), HTTPMethodNotAllowed):
        return _resource_matching_path(request)
    return None


def _resource_matching_path(request: BaseRequest) -> str | None:
    """The pattern of the resource whose path matched when its methods did not (a 405).

    The router does not keep that resource; finding it again costs a walk over the resources, for 405s only.
    """
    path = request.rel_url.path_safe  # what the router matched against
    for resource in request.app.router.resources():  # type: ignore[attr-defined]
        info = resource.get_info()
        if info.get("path") == path or ("pattern" in info and info["pattern"].fullmatch(path)):
            return str(resource.canonical)
    return None
