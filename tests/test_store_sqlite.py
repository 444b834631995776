"""What only the SQLite backend promises: schema versions and migrations, PRAGMAs, files, locks.

The UserStore contract it shares with every backend is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3 as sqlite3_driver
import unicodedata
from pathlib import Path

import aiosqlite
import pytest

from server.domain import UsernameConfusable, UserQuery
from server.security import email_key, identifier_key, new_user_id, username_skeleton
from server.storage import StorageError, sqlite
from server.storage import skeletons as skeleton_note
from server.storage.sqlite import DATABASE_FILE, MIGRATIONS, SqliteUserStore
from tests.test_store_contract import add_users
from tests.test_store_contract import new_user as new_user  # re-exported: test_cli builds users with it

# SQLite's own guarantees.


ALL_VERSIONS = list(range(1, len(MIGRATIONS) + 1))


async def read_versions(path: Path) -> list[int]:
    async with aiosqlite.connect(path) as connection, connection.execute("SELECT version FROM schema_version") as cur:
        return [int(row[0]) for row in await cur.fetchall()]


async def test_schema_version_records_each_version_once(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path):
        pass
    assert await read_versions(tmp_path / DATABASE_FILE) == ALL_VERSIONS


async def test_reopening_does_not_rerun_migrations(tmp_path: Path) -> None:
    user = new_user()
    async with sqlite.open_store(tmp_path) as store:
        await store.add(user)
    async with sqlite.open_store(tmp_path) as store:
        assert await store.get_by_id(user.id) == user.as_user()
    assert await read_versions(tmp_path / DATABASE_FILE) == ALL_VERSIONS


async def test_migrate_reports_the_newest_version(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3_driver.connect(tmp_path / DATABASE_FILE, isolation_level=None)) as connection:
        assert sqlite.migrate(connection) == len(MIGRATIONS)
        assert sqlite.migrate(connection) == len(MIGRATIONS)
    assert await read_versions(tmp_path / DATABASE_FILE) == ALL_VERSIONS


async def test_a_schema_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path):
        pass
    async with aiosqlite.connect(tmp_path / DATABASE_FILE) as connection:
        await connection.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
        await connection.commit()
    with pytest.raises(StorageError, match=r"newer than this mixauth knows"):
        async with sqlite.open_store(tmp_path):
            pytest.fail("the store opened a database with a newer schema")
    # Refusing changed nothing.
    assert await read_versions(tmp_path / DATABASE_FILE) == [*ALL_VERSIONS, len(MIGRATIONS) + 1]


async def test_the_database_file_is_in_wal_mode(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path):
        pass
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("PRAGMA journal_mode") as cursor,
    ):
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == "wal"


async def test_both_connections_use_wal_and_synchronous_full(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path) as store:
        assert isinstance(store, SqliteUserStore)
        # synchronous is a per-connection setting: only the store's own connections can show it.
        for connection in (store._writer, store._reader):
            async with connection.execute("PRAGMA journal_mode") as cursor:
                assert await cursor.fetchone() == ("wal",)
            async with connection.execute("PRAGMA synchronous") as cursor:
                assert await cursor.fetchone() == (2,)


async def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / DATABASE_FILE).write_bytes(b"this is not an SQLite database, just text " * 100)
    with pytest.raises(StorageError, match="cannot open the database"):
        async with sqlite.open_store(tmp_path):
            pass


async def test_every_connection_waits_for_a_lock_instead_of_failing(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path) as store:
        assert isinstance(store, SqliteUserStore)
        for connection in (store._writer, store._reader):
            async with connection.execute("PRAGMA busy_timeout") as cursor:
                assert await cursor.fetchone() == (sqlite.BUSY_TIMEOUT_MS,)


async def test_a_write_waits_for_another_processs_write_lock(tmp_path: Path) -> None:
    """Another connection (the command line, say) holds the write lock; a write waits for it, then succeeds."""
    async with sqlite.open_store(tmp_path) as store:
        (alice,) = await add_users(store, 1)
        other = sqlite3_driver.connect(tmp_path / DATABASE_FILE, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE users SET plan = 'locked' WHERE id = ?", (alice.id,))
            # Released well inside the busy timeout; without one the write below fails at once.
            asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
            assert await store.set_scope(alice.id, ("admin",)) is True
        finally:
            other.close()
        stored = await store.get_by_id(alice.id)
        assert stored is not None
        assert (stored.plan, stored.scope) == ("locked", ("admin",))


async def test_identifier_keys_made_before_normalising_first_are_rekeyed(tmp_path: Path) -> None:
    """Schema 2 recomputes keys that the first identifier_key (trim, then NFKC) made differently."""
    old_key = unicodedata.normalize("NFKC", "\u00b4x".strip()).casefold()  # trimmed first: NFKC's space stays
    assert old_key != identifier_key("\u00b4x")
    path = tmp_path / DATABASE_FILE
    async with aiosqlite.connect(path, isolation_level=None) as connection:
        await connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT")
        first = MIGRATIONS[0]
        assert isinstance(first, str)
        await connection.executescript(first)
        await connection.execute("INSERT INTO schema_version (version) VALUES (1)")
        insert = (
            "INSERT INTO users (id, username, username_key, email, email_key, password_hash, scope, plan)"
            " VALUES (?, ?, ?, ?, ?, 'h', '[\"user\"]', 'free')"
        )
        old = new_user_id()
        await connection.execute(insert, (old, "\u00b4x", old_key, "a@example.com", "a@example.com"))
    async with sqlite.open_store(tmp_path) as store:
        user = await store.get_by_username(identifier_key("\u00b4x"))
        assert user is not None
        assert user.id == old
        assert await store.get_by_username(identifier_key(" \u0301x")) == user  # the same name in another form


async def test_the_database_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path) as store:
        await store.add(new_user())
        for name in (DATABASE_FILE, DATABASE_FILE + "-wal", DATABASE_FILE + "-shm"):
            assert (tmp_path / name).stat().st_mode & 0o077 == 0, name


# The user API's migration, from the schema before it.

SCHEMA_BEFORE_THE_USER_API = 2


async def test_users_stored_before_the_user_api_get_created_vendor_and_version_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by the migrations before the user API, with users in it, opens with every user intact:
    ``created`` from the id's second (ms), no vendor, token version 0; and the new operations work on them."""
    path = tmp_path / DATABASE_FILE
    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", MIGRATIONS[:SCHEMA_BEFORE_THE_USER_API])
        with contextlib.closing(sqlite3_driver.connect(path, isolation_level=None)) as migrating:
            assert sqlite.migrate(migrating) == SCHEMA_BEFORE_THE_USER_API
        async with aiosqlite.connect(path, isolation_level=None) as connection:
            insert = (
                "INSERT INTO users (id, username, username_key, email, email_key, password_hash, scope, plan,"
                " is_active, metadata) VALUES (?, ?, ?, ?, ?, 'h', ?, 'free', ?, ?)"
            )
            old = [new_user_id(seconds) for seconds in (0, 1_700_000_000, 1_700_000_001, 0xFFFFFFFF)]
            for n, user_id in enumerate(old):
                scope = '["admin"]' if n == 0 else '["user"]'
                metadata = json.dumps({"n": n})
                await connection.execute(
                    insert, (user_id, f"Old{n}", f"old{n}", f"o{n}@x.io", f"o{n}@x.io", scope, n % 2, metadata)
                )
    async with sqlite.open_store(tmp_path) as store:
        for n, user_id in enumerate(old):
            user = await store.get_by_id(user_id)
            assert user is not None
            assert user.created == int(user_id[:8], 16) * 1000
            assert (user.vendor, user.token_version) == ((), 0)
            assert (user.username, user.is_active, user.metadata) == (f"Old{n}", bool(n % 2), {"n": n})
        assert [user.id for user in await store.find(UserQuery())] == old[::-1]
        assert await store.revoke_tokens(old[1]) == 1
        assert await store.put_reset_code(old[2], "hash", 1) is True
    assert await read_versions(path) == ALL_VERSIONS


async def explain(store: SqliteUserStore, query: UserQuery) -> list[str]:
    """The query plan of the statement ``find(query)`` runs."""
    statements: list[str] = []
    await store._reader.set_trace_callback(statements.append)  # left on: the store closes after the test
    await store.find(query)
    statement = statements[-1]
    rows = await store._reader.execute_fetchall("EXPLAIN QUERY PLAN " + statement)
    return [str(row[3]) for row in rows]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (UserQuery(), "users_created"),
        (UserQuery(sort="username", descending=False), "users_username_key"),
        (UserQuery(sort="username"), "users_username_key"),
        (UserQuery(sort="email", descending=False), "users_email_key"),
        (UserQuery(plan=("pro",)), "users_plan"),
    ],
)
async def test_the_common_orders_read_an_index_without_sorting(tmp_path: Path, query: UserQuery, index: str) -> None:
    async with sqlite.open_store(tmp_path) as store:
        assert isinstance(store, SqliteUserStore)
        plan = await explain(store, query)
    assert any(index in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def make_version_2_database(path: Path, users: list[tuple[str, str, str, str]]) -> None:
    """A database as schema 2 left it, with ``(id, username, email, email_key)`` rows created in that order."""
    with contextlib.closing(sqlite3_driver.connect(path, isolation_level=None)) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT")
        first, second = MIGRATIONS[:2]
        assert isinstance(first, str)
        assert not isinstance(second, str)
        connection.executescript(first)
        second(connection)
        connection.executemany("INSERT INTO schema_version (version) VALUES (?)", [(1,), (2,)])
        insert = (
            "INSERT INTO users (id, username, username_key, email, email_key, password_hash, scope, plan, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'h', '[\"user\"]', 'free', ?)"
        )
        for created_at, (user_id, username, email, key) in enumerate(users):
            connection.execute(insert, (user_id, username, identifier_key(username), email, key, created_at))


async def test_a_version_2_database_gets_idna_email_keys_and_username_skeletons(tmp_path: Path) -> None:
    ids = [new_user_id() for _ in range(6)]
    make_version_2_database(
        tmp_path / DATABASE_FILE,
        [
            # Schema 2 keyed whole emails with identifier_key: Unicode domains as given, ß folded to ss.
            (ids[0], "idn", "idn@B\u00fccher.example", "idn@b\u00fccher.example"),
            (ids[1], "sharp", "ss@stra\u00dfe.example", "ss@strasse.example"),
            (ids[2], "admin", "admin@example.com", "admin@example.com"),
            (ids[3], "\u0430dmin", "cyrillic@example.com", "cyrillic@example.com"),  # looks like the one before
            (ids[4], "early", "x@b\u00fccher.example", "x@b\u00fccher.example"),
            (ids[5], "late", "x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),  # one mailbox, two accounts
        ],
    )
    async with sqlite.open_store(tmp_path) as store:
        found = await store.get_by_email(email_key("IDN@xn--bcher-kva.example"))
        assert found is not None
        assert found.id == ids[0]
        sharp = await store.get_by_email(email_key("ss@stra\u00dfe.example"))
        assert sharp is not None
        assert sharp.id == ids[1]
        assert await store.get_by_email(email_key("ss@strasse.example")) is None
        # Both look-alikes made before keep their accounts; a third is refused.
        for user_id, name in ((ids[2], "admin"), (ids[3], "\u0430dmin")):
            user = await store.get_by_username(identifier_key(name))
            assert user is not None
            assert user.id == user_id
        with pytest.raises(UsernameConfusable):
            await store.add(new_user("adm\u0456n", "third@example.com"))
        # A colliding email key is left as it was: the later account holds the IDNA key.
        late = await store.get_by_email(email_key("x@b\u00fccher.example"))
        assert late is not None
        assert late.id == ids[5]
        early = await store.get_by_email("x@b\u00fccher.example")
        assert early is not None
        assert early.id == ids[4]
    assert await read_versions(tmp_path / DATABASE_FILE) == ALL_VERSIONS
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("SELECT id, username_skeleton FROM users") as cursor,
    ):
        skeletons = {user_id: skeleton for user_id, skeleton in await cursor.fetchall()}
    assert skeletons[ids[2]] == username_skeleton("admin")
    assert skeletons[ids[3]] is None  # the later of two look-alikes keeps no skeleton
    assert skeletons[ids[0]] == username_skeleton("idn")


async def test_skeletons_are_recomputed_when_the_confusables_data_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sqlite.open_store(tmp_path) as store:
        # Created in the same second: ids break the tie, so the first's must sort first.
        first = await store.add(dataclasses.replace(new_user("alice", "alice@example.com"), id="0" * 24))
        second = await store.add(new_user("bob", "bob@example.com"))
    # Data under which every name looks alike: the earlier user keeps the skeleton, the later gets none.
    monkeypatch.setattr(skeleton_note, "skeleton_data_version", lambda: "every name alike")
    monkeypatch.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "another ICU module")
    monkeypatch.setattr(sqlite, "username_skeleton", lambda username: "x")
    async with sqlite.open_store(tmp_path) as store:
        pass
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("SELECT id, username_skeleton FROM users") as cursor,
    ):
        assert {user_id: skeleton for user_id, skeleton in await cursor.fetchall()} == {first.id: "x", second.id: None}
