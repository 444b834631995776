"""The UserStore contract, run against the SQLite backend, plus the SQLite backend's own guarantees.

The contract tests only use the ``open_store`` fixture and the UserStore Protocol, so another backend joins
them by adding a parameter to that fixture. The tests at the end (schema versions, PRAGMAs) are SQLite's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3 as sqlite3_driver
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiosqlite
import pytest

from server.domain import EmailTaken, NewUser, User, UsernameConfusable, UsernameTaken, UserStore
from server.security import build_new_user, email_key, identifier_key, new_user_id, username_skeleton
from server.storage import StorageError, sqlite
from server.storage.sqlite import DATABASE_FILE, MIGRATIONS, SqliteUserStore

OpenStore = Callable[[Path], AbstractAsyncContextManager[UserStore]]

# A well-formed bcrypt hash; the store keeps it as an opaque string.
HASH = "$2b$04$abcdefghijklmnopqrstuu5Ov7hTbyFZ0b1aLyNnyWZTLzCXlCmYy"


def new_user(
    username: str = "Alice",
    email: str = "Alice@Example.com",
    *,
    scope: tuple[str, ...] = ("user",),
    plan: str = "free",
    metadata: dict[str, object] | None = None,
    password_hash: str = HASH,
) -> NewUser:
    return build_new_user(username, email, password_hash, scope, plan, metadata)


@pytest.fixture(params=["sqlite"])
def open_store(request: pytest.FixtureRequest) -> OpenStore:
    """Open a store of the parametrised backend on a data directory; the same directory reopens the same data."""
    backends: dict[str, OpenStore] = {"sqlite": sqlite.open_store}
    return backends[request.param]


@pytest.fixture
async def store(open_store: OpenStore, tmp_path: Path) -> AsyncIterator[UserStore]:
    async with open_store(tmp_path) as opened:
        yield opened


# The UserStore contract.


async def test_add_returns_the_user_and_every_lookup_finds_it(store: UserStore) -> None:
    user = new_user()
    added = await store.add(user)
    assert added == user.as_user()
    assert await store.get_by_id(user.id) == added
    assert await store.get_by_username("alice") == added
    assert await store.get_by_email("alice@example.com") == added


async def test_lookups_use_the_key_not_the_display_form(store: UserStore) -> None:
    await store.add(new_user())
    # The store matches the normalised key exactly; normalising is the caller's job.
    assert await store.get_by_username("Alice") is None
    assert await store.get_by_email("Alice@Example.com") is None


async def test_unknown_user_is_none(store: UserStore) -> None:
    await store.add(new_user())
    assert await store.get_by_id(new_user_id()) is None
    assert await store.get_by_username("bob") is None
    assert await store.get_by_email("bob@example.com") is None


async def test_taken_username_raises_username_taken(store: UserStore) -> None:
    first = await store.add(new_user("Alice", "alice@example.com"))
    with pytest.raises(UsernameTaken):
        await store.add(new_user("ALICE", "other@example.com"))
    assert await store.get_by_email("other@example.com") is None
    assert await store.get_by_username("alice") == first


async def test_taken_email_raises_email_taken(store: UserStore) -> None:
    first = await store.add(new_user("Alice", "alice@example.com"))
    with pytest.raises(EmailTaken):
        await store.add(new_user("Bob", "ALICE@example.com"))
    assert await store.get_by_username("bob") is None
    assert await store.get_by_email("alice@example.com") == first


async def test_a_username_that_looks_like_a_taken_one_raises_username_confusable(store: UserStore) -> None:
    first = await store.add(new_user("admin", "admin@example.com"))
    for lookalike in ("\u0430dmin", "\u0430DMIN", "adrnin"):  # Cyrillic a, Cyrillic capital A, "rn" for "m"
        with pytest.raises(UsernameConfusable):
            await store.add(new_user(lookalike, f"{len(lookalike)}@example.com"))
    with pytest.raises(UsernameTaken) as taken:
        await store.add(new_user("ADMIN", "other@example.com"))
    assert not isinstance(taken.value, UsernameConfusable)  # the same name is taken, not merely alike
    assert await store.list_users() == [first]


async def test_deleting_a_user_frees_their_skeleton(store: UserStore) -> None:
    first = await store.add(new_user("admin", "admin@example.com"))
    assert await store.delete(first.id) is True
    await store.add(new_user("\u0430dmin", "other@example.com"))


async def test_concurrent_adds_of_look_alike_names_admit_one(store: UserStore) -> None:
    names = ["admin", "\u0430dmin", "adm\u0456n", "adrnin", "\u0430drnin"]
    users = [new_user(name, f"racer{n}@example.com") for n, name in enumerate(names)]
    results = await asyncio.gather(*(store.add(user) for user in users), return_exceptions=True)
    assert sum(isinstance(result, User) for result in results) == 1
    assert all(isinstance(result, User | UsernameConfusable) for result in results), results


async def test_emails_are_kept_unique_by_their_idna_form(store: UserStore) -> None:
    first = await store.add(new_user("first", "idn@b\u00fccher.example"))
    with pytest.raises(EmailTaken):
        await store.add(new_user("second", "IDN@xn--bcher-kva.example"))
    await store.add(new_user("sharp", "ss@stra\u00dfe.example"))
    await store.add(new_user("double", "ss@strasse.example"))
    assert await store.get_by_email("idn@xn--bcher-kva.example") == first


async def test_metadata_round_trips_as_nested_json(store: UserStore) -> None:
    metadata: dict[str, object] = {
        "company": "Acme",
        "tags": ["a", "b", {"deep": [1, 2.5, None, True]}],
        "nested": {"level": {"unicode": "žluťoučký kůň", "empty": {}}},
    }
    user = new_user(metadata=metadata)
    await store.add(user)
    stored = await store.get_by_id(user.id)
    assert stored is not None
    assert stored.metadata == metadata


async def test_no_metadata_reads_back_as_none(store: UserStore) -> None:
    user = new_user(metadata=None)
    await store.add(user)
    stored = await store.get_by_id(user.id)
    assert stored is not None
    assert stored.metadata is None


async def test_scope_plan_and_hash_round_trip_and_new_users_are_inactive(store: UserStore) -> None:
    user = new_user(scope=("admin", "user", "api:create"), plan="enterprise")
    await store.add(user)
    stored = await store.get_by_username("alice")
    assert stored is not None
    assert stored.scope == ("admin", "user", "api:create")
    assert stored.plan == "enterprise"
    assert stored.password_hash == HASH
    assert stored.is_active is False


async def test_data_survives_closing_and_reopening(open_store: OpenStore, tmp_path: Path) -> None:
    user = new_user(metadata={"k": ["v"]})
    async with open_store(tmp_path) as store:
        await store.add(user)
    async with open_store(tmp_path) as store:
        assert await store.get_by_id(user.id) == user.as_user()
        with pytest.raises(UsernameTaken):
            await store.add(new_user("alice", "second@example.com"))


async def test_concurrent_adds_for_one_username_next_to_distinct_users(store: UserStore) -> None:
    """Twenty racing for one username, twenty distinct: a failed insert must not undo anyone else's."""
    racers = [new_user("contested", f"racer{n}@example.com") for n in range(20)]
    distinct = [new_user(f"user{n}", f"user{n}@example.com", metadata={"n": n}) for n in range(20)]
    everyone = [user for pair in zip(racers, distinct, strict=True) for user in pair]

    results = await asyncio.gather(*(store.add(user) for user in everyone), return_exceptions=True)

    succeeded = [user for user, result in zip(everyone, results, strict=True) if isinstance(result, User)]
    failures = [result for result in results if not isinstance(result, User)]
    assert len(succeeded) == 21
    assert len(failures) == 19
    assert all(isinstance(failure, UsernameTaken) for failure in failures), failures
    assert {user.id for user in distinct} <= {user.id for user in succeeded}
    for user in succeeded:
        assert await store.get_by_id(user.id) == user.as_user()
        assert await store.get_by_email(user.email_key) == user.as_user()
    winner = await store.get_by_username("contested")
    assert winner is not None
    assert winner.id in {user.id for user in succeeded}
    for user in racers:
        if user.id != winner.id:
            assert await store.get_by_id(user.id) is None
            assert await store.get_by_email(user.email_key) is None


async def add_users(
    store: UserStore, count: int, *, scope: tuple[str, ...] = ("user",), prefix: str = "u"
) -> list[User]:
    return [await store.add(new_user(f"{prefix}{n}", f"{prefix}{n}@example.com", scope=scope)) for n in range(count)]


async def test_list_users_returns_everyone_in_id_order(store: UserStore) -> None:
    added = await add_users(store, 5)
    listed = await store.list_users()
    assert listed == sorted(added, key=lambda user: user.id)


async def test_list_users_of_an_empty_store_is_empty(store: UserStore) -> None:
    assert await store.list_users() == []


async def test_list_users_pages_with_a_cursor_without_gaps_or_repeats(store: UserStore) -> None:
    added = await add_users(store, 7)
    pages: list[list[User]] = []
    after: str | None = None
    while page := await store.list_users(limit=3, after=after):
        pages.append(page)
        after = page[-1].id
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [user for page in pages for user in page] == sorted(added, key=lambda user: user.id)


async def test_list_users_after_the_last_id_is_empty_and_limit_zero_is_empty(store: UserStore) -> None:
    added = await add_users(store, 2)
    assert await store.list_users(after=max(user.id for user in added)) == []
    assert await store.list_users(limit=0) == []


async def test_a_page_is_not_shifted_by_users_added_before_the_cursor(store: UserStore) -> None:
    added = sorted(await add_users(store, 4), key=lambda user: user.id)
    first = await store.list_users(limit=2)
    # A user whose id sorts first arrives between two pages: the next page is unaffected.
    early = new_user("early", "early@example.com")
    await store.add(dataclasses.replace(early, id="00000000" + early.id[8:]))
    assert await store.list_users(limit=2, after=first[-1].id) == added[2:]


async def test_list_users_filters_by_a_scope_held_exactly(store: UserStore) -> None:
    admins = await add_users(store, 2, scope=("admin", "user"), prefix="admin")
    await add_users(store, 2, scope=("user",), prefix="plain")
    await add_users(store, 1, scope=("admin:read", "administrator"), prefix="near")
    listed = await store.list_users(scope="admin")
    assert listed == sorted(admins, key=lambda user: user.id)
    assert len(await store.list_users(scope="user")) == 4
    assert await store.list_users(scope="nobody") == []
    assert await store.list_users(scope="admin", limit=1, after=listed[0].id) == listed[1:]


async def test_set_password_hash_replaces_only_that_users_hash(store: UserStore) -> None:
    alice, bob = await add_users(store, 2)
    other_hash = HASH.replace("u5Ov", "XXXX")
    assert await store.set_password_hash(alice.id, other_hash) is True
    stored = await store.get_by_id(alice.id)
    assert stored is not None
    assert stored.password_hash == other_hash
    assert stored == dataclasses.replace(alice, password_hash=other_hash)
    assert await store.get_by_id(bob.id) == bob


async def test_set_scope_replaces_the_scope_as_given(store: UserStore) -> None:
    alice, bob = await add_users(store, 2)
    assert await store.set_scope(alice.id, ("admin", "api:create")) is True
    assert await store.get_by_username(identifier_key(alice.username)) == dataclasses.replace(
        alice, scope=("admin", "api:create")
    )
    assert await store.list_users(scope="admin") == [dataclasses.replace(alice, scope=("admin", "api:create"))]
    assert await store.get_by_id(bob.id) == bob


async def test_delete_removes_the_user_and_frees_the_username_and_email(store: UserStore) -> None:
    alice, bob = await add_users(store, 2)
    assert await store.delete(alice.id) is True
    assert await store.get_by_id(alice.id) is None
    assert await store.get_by_username(identifier_key(alice.username)) is None
    assert await store.get_by_email(identifier_key(alice.email)) is None
    assert await store.list_users() == [bob]
    again = await store.add(new_user(alice.username.upper(), alice.email.upper()))
    assert await store.get_by_username(identifier_key(alice.username)) == again


async def test_writes_to_an_unknown_id_match_nothing_and_change_nothing(store: UserStore) -> None:
    (alice,) = await add_users(store, 1)
    unknown = new_user_id()
    assert await store.set_password_hash(unknown, HASH) is False
    assert await store.set_scope(unknown, ("admin",)) is False
    assert await store.delete(unknown) is False
    assert await store.list_users() == [alice]


async def test_writes_are_seen_by_another_store_on_the_same_data(open_store: OpenStore, tmp_path: Path) -> None:
    """The admin command line opens its own store next to the server's: each must see the other's writes."""
    async with open_store(tmp_path) as server, open_store(tmp_path) as cli:
        alice, bob = await add_users(server, 2)
        assert await cli.set_scope(alice.id, ("admin",)) is True
        assert await cli.delete(bob.id) is True
        assert await server.get_by_id(alice.id) == dataclasses.replace(alice, scope=("admin",))
        assert await server.get_by_id(bob.id) is None
        assert await server.list_users() == [dataclasses.replace(alice, scope=("admin",))]


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
    async with aiosqlite.connect(tmp_path / DATABASE_FILE, isolation_level=None) as connection:
        assert await sqlite.migrate(connection) == len(MIGRATIONS)
        assert await sqlite.migrate(connection) == len(MIGRATIONS)
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


async def make_version_2_database(path: Path, users: list[tuple[str, str, str, str]]) -> None:
    """A database as schema 2 left it, with ``(id, username, email, email_key)`` rows created in that order."""
    async with aiosqlite.connect(path, isolation_level=None) as connection:
        await connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT")
        first, second = MIGRATIONS[:2]
        assert isinstance(first, str)
        assert not isinstance(second, str)
        await connection.executescript(first)
        await second(connection)
        await connection.executemany("INSERT INTO schema_version (version) VALUES (?)", [(1,), (2,)])
        insert = (
            "INSERT INTO users (id, username, username_key, email, email_key, password_hash, scope, plan, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'h', '[\"user\"]', 'free', ?)"
        )
        for created_at, (user_id, username, email, key) in enumerate(users):
            await connection.execute(insert, (user_id, username, identifier_key(username), email, key, created_at))


async def test_a_version_2_database_gets_idna_email_keys_and_username_skeletons(tmp_path: Path) -> None:
    ids = [new_user_id() for _ in range(6)]
    await make_version_2_database(
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
    monkeypatch.setattr(sqlite, "skeleton_data_version", lambda: "every name alike")
    monkeypatch.setattr(sqlite, "username_skeleton", lambda username: "x")
    async with sqlite.open_store(tmp_path) as store:
        pass
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("SELECT id, username_skeleton FROM users") as cursor,
    ):
        assert {user_id: skeleton for user_id, skeleton in await cursor.fetchall()} == {first.id: "x", second.id: None}
