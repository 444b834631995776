"""The middleware: one per application, doing for every request, outermost first:

- the request context: gives the request an id and its client IP (resolved through trusted proxies), binds
  both into the log context, and returns the id in ``X-Request-Id`` beside ``SECURITY_HEADERS``;
- the error mapping (``error_answer``): the one place errors become HTTP responses. Domain errors carry their
  status and code; aiohttp's own HTTP errors (404, 405, 413, ...) get the same JSON body; a body the client
  broke off or framed badly is the client's doing, logged in one line at INFO; anything else is logged with
  its traceback and answered with a bare 500. (``asyncio.CancelledError`` is no Exception and passes through
  untouched.)
- the bearer check (``check_bearer``): reads an ``Authorization: Bearer`` header on every request (a present
  but invalid one is 401 everywhere), then checks the route's Requirement; a route that checks a bearer token
  of its own (``/metrics`` and its metrics token) is left to do so.

They are steps of one middleware rather than three: each aiohttp middleware is one more coroutine and frame
around every request, and the one closure also keeps the trusted proxies and access rules at hand instead of
looking them up in the application on every request.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import AbstractRoute
from multidict import CIMultiDict, istr

from server.config import IPNetwork
from server.domain import InsufficientScope, InvalidForwardedFor, MixauthError
from server.logs import context_field
from server.service import AuthService
from server.web.bodies import MAX_BODY_BYTES, SECURITY_HEADERS, error_response
from server.web.client_ip import resolve_client_ip, without_zone
from server.web.keys import CONTEXT, OPEN, SERVICE, RequestContext, Requirement

log = structlog.get_logger("mixauth.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    417: ("expectation_failed", "Only the expectation 100-continue is supported."),
    404: ("not_found", "No resource matches this path."),
    405: ("method_not_allowed", "This method is not allowed on this path."),
    413: ("body_too_large", f"The request body is too large (at most {MAX_BODY_BYTES} bytes)."),
}
_PASSED_ON_HEADERS = ("Allow",)
# Header names as multidict keys made once: setting them costs a third of setting plain strings, and looking
# them up skips folding their case.
_REQUEST_ID_HEADER = istr("X-Request-Id")
_SECURITY_HEADERS = CIMultiDict(SECURITY_HEADERS)  # set in one call


def request_id_of(request: BaseRequest) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one."""
    incoming = request.headers.get(_REQUEST_ID_HEADER)
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    # 128 random bits, like a UUID4, from the interpreter's generator: a request id correlates log lines
    # and is no secret, and os.urandom's system call cost 8 % of a cached GET /user.
    return random.getrandbits(128).to_bytes(16).hex()  # a format spec (:032x) costs twice as much


def http_error_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP error (404, 405, 413, 417, ...) as the contract's JSON error body."""
    known = _HTTP_ERRORS.get(exc.status)
    code, message = known if known is not None else (_snake(exc.reason), f"{exc.reason}.")
    headers = {name: exc.headers[name] for name in _PASSED_ON_HEADERS if name in exc.headers}
    return error_response(exc.status, code, message, headers)


def request_middleware(
    trusted_proxies: Sequence[IPNetwork], rules: Mapping[str, Requirement] | None = None
) -> Middleware:
    """The middleware of an application whose clients' addresses may be forwarded by ``trusted_proxies``, and
    whose routes' access rules are ``rules`` (by route name; None for an application that leaves bearer tokens
    to its one route, the metrics listener)."""
    # The log context's fields of every request, set directly (see server.logs.context_field).
    request_id_field, client_ip_field = context_field("request_id"), context_field("client_ip")
    known: dict[AbstractRoute, tuple[Requirement, AuthService]] = {}  # see check_bearer

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_of(request)
        request_id_field.set(request_id)
        try:
            if trusted_proxies:
                forwarded = request.headers.getall("X-Forwarded-For", ())
                client_ip = resolve_client_ip(request.remote, forwarded, trusted_proxies)
            else:  # without_zone, inline: on every request
                peer = request.remote
                client_ip = peer.partition("%")[0] if peer is not None else "unknown"
        except InvalidForwardedFor as exc:
            peer_ip = without_zone(request.remote)
            request[CONTEXT] = RequestContext(started, peer_ip)
            client_ip_field.set(peer_ip)
            log.warning("request.rejected", reason=exc.code)
            response: web.StreamResponse = error_response(exc.status, exc.code, exc.message)
        else:
            request[CONTEXT] = context = RequestContext(started, client_ip)
            client_ip_field.set(client_ip)
            try:
                if rules is not None:
                    waiting = check_bearer(request, context, rules, known)
                    if waiting is not None:
                        await waiting
                response = await handler(request)
            except Exception as exc:
                response = error_answer(request, exc)
        headers = response.headers
        headers[_REQUEST_ID_HEADER] = request_id
        headers.update(_SECURITY_HEADERS)
        return response

    return middleware


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handling raised ``exc``; an HTTP exception below 400 (a redirect) is
    raised again, for aiohttp to send as it is."""
    if isinstance(exc, MixauthError):
        return error_response(exc.status, exc.code, exc.message, exc.headers())
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return http_error_response(exc)
    if isinstance(exc, ConnectionError):
        # The client went away while its body was being read (or its answer written): nobody will read
        # this answer, and a client's hang-up is no fault of the server's.
        log.info("request.aborted", method=request.method, route=_route_of(request))
        return error_response(400, "client_disconnected", "The client closed the connection mid-request.")
    if isinstance(exc, web.RequestPayloadError):
        # The body's own framing broke (a chunk size that is no number, fewer bytes than announced).
        log.info("request.body_unreadable", method=request.method, route=_route_of(request))
        response = error_response(400, *_HTTP_ERRORS[400])
        response.force_close()  # where this body ends is unknown, so nothing after it can be read as a request
        return response
    log.error("request.failed", method=request.method, path=request.path, exc_info=exc)
    return error_response(500, MixauthError.code, MixauthError.default_message)


def check_bearer(
    request: web.Request,
    context: RequestContext,
    rules: Mapping[str, Requirement],
    known: dict[AbstractRoute, tuple[Requirement, AuthService]],
) -> Coroutine[Any, Any, None] | None:
    """Authenticate the request's bearer token, if it has one (its principal goes into ``context``), and check
    the matched route's access rule: at once where nothing needs a wait (no token, or one whose user is
    remembered), else in the coroutine returned, to be awaited. ``known``: each route's rule and the service,
    as looked up for its first request (the application's routes and state are fixed once it serves); but
    for a route that checks a bearer token of its own, which is left to do so."""
    match_info = request.match_info
    route = match_info.route
    found = known.get(route)
    if found is None:
        route_name = route.name
        requirement = rules.get(route_name or "")
        if requirement is None:
            if match_info.http_exception is None:
                # A route matched but has no access rule: closed, not open (see server.web.routes).
                log.error("authz.denied", reason="no_rule", route=route_name, path=request.path)
                raise InsufficientScope()
            requirement = OPEN  # no route matched: the 404 or 405 is for anyone (a route made for this request)
        if requirement.own_bearer:
            return None
        found = requirement, request.app[SERVICE]
        if match_info.http_exception is None:
            known[route] = found
    requirement, service = found
    headers = request.headers.getall(hdrs.AUTHORIZATION, ())
    if headers:
        # Two Authorization headers are ambiguous (proxies may pick either): refused like a bad token.
        scheme, _, token = headers[0].strip().partition(" ") if len(headers) == 1 else ("", "", "")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        principal = service.authenticate_now(bearer)
        if principal is None:
            return _authenticate(service, bearer, context, requirement, route.name)
        context.principal = principal
        if requirement.scopes:  # a principal is all that an authenticated route asks
            service.authorize(principal, requirement.scopes, route.name)
    elif requirement.authenticated or requirement.scopes:
        service.authorize(None, requirement.scopes, route.name)
    return None


async def _authenticate(
    service: AuthService, bearer: str, context: RequestContext, requirement: Requirement, route_name: str | None
) -> None:
    principal = context.principal = await service.authenticate(bearer)
    if requirement.scopes:
        service.authorize(principal, requirement.scopes, route_name)


def _route_of(request: web.Request) -> str | None:
    # The route's pattern, never the raw path, which the client chose.
    return request.match_info.route.resource.canonical if request.match_info.route.resource else None


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "http_error"
