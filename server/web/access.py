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
from typing import Any, NamedTuple

import orjson
import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_exceptions import HTTPMethodNotAllowed
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_urldispatcher import AbstractRoute
from multidict import istr

from server.logs import LineLoggerMemo, LineText
from server.metrics import Metrics, RequestSeries
from server.web.keys import CONTEXT, METRICS

EVENT = "http.request"
# The fields that vary from one answer of a kind to the next, after its method, route and status.
VARIABLE_FIELDS = ("duration_ms", "bytes")
# Probes and scrapes arrive every few seconds.
QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
# Methods are a label of the request metrics; any other is counted as "other", so that made-up methods
# cannot multiply the metric's series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Below it (in whole microseconds), repr() writes a duration in ms as JSON does (above, with an exponent).
LARGEST_PLAIN_MICROSECONDS = 10**18
# What a connection remembers of each (route, method, status) it answered, at most.
MAX_KINDS = 64
_CONTENT_LENGTH = istr("Content-Length")
_UNKNOWN = object()


class _Kind(NamedTuple):
    """What every answer of one route, method and status has in common, as the access log writes and counts it."""

    route: str | None
    series: RequestSeries | None  # None without metrics, or for a request no application took
    quiet: bool
    levelno: int
    level: str
    # The line's fields as text for the logging's text path (``"method":"GET","route":"/user","status":200,
    # "duration_ms":%s,"bytes":%d``), for a known method: None for a method the client made up, which takes
    # the renderer's path.
    text: LineText | None


class AccessLog(AbstractAccessLogger):
    _log = structlog.get_logger("mixauth.access")
    _level_source = logging.getLogger("mixauth.access")

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # aiohttp makes one access logger per connection, and a connection serves one application and mostly
        # asks for the same few things: what it answered, by (route, method, status), is remembered here.
        self._metrics: Metrics | object | None = _UNKNOWN
        self._direct = LineLoggerMemo(self._log)
        self._kinds: dict[tuple[AbstractRoute | None, str, int], _Kind] = {}

    @property
    def enabled(self) -> bool:
        # Always called: the metrics count every request, whatever the log level.
        return True

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        # aiohttp's own figure comes from the loop's clock, whole ms under uvloop. (A try is cheaper than
        # contextlib.suppress, and than request.get, on every request.)
        try:  # noqa: SIM105
            time = perf_counter() - request[CONTEXT].started
        except KeyError:  # a request the middleware never saw
            pass
        try:
            matched = request.match_info.route  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):  # refused by the parser: it never reached the router
            matched = None
        method, status = request.method, response.status
        kind = self._kinds.get((matched, method, status))
        if kind is None:
            kind = self._kind(request, matched, method, status)
        if kind.series is not None:
            kind.series.observe(time)
        if not self._level_source.isEnabledFor(kind.levelno):
            return
        length = response.headers.get(_CONTENT_LENGTH)  # what aiohttp wrote from the body's size
        size = int(length) if length is not None and length.isdigit() and length.isascii() else _size(response)
        microseconds = round(time * 1_000_000)
        direct = self._direct.get()
        # The same line without structlog's per-call work; put together as text from this code's own words and
        # numbers, but for a method the client made up.
        if direct is not None and kind.text is not None and 0 <= microseconds < LARGEST_PLAIN_MICROSECONDS:
            direct.emit_text(kind.level, EVENT, kind.text, (microseconds / 1000, size))
            return
        fields = {"method": method, "route": kind.route, "status": status, "duration_ms": microseconds / 1000}
        fields["bytes"] = size
        if direct is None:  # structlog's chain is not configure_logging's (a test's capture_logs)
            (self._log.debug if kind.quiet else self._log.info)(EVENT, **fields)
        else:
            direct.emit(kind.level, EVENT, fields)

    def _kind(self, request: BaseRequest, matched: AbstractRoute | None, method: str, status: int) -> _Kind:
        route = route_of(request) if matched is not None else None
        known = method in KNOWN_METHODS
        metrics = self._metrics
        if metrics is _UNKNOWN:
            app = _app_of(request)
            metrics = app.get(METRICS)
            if app:  # not a request the parser refused, which no application took
                self._metrics = metrics
        series = None
        if isinstance(metrics, Metrics) and matched is not None:  # refused by the parser: not counted
            series = metrics.requests(route or "unmatched", method if known else "other", status)
        # A probe or a scrape is quiet; a wrong method on their paths is not one.
        quiet = route in QUIET_ROUTES and status != HTTPMethodNotAllowed.status_code
        text = None
        if known:
            head = f'"method":{orjson.dumps(method).decode()},"route":{orjson.dumps(route).decode()},"status":{status},'
            fixed = (("method", method), ("route", route), ("status", status))
            text = LineText(head.replace("%", "%%") + '"duration_ms":%s,"bytes":%d', fixed, VARIABLE_FIELDS)
        level = "debug" if quiet else "info"
        kind = _Kind(route, series, quiet, logging.DEBUG if quiet else logging.INFO, level, text)
        # Not a 404's or 405's route, made for that one request (nor a request the parser refused).
        if matched is not None and matched.resource is not None:
            if len(self._kinds) >= MAX_KINDS:
                self._kinds.clear()
            self._kinds[(matched, method, status)] = kind
        return kind


def _size(response: StreamResponse) -> int:
    size = response.content_length  # a property that parses the header: read once
    return response.body_length if size is None else size


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
