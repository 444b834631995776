"""What only the PostgreSQL store promises: migrations that instances starting together agree on, a schema
newer than the code refused, several instances (pools) on one database racing for one username or for the
last admin, and the users trigger's notifications keeping every instance's cache honest, also while the
listener's connection is lost. The UserStore contract itself is test_store_contract.py's, run on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import pytest

from server.domain import LastAdmin, NewUser, User, UserChanges, UsernameTaken, UserQuery
from server.security import build_new_user, skeleton_data_fingerprint, skeleton_data_version, username_skeleton
from server.storage import StorageError
from server.storage import skeletons as skeleton_note
from server.storage.cached import CachedUserStore
from server.storage.pg_changes import ChangeListener, listen_for_changes
from server.storage.postgres import MIGRATIONS, PostgresUserStore, migrate, open_store
from tests.conftest import FakeClock, PostgresForTests, free_port
from tests.fakes import FakeUserStore

HASH = "$2b$04$abcdefghijklmnopqrstuu5Ov7hTbyFZ0b1aLyNnyWZTLzCXlCmYy"


def new_user(name: str, scope: tuple[str, ...] = ("user",)) -> NewUser:
    return build_new_user(name, f"{name}@example.com", HASH, scope, "free")


async def eventually(condition: Callable[[], object], within: float = 3.0) -> None:
    """Wait until ``condition()`` holds, polling every 5 ms; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)


async def heard(listener: ChangeListener, notifications: int) -> None:
    """Wait for the notifications of the test's own writes so far: one arriving after a read would make the
    cache forget what the read remembered (harmless for a server, which reads again; not for a count)."""
    await eventually(lambda: listener.notifications >= notifications)


@asynccontextmanager
async def instance(url: str, clock: FakeClock) -> AsyncIterator[tuple[CachedUserStore, ChangeListener]]:
    """One mixauth instance's storage: a pool, the cache in front of it (on ``clock``) and its listener."""
    async with open_store(url, pool_max=3) as store:
        cache = CachedUserStore(store, clock=clock)
        async with listen_for_changes(url, cache, timeout=2.0) as listener:
            yield cache, listener


async def execute(url: str, statement: str, *arguments: object) -> str:
    """Run one statement on a connection of its own, as psql or another program would."""
    connection = await asyncpg.connect(url)
    try:
        return await connection.execute(statement, *arguments)
    finally:
        await connection.close()


# Migrations.


async def test_migrate_reports_the_versions_before_and_after(postgres_url: str) -> None:
    assert await migrate(postgres_url) == (0, len(MIGRATIONS))
    assert await migrate(postgres_url) == (len(MIGRATIONS), len(MIGRATIONS))


async def test_instances_starting_together_on_an_empty_database_agree(postgres_url: str) -> None:
    async with AsyncExitStack() as stack:
        stores = await asyncio.gather(
            *(stack.enter_async_context(open_store(postgres_url, pool_max=2)) for _ in range(5))
        )
        added = await stores[0].add(new_user("alice"))
        for store in stores:
            assert await store.get_by_id(added.id) == added
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = [row["version"] for row in await connection.fetch("SELECT version FROM schema_version")]
        triggers = await connection.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'users_changed'")
    finally:
        await connection.close()
    assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))
    assert triggers == 1


async def test_a_schema_newer_than_the_code_is_refused(postgres_url: str) -> None:
    await migrate(postgres_url)
    await execute(postgres_url, "INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS) + 1)
    with pytest.raises(StorageError, match=rf"schema is version {len(MIGRATIONS) + 1}, newer than this mixauth"):
        async with open_store(postgres_url):
            pass


async def test_an_unreachable_database_names_where_but_never_the_password() -> None:
    unused_tcp_port = free_port()
    url = f"postgresql://mixauth:hunter2-secret@127.0.0.1:{unused_tcp_port}/users"
    with pytest.raises(StorageError) as refused:
        async with open_store(url, timeout=1.0):
            pass
    assert f"127.0.0.1:{unused_tcp_port}/users" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None or "hunter2" not in str(refused.value.__context__)


async def test_ping_and_pool_stats(postgres_url: str) -> None:
    async with open_store(postgres_url, pool_min=1, pool_max=3) as store:
        await store.ping()
        stats = store.pool_stats()
        assert stats["max"] == 3
        assert 1 <= stats["size"] <= 3
        assert 0 <= stats["idle"] <= stats["size"]


# Several instances on one database.


async def test_racing_signups_of_one_username_across_instances_admit_one(postgres_url: str) -> None:
    async with open_store(postgres_url, pool_max=5) as first, open_store(postgres_url, pool_max=5) as second:
        racers = [build_new_user("contested", f"racer{n}@example.com", HASH, ("user",), "free") for n in range(10)]
        stores = [first, second] * 5
        results = await asyncio.gather(
            *(store.add(user) for store, user in zip(stores, racers, strict=True)), return_exceptions=True
        )
        assert sum(isinstance(result, User) for result in results) == 1
        assert all(isinstance(result, User | UsernameTaken) for result in results), results
        assert await first.count(UserQuery()) == 1


@pytest.mark.parametrize("how", ["delete", "demote"])
async def test_racing_removals_of_the_last_two_admins_across_instances_leave_one(postgres_url: str, how: str) -> None:
    async with open_store(postgres_url, pool_max=2) as first, open_store(postgres_url, pool_max=2) as second:

        async def remove(store: PostgresUserStore, user: User) -> object:
            if how == "delete":
                return await store.delete(user.id, keep_an_admin=True)
            return await store.update(user.id, UserChanges(scope=("user",)), keep_an_admin=True)

        for round_ in range(5):
            admins = [await first.add(new_user(f"root{round_}x{n}", ("admin",))) for n in range(2)]
            results = await asyncio.gather(remove(first, admins[0]), remove(second, admins[1]), return_exceptions=True)
            assert sum(isinstance(result, LastAdmin) for result in results) == 1, results
            assert await first.count(UserQuery(scope=("admin",))) == 1
            # Leave no admin behind for the next round.
            for admin in admins:
                await first.delete(admin.id)


# Notifications keep other instances' caches honest.


async def test_a_write_by_another_instance_is_forgotten_at_once(postgres_url: str, clock: FakeClock) -> None:
    async with instance(postgres_url, clock) as (one, listener), instance(postgres_url, clock) as (two, _):
        alice = await one.add(new_user("alice"))
        await heard(listener, 1)
        assert await one.get_by_id(alice.id) == alice
        assert len(one) == 1
        before = listener.notifications

        assert await two.revoke_tokens(alice.id) == 1
        await eventually(lambda: len(one) == 0)  # no clock moved: the notification did it
        assert listener.notifications > before
        assert (await one.get_by_id(alice.id)).token_version == 1  # type: ignore[union-attr]

        assert await two.delete(alice.id)
        await eventually(lambda: len(one) == 0)
        assert await one.get_by_id(alice.id) is None


async def test_writes_from_psql_are_heard_too(postgres_url: str, clock: FakeClock) -> None:
    async with instance(postgres_url, clock) as (cache, listener):
        alice = await cache.add(new_user("alice"))
        bob = await cache.add(new_user("bob"))
        await heard(listener, 2)
        await cache.get_by_id(alice.id)
        await cache.get_by_id(bob.id)
        await execute(postgres_url, "UPDATE users SET plan = 'pro' WHERE id = $1", alice.id)
        await eventually(lambda: len(cache) == 1)
        assert (await cache.get_by_id(alice.id)).plan == "pro"  # type: ignore[union-attr]
        assert (await cache.get_by_id(bob.id)).plan == "free"  # type: ignore[union-attr]
        # TRUNCATE has no rows to name: everyone is forgotten.
        await execute(postgres_url, "TRUNCATE users CASCADE")
        await eventually(lambda: len(cache) == 0)
        assert await cache.get_by_id(bob.id) is None
        assert listener.connected


async def test_a_lost_listener_serves_nothing_older_than_a_recheck_and_reconnects(
    postgres: PostgresForTests, postgres_url: str, clock: FakeClock
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    async with instance(postgres_url, clock) as (cache, listener), open_store(postgres_url) as other:
        alice = await cache.add(new_user("alice"))
        await heard(listener, 1)
        await cache.get_by_id(alice.id)
        assert listener.connected
        assert listener.reconnects == 0
        # Kill the listener's connection, and keep it from coming back for now (existing pooled connections
        # stay usable).
        await execute(postgres.server_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await execute(postgres.server_url, "SELECT pg_terminate_backend($1)", listener.backend_pid)
        await eventually(lambda: not listener.connected)

        assert await other.update(alice.id, UserChanges(plan="pro")) is not None  # unheard
        clock.advance(0.5)
        assert (await cache.get_by_id(alice.id)).plan == "free"  # type: ignore[union-attr]
        clock.advance(0.5)  # one recheck after the last: while deaf, the cache forgets everything then
        assert (await cache.get_by_id(alice.id)).plan == "pro"  # type: ignore[union-attr]
        assert await other.update(alice.id, UserChanges(plan="team")) is not None
        clock.advance(1.0)
        assert (await cache.get_by_id(alice.id)).plan == "team"  # type: ignore[union-attr]

        await execute(
            postgres_url.rsplit("/", 1)[0] + "/postgres", f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'
        )
        await eventually(lambda: listener.connected, within=10.0)
        assert listener.reconnects == 1
        # Connected again, the cache keeps users between rechecks and hears of changes at once.
        await cache.get_by_id(alice.id)
        clock.advance(5.0)
        await cache.get_by_id(alice.id)
        assert len(cache) == 1
        assert await other.update(alice.id, UserChanges(plan="free")) is not None
        await eventually(lambda: len(cache) == 0)
        assert (await cache.get_by_id(alice.id)).plan == "free"  # type: ignore[union-attr]


async def test_a_reconnection_forgets_everything(postgres_url: str, clock: FakeClock) -> None:
    async with instance(postgres_url, clock) as (cache, listener):
        alice = await cache.add(new_user("alice"))
        await heard(listener, 1)
        await cache.get_by_id(alice.id)
        await execute(postgres_url, "SELECT pg_terminate_backend($1)", listener.backend_pid)
        await eventually(lambda: listener.reconnects == 1 and listener.connected)
        assert len(cache) == 0


async def test_the_listener_refuses_to_start_on_an_unreachable_database() -> None:
    unused_tcp_port = free_port()
    url = f"postgresql://mixauth:hunter2-secret@127.0.0.1:{unused_tcp_port}/users"
    with pytest.raises(StorageError, match=f"127.0.0.1:{unused_tcp_port}/users") as refused:
        async with listen_for_changes(url, CachedUserStore(FakeUserStore()), timeout=1.0):
            pass
    assert "hunter2" not in str(refused.value)


async def test_restarts_load_no_icu_while_its_module_is_the_noted_one(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on SQLite (tests/test_skeleton_refresh.py): the confusables check costs no ICU load at start-up."""
    async with open_store(postgres_url) as store:
        alice = await store.add(new_user("alice"))
    assert await fetch_note(postgres_url) == f" @ {skeleton_data_fingerprint()}"  # no users then: the module alone

    def must_not_load_icu() -> str:
        raise AssertionError("ICU was loaded")

    with monkeypatch.context() as patched:
        patched.setattr(skeleton_note, "skeleton_data_version", must_not_load_icu)
        async with open_store(postgres_url) as store:
            assert (await store.get_by_id(alice.id)) == alice
    # Another ICU module with the same data: checked once (ICU loaded), noted, skeletons kept.
    monkeypatch.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "a rebuilt ICU module")
    async with open_store(postgres_url):
        pass
    assert await fetch_note(postgres_url) == f"{skeleton_data_version()} @ a rebuilt ICU module"
    assert await fetch_skeletons(postgres_url) == [username_skeleton("alice")]


async def fetch_note(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        note: str = await connection.fetchval("SELECT version FROM username_skeleton_data")
    finally:
        await connection.close()
    return note


async def fetch_skeletons(url: str) -> list[str | None]:
    connection = await asyncpg.connect(url)
    try:
        return [row[0] for row in await connection.fetch("SELECT username_skeleton FROM users ORDER BY id")]
    finally:
        await connection.close()
