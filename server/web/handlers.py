"""Route handlers: read the body, make one service call, answer JSON in the Appmixer shapes."""

from __future__ import annotations

import asyncio
import hmac

import structlog
from aiohttp import web

from server import validation
from server.domain import AuthenticationRequired, InvalidToken, NotReady, Principal
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.service import PasswordChange
from server.views import user_details, user_summary
from server.web.bodies import SECURITY_HEADERS, JsonMemo, json_response, read_json_object
from server.web.keys import CONTEXT, METRICS, METRICS_TOKEN, READINESS, SERVICE
from server.web.openapi import OPENAPI_DOCUMENT

log = structlog.get_logger("mixauth.health")
metrics_log = structlog.get_logger("mixauth.metrics")

READINESS_TIMEOUT = 2.0

NO_STORE = {"Cache-Control": "no-store"}
# GET /user's body for each user record (see JsonMemo): the same bytes on every request until the user changes.
# A memo of a pure function of the record, like functools' caches, so one serves every application in the process.
USER_DETAILS = JsonMemo(user_details)


async def sign_in(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    result = await request.app[SERVICE].sign_in(body, request[CONTEXT].client_ip)
    return json_response({"user": user_summary(result.user), "token": result.token}, headers=NO_STORE)


async def create_user(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    token = await request.app[SERVICE].sign_up(body, request[CONTEXT].client_ip, request[CONTEXT].principal)
    return json_response({"token": token}, headers=NO_STORE)


async def get_user(request: web.Request) -> web.Response:
    return USER_DETAILS.response(principal_of(request).user)


def principal_of(request: web.Request) -> Principal:
    """Who sent the request: the middleware's bearer check found one before any authenticated route runs."""
    principal = request[CONTEXT].principal
    if principal is None:  # an authenticated route registered without its rule would be refused before this
        raise AuthenticationRequired()
    return principal


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI_DOCUMENT)


async def health_live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def health_ready(request: web.Request) -> web.Response:
    """200 when every backend the instance needs answers within the timeout, with what each one is;
    503 naming the first that does not."""
    readiness = request.app[READINESS]
    report: dict[str, str] = {}
    for name, probe in readiness.probes.items():
        try:
            await asyncio.wait_for(probe(), READINESS_TIMEOUT)
        except Exception as exc:  # any failure of the probe means "not ready"; the reason goes to the log
            log.warning("health.not_ready", backend=name, error=type(exc).__name__)
            raise NotReady() from None
        report[name] = "ok"
    for name, state in readiness.states.items():
        report[name] = state()
    return json_response({"status": "ok", **report})


async def get_metrics(request: web.Request) -> web.Response:
    _check_metrics_token(request)
    headers = {"Content-Type": METRICS_CONTENT_TYPE, **SECURITY_HEADERS, **NO_STORE}
    return web.Response(body=request.app[METRICS].render(), headers=headers)


def _check_metrics_token(request: web.Request) -> None:
    """With a metrics token configured, the request must carry it as its one ``Authorization: Bearer``."""
    expected = request.app.get(METRICS_TOKEN)
    if expected is None:
        return
    headers = request.headers.getall("Authorization", ())
    if not headers:
        metrics_log.warning("metrics.denied", reason="no_token")
        raise AuthenticationRequired()
    scheme, _, token = headers[0].strip().partition(" ") if len(headers) == 1 else ("", "", "")
    given = token.strip() if scheme.lower() == "bearer" else ""
    # Constant time: how far a guess matches must not show in how long the answer takes.
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected):
        metrics_log.warning("metrics.denied", reason="wrong_token")
        raise InvalidToken("wrong_metrics_token")


async def change_password(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    change = PasswordChange(
        old_password=validation.required_string(body, "oldPassword"),
        new_password=validation.required_string(body, "newPassword"),
    )
    token = await request.app[SERVICE].change_password(principal_of(request), change, request[CONTEXT].client_ip)
    return json_response({"token": token}, headers=NO_STORE)


async def log_out(request: web.Request) -> web.Response:
    await request.app[SERVICE].log_out(principal_of(request))
    return json_response({})
