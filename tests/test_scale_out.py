"""N instances on one PostgreSQL and one Redis, as real processes (``python -m server``, as the image runs it):
what docs/scale-out.md promises an operator, checked from outside through HTTP and the admin command line.

Each test gets a database of its own and a Redis key prefix of its own (tests/conftest.py), so runs and
tests never meet. The fault tests put what they break between mixauth and the real server: a private
redis-server process, or a TCP proxy in front of PostgreSQL that can drop every connection.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import JWT_SECRET, PASSWORD, PrivateRedis, admin_token, free_port
from tests.process import Server, base_env, start_server

# Within one second, as the operator's guide promises; polled every 20 ms.
STALENESS_LIMIT = 1.0
SIGNUP_EMAIL_MESSAGE = "Too many signup attempts for this email address. Please try again later."


class Cluster:
    """Instances sharing one database and one Redis, and a client session to talk to them."""

    def __init__(self, tmp_path: Path, env: dict[str, str], session: aiohttp.ClientSession) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.session = session
        self.instances: list[Server] = []

    async def start(self, count: int, **extra: str) -> list[Server]:
        """``count`` more instances, started together (so they migrate an empty database together)."""
        first = len(self.instances)
        directories = [self.tmp_path / f"instance{first + k}" for k in range(count)]
        for directory in directories:
            directory.mkdir()
        env: dict[str, Any] = {**self.env, **extra}
        started = await asyncio.gather(*(start_server(directory, "server", **env) for directory in directories))
        self.instances += started
        return list(started)

    async def call(
        self, server: Server, method: str, path: str, *, token: str | None = None, json: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, server.url + path, json=json, headers=headers) as response:
            body = await response.json(content_type=None)
            return response.status, body, dict(response.headers)

    def admin_command(self, *args: str, password: str | None = None, env: dict[str, str] | None = None) -> str:
        """``python -m server ARGS`` with the cluster's settings (``env`` changing some), as a deployment job
        runs it; its stdout."""
        env = base_env(**{**self.env, **(env or {})})
        env.pop("METRICS_PORT", None)
        completed = subprocess.run(
            [sys.executable, "-m", "server", *args],
            env=env,
            cwd=self.tmp_path,
            input=password,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    def stop(self) -> None:
        for server in self.instances:
            server.kill()


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Cluster]:
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "JWT_SECRET": JWT_SECRET,
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "warning",
    }
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(tmp_path, env, session)
        try:
            yield cluster
        finally:
            cluster.stop()


async def sign_up(cluster: Cluster, server: Server, username: str, email: str | None = None) -> tuple[int, Any]:
    body = {"username": username, "email": email or f"{username}@example.com", "password": PASSWORD}
    status, answer, _ = await cluster.call(server, "POST", "/user", json=body)
    return status, answer


async def create_admin(cluster: Cluster, server: Server) -> str:
    """An admin made with the command line (another writer on the database), signed in through ``server``."""
    cluster.admin_command(
        "create-user",
        "--username",
        "root",
        "--email",
        "root@example.com",
        "--scope",
        "admin",
        "--password-stdin",
        password=PASSWORD + "\n",
    )
    status, body, _ = await cluster.call(server, "POST", "/user/auth", json={"username": "root", "password": PASSWORD})
    assert status == 200, body
    token: str = body["token"]
    return token


async def seen_within(check: Callable[[], Awaitable[bool]], limit: float = STALENESS_LIMIT) -> float:
    """Seconds until ``check`` holds; fail when it still does not after ``limit`` (and a margin for the poll)."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        elapsed = time.monotonic() - start
        assert elapsed < limit + 0.25, f"not seen after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def test_instances_starting_together_on_an_empty_database_all_serve(cluster: Cluster) -> None:
    instances = await cluster.start(3, LOG_LEVEL="info")
    for server in instances:
        status, body, _ = await cluster.call(server, "GET", "/health/ready")
        assert (status, body) == (200, {"status": "ok", "database": "ok", "rate_limiter": "redis"})
    assert "up to date" in cluster.admin_command("migrate")
    async with cluster.session.get(instances[1].metrics_url + "/metrics") as response:
        scraped = await response.text()
    for line in (
        "mixauth_database_pool_max_connections 10.0",
        "mixauth_user_changes_listener_connected 1.0",
        "mixauth_user_changes_listener_reconnects_total 0.0",
        "mixauth_rate_limiter_redis_up 1.0",
        "mixauth_rate_limiter_redis_failovers_total 0.0",
    ):
        assert line in scraped.splitlines(), line
    code, lines, _ = instances[0].stop()
    assert code == 0
    starting = next(line for line in lines if line["event"] == "server.starting")
    assert (starting["users"], starting["rate_limits"]) == ("postgresql", "redis")


async def test_the_seed_calls_work_through_any_instance(cluster: Cluster) -> None:
    a, b, c = await cluster.start(3)
    status, created = await sign_up(cluster, a, "alice")
    assert status == 200, created
    status, signed_in, _ = await cluster.call(
        b, "POST", "/user/auth", json={"email": "ALICE@example.com", "password": PASSWORD}
    )
    assert status == 200, signed_in
    for server, token in ((c, created["token"]), (a, signed_in["token"])):
        status, user, _ = await cluster.call(server, "GET", "/user", token=token)
        assert status == 200
        assert user["username"] == "alice"
        assert user["id"] == created["user"]["id"] if "user" in created else True


async def test_the_signup_limit_is_counted_once_across_three_instances(cluster: Cluster) -> None:
    instances = await cluster.start(3)
    answers = []
    for attempt in range(10):
        status, body = await sign_up(cluster, instances[attempt % 3], f"user{attempt}", "same@example.com")
        answers.append(status)
    assert answers[0] == 200
    assert set(answers[1:]) == {409}  # taken, but every attempt counts
    for server in instances:
        status, body = await sign_up(cluster, server, "eleventh", "same@example.com")
        assert status == 429, body
        assert body["message"] == SIGNUP_EMAIL_MESSAGE


async def test_one_username_signed_up_on_three_instances_at_once_succeeds_once(cluster: Cluster) -> None:
    instances = await cluster.start(3)
    for round_number in range(5):
        results = await asyncio.gather(
            *(
                sign_up(cluster, server, f"race{round_number}", f"race{round_number}-{k}@example.com")
                for k, server in enumerate(instances)
            )
        )
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 409, 409], results


async def test_changes_through_one_instance_or_the_command_line_are_seen_by_the_others_within_a_second(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.start(3)
    admin = await create_admin(cluster, a)
    status, created = await sign_up(cluster, b, "bob")
    assert status == 200
    token = created["token"]
    user_id = (await cluster.call(c, "GET", "/user", token=token))[1]["id"]  # now in c's cache

    async def scope_on_c_is(expected: list[str]) -> bool:
        status, body, _ = await cluster.call(c, "GET", "/user", token=token)
        return status == 200 and body["scope"] == expected

    status, body, _ = await cluster.call(a, "PUT", f"/users/{user_id}", token=admin, json={"scope": ["user", "editor"]})
    assert status == 200, body
    print(
        f"scope change through a, seen on c after {await seen_within(lambda: scope_on_c_is(['user', 'editor'])):.3f} s"
    )

    cluster.admin_command("set-scope", "bob", "--scope", "user,viewer")
    took = await seen_within(lambda: scope_on_c_is(["user", "viewer"]))
    print(f"set-scope on the command line, seen on c after {took:.3f} s")

    async def refused_on_c() -> bool:
        return (await cluster.call(c, "GET", "/user", token=token))[0] == 401

    status, _, _ = await cluster.call(b, "POST", "/user/logout", token=token)
    assert status == 200
    print(f"log-out (revocation) on b, refused on c after {await seen_within(refused_on_c):.3f} s")

    status, created = await sign_up(cluster, b, "carol")
    token = created["token"]
    carol = (await cluster.call(c, "GET", "/user", token=token))[1]["id"]
    status, body, _ = await cluster.call(a, "DELETE", f"/users/{carol}", token=admin)
    assert status == 200, body
    print(f"deletion on a, refused on c after {await seen_within(refused_on_c):.3f} s")
    status, ticket, _ = await cluster.call(b, "GET", f"/users/{carol}/delete-status/{body['ticket']}", token=admin)
    assert status == 200, ticket


async def test_a_reset_code_from_one_instance_works_on_another(cluster: Cluster, aiohttp_server: Any) -> None:
    codes: asyncio.Queue[str] = asyncio.Queue()

    async def receive(request: aiohttp.web.Request) -> aiohttp.web.Response:
        codes.put_nowait((await request.json())["code"])
        return aiohttp.web.Response()

    receiver = aiohttp.web.Application()
    receiver.router.add_post("/hook", receive)
    hook = await aiohttp_server(receiver)
    a, b = await cluster.start(2, WEBHOOK_USER_FORGOT_PASSWORD=str(hook.make_url("/hook")))
    assert (await sign_up(cluster, a, "dave"))[0] == 200
    status, _, _ = await cluster.call(a, "POST", "/user/forgot-password", json={"email": "dave@example.com"})
    assert status == 200
    code = await asyncio.wait_for(codes.get(), 10)
    body = {"code": code, "password": "another-" + PASSWORD}
    status, answer, _ = await cluster.call(b, "POST", "/user/forgot-password/reset", json=body)
    assert status == 200, answer
    login = {"username": "dave", "password": "another-" + PASSWORD}
    assert (await cluster.call(a, "POST", "/user/auth", json=login))[0] == 200


# Faults: Redis stopped and started again, PostgreSQL unreachable, the change listener's connection killed


class Load:
    """GET /user and failed sign-ins against every instance, until stopped; every status is kept."""

    def __init__(self, cluster: Cluster, instances: list[Server], token: str) -> None:
        self.cluster, self.instances, self.token = cluster, instances, token
        self.statuses: list[int] = []
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, server: Server, signing_in: bool) -> None:
        while self._running:
            if signing_in:
                body = {"username": "nobody-here", "password": "wrong-password"}
                status = (await self.cluster.call(server, "POST", "/user/auth", json=body))[0]
            else:
                status = (await self.cluster.call(server, "GET", "/user", token=self.token))[0]
            self.statuses.append(status)

    def start(self) -> None:
        for server in self.instances:
            self._tasks += [
                asyncio.create_task(self._loop(server, False)),
                asyncio.create_task(self._loop(server, True)),
            ]

    async def stop(self) -> list[int]:
        self._running = False
        await asyncio.gather(*self._tasks)
        return self.statuses


async def rate_limiter_state(cluster: Cluster, server: Server) -> str:
    status, body, _ = await cluster.call(server, "GET", "/health/ready")
    assert status == 200, body
    state: str = body["rate_limiter"]
    return state


async def test_redis_stopped_and_started_again_under_load(cluster: Cluster, private_redis: PrivateRedis) -> None:
    a, b = await cluster.start(2, REDIS_URL=private_redis.url)
    _, created = await sign_up(cluster, a, "erin")
    load = Load(cluster, [a, b], created["token"])
    load.start()
    await asyncio.sleep(0.3)

    await private_redis.stop()
    for server in (a, b):
        took = await seen_within(functools.partial(_state_is, cluster, server, "local"), limit=5)
        print(f"redis stopped: instance on port {server.port} counting locally after {took:.3f} s")
    # Limits still apply, counted in each instance's memory.
    answers = [(await sign_up(cluster, a, f"frank{k}", "frank@example.com"))[0] for k in range(11)]
    assert answers[0] == 200, answers
    assert answers[-1] == 429, answers

    await private_redis.start()  # the same port, empty
    for server in (a, b):
        took = await seen_within(functools.partial(_state_is, cluster, server, "redis"), limit=5)
        print(f"redis back: instance on port {server.port} on redis again after {took:.3f} s")
    statuses = await load.stop()
    print(f"under load: {len(statuses)} answers, statuses {dict(sorted(collections.Counter(statuses).items()))}")
    assert statuses, "the load ran"
    assert all(status < 500 for status in statuses), sorted(set(statuses))
    # Back on Redis, the buckets are Redis's again: the shared count starts afresh there.
    assert (await sign_up(cluster, b, "grace", "frank@example.com"))[0] == 409


async def _state_is(cluster: Cluster, server: Server, state: str) -> bool:
    return await rate_limiter_state(cluster, server) == state


async def test_with_redis_down_and_deny_limited_calls_get_503_and_the_rest_is_served(cluster: Cluster) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    (a,) = await cluster.start(1, REDIS_URL=dead, RATE_LIMIT_REDIS_FAILURE="deny")
    user_id = cluster.admin_command(
        "create-user",
        "--username",
        "heidi",
        "--email",
        "heidi@example.com",
        "--password-stdin",
        password=PASSWORD + "\n",
    ).strip()
    status, body, headers = await cluster.call(
        a, "POST", "/user", json={"username": "ivan", "email": "ivan@example.com", "password": PASSWORD}
    )
    assert status == 503, body
    assert body["code"] == "rate_limiter_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert await rate_limiter_state(cluster, a) == "deny"
    token = admin_token(user_id, ["user"])
    assert (await cluster.call(a, "GET", "/user", token=token))[0] == 200


class Proxy:
    """A TCP proxy in front of PostgreSQL: ``cut`` drops every connection and refuses new ones, as a
    database that went away does; ``restore`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


async def test_postgres_unreachable_then_back_readiness_follows_and_no_acknowledged_write_is_lost(
    cluster: Cluster, postgres_url: str
) -> None:
    parts = postgres_url.rsplit("@", 1)
    host_part = parts[-1].split("/", 1)
    target_port = int(host_part[0].rsplit(":", 1)[1]) if ":" in host_part[0] else 5432
    proxy = Proxy(target_port)
    await proxy.restore()
    proxied = postgres_url.replace(host_part[0], f"127.0.0.1:{proxy.port}")
    (a,) = await cluster.start(1, DATABASE_URL=proxied, DATABASE_TIMEOUT_MS="1000")
    acknowledged: list[str] = []
    statuses: list[int] = []
    answers: list[Any] = []

    async def sign_ups(prefix: str, count: int) -> None:
        for k in range(count):
            status, answer = await sign_up(cluster, a, f"{prefix}{k}")
            statuses.append(status)
            answers.append(answer)
            if status == 200:
                acknowledged.append(f"{prefix}{k}")

    await sign_ups("before", 5)
    await proxy.cut()
    took = await seen_within(lambda: _ready_status_is(cluster, a, 503), limit=5)
    print(f"postgres cut off: /health/ready 503 after {took:.3f} s")
    await sign_ups("during", 5)
    assert all(status == 503 for status in statuses[5:]), answers
    await proxy.restore()
    took = await seen_within(lambda: _ready_status_is(cluster, a, 200), limit=10)
    print(f"postgres back: /health/ready 200 after {took:.3f} s; signups answered {statuses[:10]}")
    await sign_ups("after", 5)
    assert len(acknowledged) == 10
    connection = await asyncpg.connect(postgres_url)
    try:
        stored = {row["username"] for row in await connection.fetch("SELECT username FROM users")}
    finally:
        await connection.close()
    assert set(acknowledged) <= stored
    await proxy.cut()


async def _ready_status_is(cluster: Cluster, server: Server, expected: int) -> bool:
    return (await cluster.call(server, "GET", "/health/ready"))[0] == expected


# The change listeners' connections (server/storage/pg_changes.py names them).
LISTENERS = "FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'mixauth-listener'"


# The change listeners' connections (server/storage/pg_changes.py names them).
LISTENERS = "FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'mixauth-listener'"


async def test_the_listener_connection_killed_keeps_staleness_bounded(cluster: Cluster, postgres_url: str) -> None:
    a, b = await cluster.start(2)
    admin = await create_admin(cluster, a)
    status, created = await sign_up(cluster, a, "judy")
    token = created["token"]
    user_id = (await cluster.call(b, "GET", "/user", token=token))[1]["id"]
    connection = await asyncpg.connect(postgres_url)
    try:

        async def both_listening() -> bool:
            listening: int = await connection.fetchval(f"SELECT count(*) {LISTENERS}")
            return listening == 2

        for round_number in range(3):
            await seen_within(both_listening, limit=10)
            killed = await connection.fetchval(f"SELECT count(pg_terminate_backend(pid)) {LISTENERS}")
            assert killed == 2
            scope = ["user", f"role{round_number}"]
            status, body, _ = await cluster.call(a, "PUT", f"/users/{user_id}", token=admin, json={"scope": scope})
            assert status == 200, body

            async def scope_on_b(expected: list[str] = scope) -> bool:
                status, body, _ = await cluster.call(b, "GET", "/user", token=token)
                return status == 200 and body["scope"] == expected

            print(f"listener killed, change seen on b after {await seen_within(scope_on_b):.3f} s")
    finally:
        await connection.close()


async def test_moving_from_one_container_to_many_keeps_every_password_and_token(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The guide's move: export from the SQLite instance, import into PostgreSQL, start instances there."""
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    single = await start_server(single_dir, "server", BCRYPT_ROUNDS="4")  # its secret generated in DATA_DIR
    try:
        status, created = await sign_up(cluster, single, "kim")
        assert status == 200, created
    finally:
        assert single.stop()[0] == 0
    export = tmp_path / "users.jsonl"
    sqlite_env = {"DATA_DIR": str(single_dir / "data"), "DATABASE_URL": "", "REDIS_URL": ""}
    cluster.admin_command("export-users", "--output", str(export), env=sqlite_env)
    assert cluster.admin_command("import-users", str(export)).strip() == "imported 1, skipped 0"
    generated = (single_dir / "data" / "jwt-secret").read_text().strip()
    (a,) = await cluster.start(1, JWT_SECRET=f"base64:{generated}")
    status, user, _ = await cluster.call(a, "GET", "/user", token=created["token"])
    assert status == 200, user
    assert user["username"] == "kim"
    login = {"username": "kim", "password": PASSWORD}
    assert (await cluster.call(a, "POST", "/user/auth", json=login))[0] == 200


async def test_the_admin_command_line_works_on_postgresql(cluster: Cluster) -> None:
    from server.storage.postgres import MIGRATIONS

    assert cluster.admin_command("migrate") == f"schema version 0 -> {len(MIGRATIONS)} (PostgreSQL)\n"
    assert cluster.admin_command("migrate") == f"schema version {len(MIGRATIONS)} (PostgreSQL): up to date\n"
    user_id = cluster.admin_command(
        "create-user", "--username", "lena", "--email", "lena@example.com", "--password-stdin",
        password=PASSWORD + "\n",
    ).strip()  # fmt: skip
    listed = json.loads(cluster.admin_command("list-users", "--json"))
    assert [(user["id"], user["username"]) for user in listed] == [(user_id, "lena")]
    cluster.admin_command("set-scope", "lena@example.com", "--scope", "user,editor")
    exported = [json.loads(line) for line in cluster.admin_command("export-users").splitlines()]
    assert [(user["id"], user["scope"]) for user in exported] == [(user_id, ["user", "editor"])]
    assert cluster.admin_command("delete-user", user_id).startswith(f"deleted {user_id}")
    assert json.loads(cluster.admin_command("list-users", "--json")) == []
