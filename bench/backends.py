"""The shared backends ``python -m bench --backend`` measures mixauth on, beside SQLite: what each name means,
checking that the servers answer, and the run's own database and Redis keys, made for it and removed after.

- ``postgres``: ``DATABASE_URL`` (users in PostgreSQL, limits in memory), with a ``JWT_SECRET`` of the run's
  (mixauth requires one with ``DATABASE_URL``);
- ``redis``: ``REDIS_URL`` (users in SQLite, limits in Redis) under a ``REDIS_KEY_PREFIX`` of the run's;
- with both names, ``postgres+redis`` too: what an operator of several instances runs (the guide's
  deployment); each alone isolates what that backend costs.

Every configuration that uses PostgreSQL gets a fresh database on the server ``--database-url`` names (the
benchmark's user and signups would collide in a shared one), created with its defaults (a commit waits for
the WAL flush, as in production) and dropped at the end, whoever is still connected. Redis keys go under a
prefix of the run's own and are deleted at the end. Messages name hosts and databases, never a password.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from server.config import redacted_url
from server.storage.postgres import database_location, describe_error

BACKENDS = ("postgres", "redis")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT_S = 3.0
# Settings whose values are secrets or URLs, shown redacted wherever the results record a server's settings.
SECRET_SETTINGS = frozenset({"JWT_SECRET"})
URL_SETTINGS = frozenset({"DATABASE_URL", "REDIS_URL"})
DESCRIPTIONS = {
    "postgres": "DATABASE_URL: users in PostgreSQL, limits in memory",
    "redis": "REDIS_URL: users in SQLite, limits in Redis",
    "postgres+redis": "DATABASE_URL and REDIS_URL: users in PostgreSQL, limits in Redis",
}


class BackendError(RuntimeError):
    """A backend server could not be reached or used; the message is one line for the operator."""


def backend_names(text: str) -> tuple[str, ...]:
    """``--backend``'s value: names from BACKENDS, comma-separated, in the order given, once each."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names or any(name not in BACKENDS for name in names):
        raise ValueError(f"expected {' or '.join(BACKENDS)}, separated by commas, got {text!r}")
    return names


def configurations(backends: Iterable[str]) -> tuple[str, ...]:
    """The configurations measured for these backend names: each alone, then both together when both."""
    names = tuple(backends)
    return (*names, "postgres+redis") if set(BACKENDS) <= set(names) else names


def uses(configuration: str, backend: str) -> bool:
    return backend in configuration.split("+")


def default_database_url() -> str:
    return os.environ.get("MIXAUTH_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL


def default_redis_url() -> str:
    return os.environ.get("MIXAUTH_TEST_REDIS_URL") or DEFAULT_REDIS_URL


def redis_location(url: str) -> str:
    """``host:port`` (or the socket's path) of a Redis URL, for messages."""
    try:
        parts = urlsplit(url)
        return parts.path if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the configured Redis"


def check_postgres(url: str) -> None:
    """Connect once to the PostgreSQL server at ``url``; BackendError when it does not answer."""

    async def connect() -> None:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
        await connection.close()

    try:
        asyncio.run(connect())
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackendError(
            f"PostgreSQL: cannot reach {database_location(url)} ({type(exc).__name__}: {describe_error(exc, url)}); "
            "name another server with --database-url"
        ) from None


def check_redis(url: str) -> None:
    """PING the Redis at ``url``; BackendError when it does not answer."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
        ) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BackendError(
            f"Redis: no answer at {redis_location(url)} ({type(exc).__name__}: {describe_error(exc, url)}); "
            "name another server with --redis-url"
        ) from None


def check(backends: Iterable[str], database_url: str, redis_url: str) -> None:
    """Check each named backend's server, before anything starts."""
    for backend in backends:
        if backend == "postgres":
            check_postgres(database_url)
        else:
            check_redis(redis_url)


def public_settings(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` as the results may record them: secrets replaced by ``***``, URLs without passwords."""
    shown = dict(settings)
    for key in SECRET_SETTINGS & set(shown):
        shown[key] = "***"
    for key in URL_SETTINGS & set(shown):
        shown[key] = redacted_url(shown[key])
    return shown


def _database_url(server_url: str, database: str) -> str:
    """``server_url`` naming ``database`` instead of its own."""
    return urlunsplit(urlsplit(server_url)._replace(path="/" + database))


class BackendResources:
    """The run's databases and Redis keys: ``environment`` makes what a configuration needs, ``close`` removes
    everything made (also after a failure). Use as a context manager."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.database_prefix = f"mixauth_bench_{tag}"
        self.redis_prefix = f"mixauth-bench:{tag}:"
        self.databases: list[str] = []
        # One signing secret for the run (the bench's servers never share tokens; mixauth requires one).
        self.jwt_secret = secrets.token_urlsafe(48)

    def __enter__(self) -> BackendResources:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Where the run's data went, for the results (no password)."""
        return {
            "database_server": database_location(self.database_url),
            "database_prefix": self.database_prefix,
            "redis": redis_location(self.redis_url),
            "redis_key_prefix": self.redis_prefix,
        }

    def environment(self, configuration: str) -> tuple[tuple[str, str], ...]:
        """The settings that put a mixauth on ``configuration``'s backends (a fresh database for PostgreSQL)."""
        env: list[tuple[str, str]] = []
        if uses(configuration, "postgres"):
            env += [("DATABASE_URL", self.create_database()), ("JWT_SECRET", self.jwt_secret)]
        if uses(configuration, "redis"):
            key = configuration.replace("+", "-")
            env += [("REDIS_URL", self.redis_url), ("REDIS_KEY_PREFIX", f"{self.redis_prefix}{key}:")]
        return tuple(env)

    def create_database(self) -> str:
        """A new empty database on the server; its URL (mixauth makes the schema when it starts)."""
        name = f"{self.database_prefix}_{len(self.databases) + 1}"
        self._on_server(f'CREATE DATABASE "{name}"', "create a database on")
        self.databases.append(name)
        return _database_url(self.database_url, name)

    def close(self) -> None:
        """Drop the run's databases and delete its Redis keys; the first failure is raised after trying all."""
        failures: list[BackendError] = []
        for name in reversed(self.databases):
            try:
                self._on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "drop a database on")
            except BackendError as exc:
                failures.append(exc)
        self.databases.clear()
        try:
            self.delete_redis_keys()
        except BackendError as exc:
            failures.append(exc)
        if failures:
            raise failures[0]

    def redis_keys(self) -> list[bytes]:
        """The run's keys in Redis (SCAN, never KEYS)."""
        with redis.Redis.from_url(self.redis_url, socket_timeout=5.0) as client:
            return list(client.scan_iter(match=f"{self.redis_prefix}*", count=1000))

    def delete_redis_keys(self) -> None:
        try:
            keys = self.redis_keys()
            with redis.Redis.from_url(self.redis_url, socket_timeout=5.0) as client:
                for start in range(0, len(keys), 1000):
                    client.delete(*keys[start : start + 1000])
        except (redis.RedisError, OSError) as exc:
            raise BackendError(
                f"Redis: cannot delete the run's keys ({self.redis_prefix}*) at {redis_location(self.redis_url)}: "
                f"{describe_error(exc, self.redis_url)}"
            ) from None

    def _on_server(self, statement: str, action: str) -> None:
        async def execute() -> None:
            connection = await asyncpg.connect(self.database_url, timeout=CONNECT_TIMEOUT_S)
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        try:
            asyncio.run(execute())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise BackendError(
                f"PostgreSQL: cannot {action} {database_location(self.database_url)}: "
                f"{describe_error(exc, self.database_url)}"
            ) from None
