"""The backends the settings choose: the one place that names them, for the server and the admin command line.

- Users: SQLite in the data directory (the default), or PostgreSQL with ``DATABASE_URL``. Either runs its
  migrations when opened (PostgreSQL's under a lock, so instances starting together agree).
- The user cache in front of the store (the server only): it notices other processes' writes through
  SQLite's ``data_version``, or through PostgreSQL's change notifications (``LISTEN``), within a second.
- Rate limits: in this process's memory (the default), or in Redis with ``REDIS_URL``, falling back as
  ``RATE_LIMIT_REDIS_FAILURE`` says while Redis is down.
- The signing secret: ``JWT_SECRET`` (required with ``DATABASE_URL``), or one generated and kept in the
  data directory; ``JWT_SECRET_PREVIOUS`` still verifies.

The PostgreSQL and Redis drivers are imported only when they are configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from server.config import Settings, secret_key
from server.domain import RateLimiter, UserStore
from server.limits.memory import MemoryRateLimiter
from server.storage import sqlite
from server.storage.cached import CachedUserStore
from server.storage.secret import load_or_create_secret
from server.storage.sqlite import SqliteUserStore

Clock = Callable[[], float]
# A readiness check: returns when the backend answers, raises when it does not.
Probe = Callable[[], Awaitable[object]]
# A number for the metrics: name, help, how to read it, and whether it is a count since start (a counter).
Reading = tuple[str, str, Callable[[], float], bool]


class StoreMissing(Exception):
    """An admin command that needs existing users found no SQLite database where the settings point."""


@dataclass(eq=False, slots=True)
class Backends:
    """What a serving instance runs on, open for as long as the server runs."""

    store: CachedUserStore
    limiter: RateLimiter
    # The bucket counts of the in-process limiter (the local fallback, with Redis), for the metrics.
    memory_limiter: MemoryRateLimiter
    secret: bytes
    previous_secrets: tuple[bytes, ...]
    # Readiness: the instance is ready when every probe answers (the rate limiter never makes it unready:
    # while Redis is down, limits are counted locally or denied, and everything else is served).
    probes: dict[str, Probe] = field(default_factory=dict)
    # What /health/ready reports of each backend that is not a probe: {"rate_limiter": "redis"}.
    states: dict[str, Callable[[], str]] = field(default_factory=dict)
    readings: list[Reading] = field(default_factory=list)


def describe(settings: Settings) -> dict[str, str]:
    """Which backends ``settings`` choose, for the start-up log line (never a password)."""
    return {
        "users": "postgresql" if settings.database_url else "sqlite",
        "rate_limits": "redis" if settings.redis_url else "memory",
    }


@asynccontextmanager
async def open_user_store(settings: Settings, *, create: bool = True) -> AsyncIterator[UserStore]:
    """The user store, migrated to this version's schema. Without ``create`` (admin commands that read or
    change existing users), a missing SQLite database is StoreMissing rather than a new empty one."""
    if settings.database_url is None:
        if not create:
            path = settings.data_dir / sqlite.DATABASE_FILE
            if not path.is_file():
                raise StoreMissing(f"no database at {path}: is the data directory ({settings.data_dir}) right?")
        async with sqlite.open_store(settings.data_dir) as store:
            yield store
        return
    from server.storage import postgres

    async with postgres.open_store(
        settings.database_url,
        pool_min=settings.database_pool_min,
        pool_max=settings.database_pool_max,
        timeout=settings.database_timeout_ms / 1000,
    ) as store:
        yield store


async def migrate(settings: Settings) -> tuple[int, int]:
    """Bring the configured database's schema to this version's: (version before, version after)."""
    if settings.database_url is None:
        before = await asyncio.to_thread(sqlite.stored_schema_version, settings.data_dir)
        async with sqlite.open_store(settings.data_dir):
            pass
        return before, sqlite.SCHEMA_VERSION
    from server.storage import postgres

    return await postgres.migrate(settings.database_url, timeout=settings.database_timeout_ms / 1000)


@asynccontextmanager
async def open_backends(settings: Settings, *, clock: Clock) -> AsyncIterator[Backends]:
    """Everything a serving instance needs, opened in order and closed in reverse."""
    secret = (
        secret_key(settings.jwt_secret)
        if settings.jwt_secret is not None
        else await asyncio.to_thread(load_or_create_secret, settings.data_dir)
    )
    previous = tuple(secret_key(item) for item in settings.jwt_secret_previous)
    memory = MemoryRateLimiter(clock, max_buckets=settings.rate_limit_max_buckets)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_user_store(settings))
        if isinstance(store, SqliteUserStore):
            # Other processes' writes (the admin command line) are noticed by the database's data_version,
            # read at most once a second; on PostgreSQL, the change listener makes the cache forget them.
            cache = CachedUserStore(store, store.data_version, clock=clock)
        else:
            cache = CachedUserStore(store, clock=clock)
        backends = Backends(
            store=cache, limiter=memory, memory_limiter=memory, secret=secret, previous_secrets=previous
        )
        if isinstance(store, SqliteUserStore):
            backends.probes["database"] = store.data_version
        else:
            await _follow_postgres(stack, settings, store, backends)
        if settings.redis_url is not None:
            await _use_redis(stack, settings, backends)
        else:
            backends.states["rate_limiter"] = lambda: "memory"
        yield backends


async def _follow_postgres(stack: AsyncExitStack, settings: Settings, store: UserStore, backends: Backends) -> None:
    """The cache learns of every writer's changes through the listener; the pool and the listener are watched."""
    from server.storage import pg_changes, postgres

    assert isinstance(store, postgres.PostgresUserStore)
    assert settings.database_url is not None
    listener = await stack.enter_async_context(
        pg_changes.listen_for_changes(
            settings.database_url, backends.store, timeout=settings.database_timeout_ms / 1000
        )
    )
    backends.probes["database"] = store.ping
    stats = store.pool_stats
    backends.readings += [
        (
            "mixauth_database_pool_connections",
            "PostgreSQL connections open in the pool.",
            lambda: stats()["size"],
            False,
        ),
        (
            "mixauth_database_pool_idle_connections",
            "PostgreSQL connections idle in the pool.",
            lambda: stats()["idle"],
            False,
        ),
        (
            "mixauth_database_pool_max_connections",
            "The most PostgreSQL connections the pool opens.",
            lambda: stats()["max"],
            False,
        ),
        (
            "mixauth_user_changes_listener_connected",
            "1 while the PostgreSQL change listener is connected (it keeps the user cache fresh).",
            lambda: float(listener.connected),
            False,
        ),
        (
            "mixauth_user_changes_listener_reconnects",
            "Times the change listener connected again after losing its connection.",
            lambda: listener.reconnects,
            True,
        ),
        (
            "mixauth_user_changes_notifications",
            "Change notifications heard from PostgreSQL.",
            lambda: listener.notifications,
            True,
        ),
    ]


async def _use_redis(stack: AsyncExitStack, settings: Settings, backends: Backends) -> None:
    from server.limits import fallback

    assert settings.redis_url is not None
    limiter = await stack.enter_async_context(
        fallback.open_redis_limiter(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            timeout=settings.redis_timeout_ms / 1000,
            failure="deny" if settings.rate_limit_redis_failure == "deny" else "local",
            local=backends.memory_limiter,
        )
    )
    backends.limiter = limiter
    backends.states["rate_limiter"] = lambda: limiter.state
    backends.readings += [
        (
            "mixauth_rate_limiter_redis_up",
            "1 while rate limits are counted in Redis, 0 while Redis is down (RATE_LIMIT_REDIS_FAILURE applies).",
            lambda: float(limiter.state == "redis"),
            False,
        ),
        (
            "mixauth_rate_limiter_redis_failovers",
            "Times the rate limiter lost Redis and fell back.",
            lambda: limiter.failovers,
            True,
        ),
    ]
