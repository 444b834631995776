"""The application factory: routes, middlewares, access rules and the lifetime of every resource.

``create_app`` does no I/O. The database, the JWT secret and the hashing pool are opened by the cleanup
context when the application starts (before the port is bound) and closed when it stops; this is the only
module that names concrete backends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from server.config import Settings
from server.domain import Rule
from server.hashing import PasswordHasher
from server.limits.memory import MemoryRateLimiter
from server.security import TokenCodec
from server.service import AuthPolicy, AuthService
from server.storage.cached import CachedUserStore
from server.storage.secret import load_or_create_secret
from server.storage.sqlite import open_store
from server.web import handlers
from server.web.bodies import MAX_BODY_BYTES
from server.web.keys import ACCESS_RULES, SERVICE, STORE, TRUSTED_PROXIES, Requirement
from server.web.middleware import bearer_auth, error_mapping, request_context

Clock = Callable[[], float]


def auth_policy(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        signup_email_rule=Rule(
            "signup_email",
            settings.user_signup_rate_limit_email,
            settings.user_signup_rate_limit_email_window_ms / 1000,
        ),
        signup_ip_rule=Rule(
            "signup_ip",
            settings.user_signup_rate_limit_ip,
            settings.user_signup_rate_limit_ip_window_ms / 1000,
        ),
        signin_account_rule=Rule(
            "signin_account",
            settings.user_signin_rate_limit_account,
            settings.user_signin_rate_limit_account_window_ms / 1000,
        ),
        signin_ip_rule=Rule(
            "signin_ip",
            settings.user_signin_rate_limit_ip,
            settings.user_signin_rate_limit_ip_window_ms / 1000,
        ),
        create_scopes=frozenset(settings.api_user_create_scope),
        password_min_length=settings.password_min_length,
        default_plan=settings.default_plan,
    )


def create_app(settings: Settings, *, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> web.Application:
    """The mixauth application for ``settings``.

    ``clock`` (monotonic) drives the rate limiter and the user cache's checks for outside changes;
    ``wall_clock`` (seconds since the epoch) decides when remembered tokens expire. Tests pass fakes.
    """
    app = web.Application(
        middlewares=[request_context, error_mapping, bearer_auth],
        client_max_size=MAX_BODY_BYTES,
    )
    app[TRUSTED_PROXIES] = settings.trusted_proxies
    app.on_response_prepare.append(_security_headers)
    app[ACCESS_RULES] = {
        "get_user": Requirement(authenticated=True),
        "create_user": Requirement(scopes=frozenset(settings.api_user_create_scope)),
    }

    async def services(app: web.Application) -> AsyncIterator[None]:
        secret = (
            settings.jwt_secret.encode()
            if settings.jwt_secret is not None
            else await asyncio.to_thread(load_or_create_secret, settings.data_dir)
        )
        hasher = PasswordHasher(settings.bcrypt_rounds, settings.hash_workers, settings.hash_queue_limit)
        try:
            async with open_store(settings.data_dir) as database:
                store = CachedUserStore(database, database.data_version, clock=clock)
                app[STORE] = store
                app[SERVICE] = AuthService(
                    store=store,
                    hasher=hasher,
                    tokens=TokenCodec(secret, settings.jwt_token_exp, clock=wall_clock),
                    limiter=MemoryRateLimiter(clock, max_buckets=settings.rate_limit_max_buckets),
                    policy=auth_policy(settings),
                )
                yield
        finally:
            await asyncio.to_thread(hasher.close)

    app.cleanup_ctx.append(services)
    app.router.add_post("/user/auth", handlers.sign_in, name="sign_in")
    app.router.add_post("/user", handlers.create_user, name="create_user")
    app.router.add_get("/user", handlers.get_user, name="get_user", allow_head=False)
    app.router.add_get("/openapi.json", handlers.get_openapi, name="openapi", allow_head=False)
    return app


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer is JSON; no browser may sniff one into something it would render or run.
    response.headers["X-Content-Type-Options"] = "nosniff"


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access log as one structured line per request, in the same JSON as everything else."""

    _log = structlog.get_logger("mixauth.access")

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self._log.info(
            "http.request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 3),
            bytes=response.body_length,
        )
