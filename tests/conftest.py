"""Shared fixtures: a fresh app and database per test, bcrypt at its minimum cost, a fake clock, and a guard
that fails any test whose log output holds the canary password, a token, a bcrypt hash or the JWT secret."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import itertools
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt
import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient

import server.logs
from server.config import Settings
from server.limits.redis import open_redis
from server.logs import configure_logging
from server.storage import StorageError
from server.storage import postgres as pg_store
from server.web.access import AccessLog
from server.web.app import create_app
from server.web.keys import SERVICE

JWT_SECRET = "test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
# Every test signs up and in with this canary; the log guard below fails the test if it is ever logged.
PASSWORD = "canary-pw-5e1f0c"
TOKEN_PATTERN = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*")
BCRYPT_HASH_PATTERN = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def secrets_in(text: str) -> list[str]:
    """What in ``text`` must never be logged: the canary password, the JWT secret, tokens and bcrypt hashes."""
    found = [name for name, secret in (("password", PASSWORD), ("jwt secret", JWT_SECRET)) if secret in text]
    found += [f"token {match[:16]}..." for match in TOKEN_PATTERN.findall(text)]
    found += [f"bcrypt hash {match[:12]}..." for match in BCRYPT_HASH_PATTERN.findall(text)]
    return found


# Ports free_port has handed out in this test run: a server started from a test binds its port some time
# after asking, so the same free number must not go to two servers meanwhile (one instance's API port and
# another's metrics port, started together, once met on one port, and the API's requests reached the
# metrics listener).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other caller in this run was given, for a
    server a test starts."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture(autouse=True)
def log_guard(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> Iterator[list[str]]:
    """Log everything at debug level, record every line written (whichever stream a test points logging at,
    and whichever path rendered it), and fail the test if any line holds a secret."""
    written: list[str] = []
    write_pending = server.logs._LineWriter._write_pending

    def recording_write_pending(self: server.logs._LineWriter) -> None:
        # A line the access log's text path took is put together as it is written: as it will be, here.
        written.extend(line if isinstance(line, str) else line[0].render(line) for line in self._pending)
        write_pending(self)

    # Every line, structlog's own, the stdlib's and the direct paths', reaches a stream through a line writer,
    # in the order it holds them.
    monkeypatch.setattr(server.logs._LineWriter, "_write_pending", recording_write_pending)
    configure_logging("debug", stream=io.StringIO())  # restore_logging puts the run's configuration back
    yield written
    leaks = secrets_in("\n".join(written))
    assert not leaks, f"secrets reached the log: {leaks}"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that configure logging for the process: put the test run's configuration back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeClock:
    """Seconds since the epoch, starting now: decides when remembered tokens expire."""
    return FakeClock(time.time())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Metrics beside the API, so that no test binds the metrics listener's fixed port (tests/test_metrics.py
    # covers the listener and the token).
    return Settings(data_dir=tmp_path / "data", bcrypt_rounds=4, jwt_secret=JWT_SECRET, metrics_port=None)


@pytest.fixture
def make_client(
    aiohttp_client: Any, aiohttp_server: Any, settings: Settings, clock: FakeClock, wall_clock: FakeClock
) -> ClientFactory:
    """Start the real application with ``settings`` changed by keyword arguments, and return a client."""

    async def make(**changes: Any) -> TestClient[Any, Any]:
        app = create_app(dataclasses.replace(settings, **changes), clock=clock, wall_clock=wall_clock)
        # The access log the server itself uses (python -m server), not aiohttp's default one.
        server = await aiohttp_server(app, access_log_class=AccessLog)
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def sign_up(
    client: TestClient[Any, Any],
    username: str = "abc@example.com",
    email: str = "abc@example.com",
    password: str = PASSWORD,
    **extra: Any,
) -> str:
    """Create a user through POST /user and return its token; fail the test on any other answer."""
    response = await client.post("/user", json={"username": username, "email": email, "password": password, **extra})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token(user_id: str, scope: list[str]) -> str:
    """A validly signed token for ``user_id``; what it grants depends on the scopes stored for the user."""
    now = int(time.time())
    return jwt.encode({"id": user_id, "scope": scope, "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")


async def create_admin(client: TestClient[Any, Any], scope: tuple[str, ...] = ("admin",)) -> str:
    """A user with ``scope`` stored, created through the service as the command line does; returns a token."""
    body = {"username": f"admin-{scope[0]}", "email": f"admin-{scope[0]}@example.com", "password": PASSWORD}
    user = await client.app[SERVICE].create_user(body, scope, via="test")
    return admin_token(user.id, list(scope))


# PostgreSQL
#
# The server is MIXAUTH_TEST_DATABASE_URL's (by default the local one, trust auth). Each test run makes a
# database of its own (named with the pid and a random suffix, dropped at the end), and every test that wants
# PostgreSQL gets a fresh database made from it: 20 to 30 ms to create, a few to drop, and nothing to clean up
# inside. Durability is not what the tests are about, so the fresh databases commit without waiting for the
# WAL flush (synchronous_commit off). Unreachable server: the tests that need it are skipped, or fail under CI.


DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url(server_url: str, database: str) -> str:
    """``server_url`` naming ``database`` instead of its own."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


class PostgresForTests:
    """The test run's database on the test server, and fresh, empty databases made from it for tests."""

    def __init__(self, server_url: str, run_database: str) -> None:
        self.server_url = server_url
        self.run_database = run_database
        self._numbers = itertools.count(1)

    @property
    def migrated_database(self) -> str:
        """The run's template with mixauth's schema in place (``postgres`` makes it)."""
        return f"{self.run_database}_migrated"

    @asynccontextmanager
    async def fresh_database_url(self, *, migrated: bool = False) -> AsyncIterator[str]:
        """The URL of a new empty database (with mixauth's schema when ``migrated``: 40 ms less than migrating
        it), dropped (whoever is still connected) on exit."""
        name = f"{self.run_database}_{next(self._numbers)}"
        template = self.migrated_database if migrated else self.run_database
        connection = await asyncpg.connect(self.server_url, timeout=5)
        try:
            await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            await connection.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        finally:
            await connection.close()
        try:
            yield database_url(self.server_url, name)
        finally:
            connection = await asyncpg.connect(self.server_url, timeout=5)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()


def _run_apart(work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work`` to completion on an event loop of its own, in another thread (session set-up and
    tear-down, outside every test's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, work).result()


async def _create_run_databases(server_url: str, name: str) -> None:
    """The run's database, and from it the migrated template (``PostgresForTests.migrated_database``)."""
    connection = await asyncpg.connect(server_url, timeout=3)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        await connection.execute(f'CREATE DATABASE "{name}_migrated" TEMPLATE "{name}"')
    finally:
        await connection.close()
    await pg_store.migrate(database_url(server_url, f"{name}_migrated"))


async def _drop_run_databases(server_url: str, name: str) -> None:
    """Drop the run's database and any fresh one a crashed test left behind."""
    connection = await asyncpg.connect(server_url, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname = $1 OR starts_with(datname, $1 || '_')", name
        )
        for row in rows:
            await connection.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresForTests]:
    """The test PostgreSQL server with this run's database; skips (fails under CI) when it is unreachable."""
    server_url = os.environ.get("MIXAUTH_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    name = f"mixauth_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _run_apart(_create_run_databases(server_url, name))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, StorageError) as exc:
        reason = f"the test PostgreSQL is not usable: {pg_store.unusable('use', server_url, exc)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield PostgresForTests(server_url, name)
    finally:
        _run_apart(_drop_run_databases(server_url, name))


@pytest.fixture
async def postgres_url(postgres: PostgresForTests) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    async with postgres.fresh_database_url() as url:
        yield url


# Redis
#
# The Redis the tests share: MIXAUTH_TEST_REDIS_URL, by default the local one. Unreachable, its tests are
# skipped, or fail when the CI environment variable is set (where a skip would hide them). Each test gets a
# key prefix of its own under the run's (process id and random), and its keys are deleted after it.

REDIS_DEFAULT_TEST_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis's URL, once it answered a PING."""

    url = os.environ.get("MIXAUTH_TEST_REDIS_URL", REDIS_DEFAULT_TEST_URL)
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        # The address only: the URL may hold a password.
        where = urlsplit(url)
        reason = f"no Redis answers at {where.hostname}:{where.port or 6379} ({type(exc).__name__})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; set MIXAUTH_TEST_REDIS_URL")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def redis_run_prefix(redis_url: str) -> Iterator[str]:
    """The key prefix of this test run (this process), whose keys are all deleted when the run ends."""

    prefix = f"mixauth-test:{os.getpid()}:{secrets.token_hex(4)}:"
    yield prefix
    delete_redis_keys(redis_url, prefix)


@pytest.fixture
def redis_prefix(redis_url: str, redis_run_prefix: str) -> Iterator[str]:
    """A key prefix of this test's own, whose keys are deleted after the test."""

    prefix = f"{redis_run_prefix}{secrets.token_hex(4)}:"
    yield prefix
    delete_redis_keys(redis_url, prefix)


def redis_keys(url: str, prefix: str) -> list[str]:
    """Every key in the Redis at ``url`` that starts with ``prefix`` (SCAN, never KEYS)."""

    with redis.Redis.from_url(url, socket_timeout=5.0, decode_responses=True) as client:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))


def delete_redis_keys(url: str, prefix: str) -> None:

    keys = redis_keys(url, prefix)
    with redis.Redis.from_url(url, socket_timeout=5.0) as client:
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


# A private Redis, to stop and start


class PrivateRedis:
    """A redis-server of this test's own on a free loopback port, nothing saved to disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10.0
        async with open_redis(self.url, timeout=0.5) as client:
            while True:
                try:
                    await client.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
