"""The application factory: routes, middlewares, access rules and the lifetime of every resource.

``create_app`` does no I/O. The database, the JWT secret and the hashing pool are opened by the cleanup
context when the application starts (before the port is bound) and closed when it stops; this is the only
module that names concrete backends. With METRICS_PORT set (the default), a second, metrics-only listener
lives in a cleanup context of its own, started first.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from server.backends import open_backends
from server.config import Settings
from server.domain import Rule
from server.hashing import PasswordHasher
from server.limits.memory import MemoryRateLimiter
from server.metrics import Metrics
from server.recovery import RecoveryPolicy, RecoveryService
from server.security import TokenCodec
from server.service import UNOBSERVED, AuthPolicy, AuthService
from server.storage.cached import CachedUserStore
from server.users import UserAdministration
from server.web import handlers
from server.web.bodies import MAX_BODY_BYTES
from server.web.connection import serve_json_errors
from server.web.keys import (
    METRICS,
    METRICS_TOKEN,
    READINESS,
    RECOVERY,
    RESET_NOTIFIER,
    SERVICE,
    STORE,
    USERS,
    Readiness,
    Requirement,
)
from server.web.middleware import request_middleware
from server.web.routes import add_routes, api_routes
from server.web.webhook import BACKGROUND, BackgroundTasks, webhook_context

Clock = Callable[[], float]

# The smallest step the rate-limit gauges move in (see _watch).
BUCKET_STEP_FLOOR = 100


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
        default_vendor=settings.default_user_vendor,
    )


def recovery_policy(settings: Settings) -> RecoveryPolicy:
    return RecoveryPolicy(
        forgot_email_rule=Rule(
            "forgot_password_email",
            settings.user_forgot_password_rate_limit_email,
            settings.user_forgot_password_rate_limit_email_window_ms / 1000,
        ),
        forgot_ip_rule=Rule(
            "forgot_password_ip",
            settings.user_forgot_password_rate_limit_ip,
            settings.user_forgot_password_rate_limit_ip_window_ms / 1000,
        ),
        reset_ip_rule=Rule(
            "forgot_password_reset_ip",
            settings.user_forgot_password_reset_rate_limit_ip,
            settings.user_forgot_password_reset_rate_limit_ip_window_ms / 1000,
        ),
        signin_account_rule=auth_policy(settings).signin_account_rule,
        code_ttl=settings.forgot_password_code_ttl,
        link=settings.forgot_password_link,
        password_min_length=settings.password_min_length,
    )


def create_app(settings: Settings, *, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> web.Application:
    """The mixauth application for ``settings``.

    ``clock`` (monotonic) drives the rate limiter and the user cache's checks for outside changes;
    ``wall_clock`` (seconds since the epoch) decides when remembered tokens expire. Tests pass fakes.
    """
    metrics = Metrics() if settings.metrics_enabled else None
    rules: dict[str, Requirement] = {}
    app = web.Application(
        middlewares=[request_middleware(settings.trusted_proxies, rules)],
        client_max_size=MAX_BODY_BYTES,
        # Never inflate a request body: a compressed one is refused (415) unread, and one drained unread after
        # an answer stays as small as it was sent.
        handler_args={"auto_decompress": False},
    )
    serve_json_errors(app)
    background = app[BACKGROUND] = BackgroundTasks()  # reset-code deliveries, drained before the store closes

    async def services(app: web.Application) -> AsyncIterator[None]:
        hasher = PasswordHasher(settings.bcrypt_rounds, settings.hash_workers, settings.hash_queue_limit)
        try:
            async with open_backends(settings, clock=clock) as backends:
                store, limiter = backends.store, backends.limiter
                tokens = TokenCodec(
                    backends.secret, settings.jwt_token_exp, clock=wall_clock, previous=backends.previous_secrets
                )
                app[STORE] = store
                app[READINESS] = Readiness(backends.probes, backends.states)
                app[SERVICE] = AuthService(
                    store=store,
                    hasher=hasher,
                    tokens=tokens,
                    limiter=limiter,
                    policy=auth_policy(settings),
                    observer=metrics if metrics is not None else UNOBSERVED,
                )
                app[USERS] = UserAdministration(
                    store, hasher, auth_policy(settings), metrics or UNOBSERVED, wall_clock=wall_clock
                )
                app[RECOVERY] = RecoveryService(
                    store,
                    hasher,
                    limiter,
                    recovery_policy(settings),
                    app[RESET_NOTIFIER],
                    background,
                    wall_clock=wall_clock,
                    observer=metrics if metrics is not None else UNOBSERVED,
                )
                if metrics is not None:
                    _watch(metrics, backends.memory_limiter, hasher, tokens, store)
                    for name, documentation, read, counts in backends.readings:
                        (metrics.counter if counts else metrics.gauge)(name, documentation, read)
                yield
        finally:
            await asyncio.to_thread(hasher.close)

    if metrics is not None:
        app[METRICS] = metrics
        if settings.metrics_token is not None:
            app[METRICS_TOKEN] = settings.metrics_token.encode("utf-8", "surrogatepass")
        if settings.metrics_port is not None:
            # First, so that a busy metrics port fails start-up before anything else is opened.
            app.cleanup_ctx.append(_metrics_listener(app, settings.metrics_host, settings.metrics_port))
    app.cleanup_ctx.append(webhook_context(settings))  # the session outlives the deliveries ...
    app.cleanup_ctx.append(services)
    app.cleanup_ctx.append(background.drained)  # ... which end before the store closes
    add_routes(app, rules, api_routes(settings))
    return app


def _watch(
    metrics: Metrics, limiter: MemoryRateLimiter, hasher: PasswordHasher, tokens: TokenCodec, store: CachedUserStore
) -> None:
    # A known account's username and email share one sign-in bucket, while an unknown name gets one per
    # spelling: exact counts would tell a scraper whether a username and an email are one account. They
    # are reported in steps of 1 % of the cap (at least 100 buckets), enough to watch memory and the cap.
    step = max(BUCKET_STEP_FLOOR, limiter.max_buckets // 100)
    metrics.gauge(
        "mixauth_rate_limit_buckets",
        f"Rate-limit buckets live in memory, rounded down to a multiple of {step}.",
        lambda: len(limiter) // step * step,
    )
    metrics.gauge("mixauth_rate_limit_max_buckets", "The most rate-limit buckets kept.", lambda: limiter.max_buckets)
    metrics.gauge(
        "mixauth_rate_limit_evicted_buckets",
        f"Buckets forgotten since start to stay under the cap, rounded down to a multiple of {step}.",
        lambda: limiter.evictions // step * step,
    )
    metrics.gauge("mixauth_password_hash_workers", "Threads hashing passwords.", lambda: hasher.workers)
    metrics.gauge("mixauth_password_hash_busy_workers", "Threads hashing a password now.", lambda: hasher.busy)
    metrics.gauge("mixauth_password_hash_queue_depth", "Password checks waiting for a thread.", lambda: hasher.queued)
    metrics.gauge("mixauth_token_cache_entries", "Verified tokens remembered.", lambda: tokens.cached)
    metrics.gauge("mixauth_user_cache_entries", "Users remembered by id.", lambda: len(store))


def _metrics_listener(api: web.Application, host: str, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context serving only GET /metrics (with the API's metrics and token) on ``host:port``.

    Its answers are the API's: the JSON error body for unknown paths and methods, the security headers and
    a request id on every one.
    """

    async def listener(_app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application(middlewares=[request_middleware(())])
        metrics_app[METRICS] = api[METRICS]
        if METRICS_TOKEN in api:
            metrics_app[METRICS_TOKEN] = api[METRICS_TOKEN]
        metrics_app.router.add_get("/metrics", handlers.get_metrics, allow_head=False)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(exc.errno, f"metrics listener {host}:{port}: {reason}") from None
            yield
        finally:
            # Also when a later start-up step fails and the loop closes this generator instead of aiohttp.
            await runner.cleanup()

    return listener
