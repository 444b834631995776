"""What a connection answers before and around the application: the only code that meets a request aiohttp's
HTTP parser refused, or one no route may see.

- ``JsonErrorRequestHandler``: aiohttp's per-connection protocol, whose ``handle_error`` answers the parser's
  own errors (a bad request line or method, a header too long, a duplicate Content-Length, ...) and any
  exception that escapes the application with the contract's JSON error body, ``X-Request-Id`` and
  ``nosniff``, instead of aiohttp's plain text, and logs each in one line that holds no request bytes. When
  the parser fails inside a body being read, it fails that body too (aiohttp's C parser leaves it waiting).
- ``gate``: runs before routing and before a route's expect handler (which aiohttp calls ahead of every
  middleware). It refuses, with a JSON 400 and the connection closed, the framings a proxy in front may read
  differently from aiohttp: a Transfer-Encoding other than a lone ``chunked``, Transfer-Encoding on
  HTTP/1.0, Transfer-Encoding beside Content-Length, more than one Content-Length, and any HTTP version but
  1.0 and 1.1; and answers any expectation but ``100-continue`` with a JSON 417.
- ``serve_json_errors(app)``: makes every runner of ``app`` (``web.run_app``, ``AppRunner``, the tests'
  ``aiohttp_server``) use both. aiohttp has no public hook for the protocol class, so this replaces the
  application's server factory (``Application._make_handler``, unchanged since aiohttp 3.0) on this one
  instance; nothing is patched globally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from server.domain import MixauthError
from server.logs import MALFORMED_REQUEST_EVENT, bind_request
from server.web.bodies import SECURITY_HEADERS, error_response
from server.web.client_ip import without_zone
from server.web.middleware import http_error_response, request_id_of

log = structlog.get_logger("mixauth.http")

RawHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

_MALFORMED = ("bad_request", "The request is malformed.")
_PARSER_ERRORS: dict[type[object], tuple[str, str]] = {
    LineTooLong: ("header_too_large", "The request line or a header is too long."),
    BadHttpMethod: ("bad_method", "The request method is malformed."),
}
_SUPPORTED_VERSIONS = (HttpVersion11, HttpVersion10)
# Request targets (by method) whose route has no variables, remembered with the router's answer; a client
# varying its query string only makes them be forgotten sooner.
MAX_REMEMBERED_ROUTES = 64
_FRAMING_REFUSED = ("ambiguous_framing", "The request's framing is not supported: send Content-Length or chunked.")


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering its own errors with the contract's JSON error body."""

    def data_received(self, data: bytes) -> None:
        reading = self._current_request
        if reading is None:  # between requests, as a keep-alive connection mostly is: nothing to fail
            RequestHandler.data_received(self, data)
            return
        queued = len(self._messages)
        RequestHandler.data_received(self, data)
        if len(self._messages) == queued or not isinstance(self._messages[-1][0], _ErrInfo):
            return
        # aiohttp's C parser, failing inside a body (a chunk size that is no number), queues the error as a
        # request of its own and leaves the body being read waiting for bytes that never come. Fail that body
        # instead, so its reader answers 400, and end it, so nothing reads on (aiohttp would, after the answer).
        if not reading.content.is_eof():
            reading.content.set_exception(web.RequestPayloadError("the body's framing is broken"))
            reading.content.feed_eof()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of an answer is on the wire, so the connection can only be dropped.
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        request_id = request_id_of(request)
        bind_request(request_id=request_id, client_ip=without_zone(request.remote))
        if status == 504:
            code, text = "timeout", "The request took too long."
            log.info("request.timed_out")
        elif status >= 500:
            code, text = MixauthError.code, MixauthError.default_message
            # A fault of the server's own, outside every middleware: the one place a traceback belongs.
            log.error("request.failed", exc_info=exc)
        else:
            code, text = _PARSER_ERRORS.get(type(exc), _MALFORMED)
            # The parser's message quotes the request's bytes (a token, a password): only its class is logged.
            reason = type(exc).__name__ if exc is not None else "unknown"  # as server.logs names such records
            # Scanners and TLS clients on a plain port send a bad method first: noise at INFO (as aiohttp has it).
            first_bad_method = isinstance(exc, BadHttpMethod) and self._request_count == 1
            (log.debug if first_bad_method else log.info)(MALFORMED_REQUEST_EVENT, error=reason, status=status)
        response = error_response(status, code, text, {"X-Request-Id": request_id, **SECURITY_HEADERS})
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, making a JsonErrorRequestHandler for each connection."""

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


def gate(handle: RawHandler, common: RawHandler | None = None) -> RawHandler:
    """``handle`` (the application), behind the framing and expectation checks every request passes first;
    ``common``, if given, serves the requests that pass them all and carry no ``Expect`` header."""
    serve = common or handle

    def gated(request: BaseRequest) -> Awaitable[web.StreamResponse]:
        # The common request (HTTP/1.1 or 1.0, at most one Content-Length, no Transfer-Encoding, no Expect) goes
        # straight to the application: no check would refuse it, and nothing raises outside the middleware
        # without an Expect header (only the route's expect handler does). (Header names as aiohttp's istr
        # constants: a multidict looks them up without folding their case first.)
        headers = request.headers
        if (
            request.version in _SUPPORTED_VERSIONS
            and hdrs.TRANSFER_ENCODING not in headers
            and hdrs.EXPECT not in headers
            and (hdrs.CONTENT_LENGTH not in headers or len(headers.getall(hdrs.CONTENT_LENGTH)) == 1)
        ):
            return serve(request)
        return checked(request)

    async def checked(request: BaseRequest) -> web.StreamResponse:
        refusal = _framing_refusal(request) or _expectation_refusal(request)
        if refusal is None:
            try:
                return await handle(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                request_id = request_id_of(request)
                response = http_error_response(exc)  # raised outside the middleware: by the expect handler
        else:
            status, code, text = refusal
            request_id = request_id_of(request)
            bind_request(request_id=request_id, client_ip=without_zone(request.remote))
            log.info("request.refused", reason=code, status=status)
            response = error_response(status, code, text)
            # Whatever follows these headers may be read differently by whoever sent them: never read on.
            response.force_close()
        response.headers["X-Request-Id"] = request_id
        response.headers.update(SECURITY_HEADERS)
        return response

    return gated


def _framing_refusal(request: BaseRequest) -> tuple[int, str, str] | None:
    if request.version not in _SUPPORTED_VERSIONS:
        return 400, "unsupported_http_version", "Only HTTP/1.0 and HTTP/1.1 are supported."
    headers = request.headers
    lengths = headers.getall("Content-Length", ())
    codings = headers.getall("Transfer-Encoding", ())
    if len(lengths) > 1:
        return 400, *_FRAMING_REFUSED
    if codings:
        tokens = [token.strip().lower() for value in codings for token in value.split(",")]
        if tokens != ["chunked"] or lengths or request.version != HttpVersion11:
            return 400, *_FRAMING_REFUSED
    return None


def _expectation_refusal(request: BaseRequest) -> tuple[int, str, str] | None:
    expectations = [value for value in request.headers.getall("Expect", ()) if value.strip()]
    # RFC 9110: a server ignores the expectations of an HTTP/1.0 request, as aiohttp does.
    if not expectations or request.version != HttpVersion11:
        return None
    if len(expectations) == 1 and expectations[0].lower() == "100-continue":
        return None  # the route's expect handler sends "100 Continue"
    return 417, "expectation_failed", "Only the expectation 100-continue is supported."


def routed(app: web.Application) -> RawHandler | None:
    """What ``Application._handle`` does with a request without an ``Expect`` header, for an application with
    one middleware and no sub-application (mixauth's), without aiohttp's per-request machinery around the
    middleware: a loop lookup, building the middleware chain (a cache keyed by a tuple of applications) and
    a second middleware of aiohttp's own that sets the request's current application, which is already this
    one. None for any other application: ``_handle`` serves it.

    The router's answer for a route without variables (``/user``) is the same, frozen, for every request with
    the same method and request target: it is remembered (``MAX_REMEMBERED_ROUTES`` of them) rather than
    resolved again, as it is for a path with variables, a 404 or a 405.
    """
    middlewares = tuple(app.middlewares)
    if len(middlewares) != 1 or any(isinstance(r, web.PrefixedSubAppResource) for r in app.router.resources()):
        return None
    (middleware,) = middlewares
    resolve = app.router.resolve
    remembered: dict[tuple[str, str], UrlMappingMatchInfo] = {}

    async def handle(request: BaseRequest) -> web.StreamResponse:
        key = (request.method, request.raw_path)
        match_info = remembered.get(key)
        if match_info is None:
            match_info = await resolve(request)  # type: ignore[arg-type]
            match_info.add_app(app)
            match_info.freeze()
            if not match_info and match_info.http_exception is None:  # a route without variables
                if len(remembered) >= MAX_REMEMBERED_ROUTES:
                    remembered.clear()
                remembered[key] = match_info
        request._match_info = match_info  # type: ignore[attr-defined]
        return await middleware(request, match_info.handler)  # type: ignore[arg-type]

    return handle


def serve_json_errors(app: web.Application) -> None:
    """Make every server that runs ``app`` a JsonErrorServer whose requests pass the gate."""
    make_server = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        server = make_server(**kwargs)
        return JsonErrorServer(
            gate(server.request_handler, routed(app)),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )

    # Application warns (in aiohttp's debug mode) about attributes it does not list; this one it calls.
    object.__setattr__(app, "_make_handler", make_handler)
