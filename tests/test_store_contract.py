"""The UserStore contract: one suite, run against every backend, the cache in front of one, and the fake the
upper layers' tests use.

Every test here uses only the ``open_store`` fixture and the UserStore Protocol, so a new backend (the
PostgreSQL store) joins by adding a parameter to that fixture and passing this file. What only SQLite
promises (schema versions, PRAGMAs, files) is in test_store_sqlite.py, what only PostgreSQL promises
(concurrent migrations, instances on one database, notifications) in test_store_postgres.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from server.domain import (
    DELETE_TICKET_RETENTION_MS,
    DeleteTicket,
    EmailTaken,
    LastAdmin,
    NewUser,
    User,
    UserChanges,
    UserIdTaken,
    UsernameConfusable,
    UsernameTaken,
    UserQuery,
    UserStore,
    created_from_id,
)
from server.security import build_new_user, identifier_key, new_user_id, username_skeleton
from server.storage import postgres, sqlite
from server.storage.cached import CachedUserStore
from server.storage.sqlite import SqliteUserStore
from tests.conftest import PostgresForTests
from tests.fakes import FakeUserStore

OpenStore = Callable[[Path], AbstractAsyncContextManager[UserStore]]

# A well-formed bcrypt hash; the store keeps it as an opaque string.
HASH = "$2b$04$abcdefghijklmnopqrstuu5Ov7hTbyFZ0b1aLyNnyWZTLzCXlCmYy"
OTHER_HASH = HASH.replace("u5Ov", "XXXX")


def new_user(
    username: str = "Alice",
    email: str = "Alice@Example.com",
    *,
    scope: tuple[str, ...] = ("user",),
    plan: str = "free",
    metadata: dict[str, object] | None = None,
    password_hash: str = HASH,
    vendor: tuple[str, ...] = (),
    created: int | None = None,
    is_active: bool = False,
) -> NewUser:
    """A new user as signup builds one; ``vendor``, ``created`` and ``is_active`` as an import may set them."""
    user = build_new_user(username, email, password_hash, scope, plan, metadata)
    return dataclasses.replace(user, vendor=vendor, created=created, is_active=is_active)


@pytest.fixture(params=["sqlite", "cached-sqlite", "postgres", "cached-postgres", "fake"])
async def open_store(request: pytest.FixtureRequest) -> AsyncIterator[OpenStore]:
    """Open a store of the parametrised backend on a data directory; the same directory reopens the same data.

    ``cached-sqlite`` is the server's own arrangement, the cache in front of SQLite; it notices no outside
    change within a test (an hour's recheck), so a write through it that failed to forget a user would show.
    ``postgres`` maps each directory to a fresh database of its own (dropped after the test), and
    ``cached-postgres`` puts the cache in front of it, with no listener, for the same reason.
    """
    if request.param == "sqlite":
        yield sqlite.open_store
        return
    if request.param == "cached-sqlite":

        @asynccontextmanager
        async def open_cached(path: Path) -> AsyncIterator[UserStore]:
            async with sqlite.open_store(path) as store:
                yield CachedUserStore(store, store.data_version, recheck=3600)

        yield open_cached
        return
    if request.param in ("postgres", "cached-postgres"):
        server: PostgresForTests = request.getfixturevalue("postgres")
        cached = request.param == "cached-postgres"
        async with contextlib.AsyncExitStack() as databases:
            urls: dict[Path, str] = {}

            @asynccontextmanager
            async def open_postgres(path: Path) -> AsyncIterator[UserStore]:
                if path not in urls:
                    urls[path] = await databases.enter_async_context(server.fresh_database_url(migrated=True))
                async with postgres.open_store(urls[path], pool_max=4) as store:
                    yield CachedUserStore(store, recheck=3600) if cached else store

            yield open_postgres
        return
    fakes: dict[Path, FakeUserStore] = {}

    @asynccontextmanager
    async def open_fake(path: Path) -> AsyncIterator[UserStore]:
        yield fakes.setdefault(path, FakeUserStore())

    yield open_fake


@pytest.fixture
async def store(open_store: OpenStore, tmp_path: Path) -> AsyncIterator[UserStore]:
    async with open_store(tmp_path) as opened:
        yield opened


async def without_fsync(store: UserStore) -> None:
    """For a test that adds a thousand users: durability is not what it is about, and fsyncs cost seconds."""
    backend = store._store if isinstance(store, CachedUserStore) else store
    if isinstance(backend, SqliteUserStore):
        await backend._writer.execute("PRAGMA synchronous = OFF")


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


# Users beyond signup: created, vendor, the revocation state.


async def test_created_defaults_to_the_ids_second_and_keeps_milliseconds_when_given(store: UserStore) -> None:
    plain = await store.add(new_user("plain", "plain@example.com"))
    assert plain.created == created_from_id(plain.id)
    assert plain.created % 1000 == 0
    exact = await store.add(new_user("exact", "exact@example.com", created=1_790_000_000_123))
    assert exact.created == 1_790_000_000_123
    assert await store.get_by_id(plain.id) == plain
    assert await store.get_by_id(exact.id) == exact


async def test_vendor_activity_and_token_version_round_trip_through_add(store: UserStore) -> None:
    user = dataclasses.replace(new_user(vendor=("acme", "globex"), is_active=True), token_version=7)
    added = await store.add(user)
    assert (added.vendor, added.is_active, added.token_version) == (("acme", "globex"), True, 7)
    assert await store.get_by_id(user.id) == added
    fresh = await store.add(new_user("bob", "bob@example.com"))
    assert (fresh.vendor, fresh.is_active, fresh.token_version) == ((), False, 0)


# find and count: order and paging.


async def add_users_created(store: UserStore, created: list[int], prefix: str = "u") -> list[User]:
    return [
        await store.add(new_user(f"{prefix}{n}", f"{prefix}{n}@example.com", created=moment))
        for n, moment in enumerate(created)
    ]


def by_created_then_id(users: list[User], *, descending: bool) -> list[User]:
    ordered = sorted(users, key=lambda user: user.id)
    return sorted(ordered, key=lambda user: user.created, reverse=descending)


async def test_find_defaults_to_newest_first_with_ties_by_id_ascending(store: UserStore) -> None:
    # Three users share one millisecond, two another: the ties must come out by id, ascending.
    users = await add_users_created(store, [5000, 7000, 5000, 7000, 5000, 6000])
    found = await store.find(UserQuery())
    assert found == by_created_then_id(users, descending=True)
    assert [user.created for user in found] == [7000, 7000, 6000, 5000, 5000, 5000]
    assert [user.id for user in found[3:]] == sorted(user.id for user in found[3:])


async def test_find_oldest_first_still_breaks_ties_by_id_ascending(store: UserStore) -> None:
    users = await add_users_created(store, [5000, 7000, 5000, 7000, 5000, 6000])
    assert await store.find(UserQuery(descending=False)) == by_created_then_id(users, descending=False)


async def test_username_and_email_orders_compare_keys_not_display_forms(store: UserStore) -> None:
    bob = await store.add(new_user("bob", "Zed@example.com"))
    alice = await store.add(new_user("ALICE", "yak@example.com"))
    carol = await store.add(new_user("Carol", "ANT@example.com"))
    assert await store.find(UserQuery(sort="username", descending=False)) == [alice, bob, carol]
    assert await store.find(UserQuery(sort="username")) == [carol, bob, alice]
    assert await store.find(UserQuery(sort="email", descending=False)) == [carol, alice, bob]
    assert await store.find(UserQuery(sort="email")) == [bob, alice, carol]


@pytest.mark.parametrize(("sort", "descending"), [("created", True), ("created", False), ("username", False)])
async def test_walking_the_pages_yields_every_user_once_in_order(store: UserStore, sort: str, descending: bool) -> None:
    await add_users_created(store, [1000, 3000, 2000, 3000, 1000, 3000, 2000])
    everyone = await store.find(UserQuery(sort=sort, descending=descending, limit=1000))  # type: ignore[arg-type]
    for size in (1, 2, 3, 7):
        pages = [
            await store.find(UserQuery(sort=sort, descending=descending, limit=size, offset=offset))  # type: ignore[arg-type]
            for offset in range(0, 8, size)
        ]
        assert [user for page in pages for user in page] == everyone
        assert all(len(page) == size for page in pages[:-1])


async def test_paging_edges_offset_past_the_end_limit_one_and_zero(store: UserStore) -> None:
    users = by_created_then_id(await add_users_created(store, [1000, 2000, 3000]), descending=True)
    assert await store.find(UserQuery(limit=1)) == users[:1]
    assert await store.find(UserQuery(limit=1, offset=2)) == users[2:]
    assert await store.find(UserQuery(offset=3)) == []
    assert await store.find(UserQuery(offset=1_000_000)) == []
    assert await store.find(UserQuery(limit=0)) == []
    assert await store.count(UserQuery(limit=1, offset=1_000_000)) == 3


async def test_a_page_of_1000_out_of_1001_users(store: UserStore) -> None:
    await without_fsync(store)
    for n in range(1001):
        await store.add(new_user(f"user{n:04}", f"user{n:04}@example.com", created=n))
    page = await store.find(UserQuery(limit=1000, sort="username", descending=False))
    assert [user.username for user in page] == [f"user{n:04}" for n in range(1000)]
    newest_first = await store.find(UserQuery(limit=1000))
    assert [user.created for user in newest_first] == list(range(1000, 0, -1))
    assert [user.username for user in await store.find(UserQuery(limit=1000, offset=1000))] == ["user0000"]
    assert await store.count(UserQuery(limit=1)) == 1001


def test_a_query_refuses_a_negative_limit_or_offset_and_an_unknown_sort() -> None:
    with pytest.raises(ValueError, match="negative"):
        UserQuery(limit=-1)
    with pytest.raises(ValueError, match="negative"):
        UserQuery(offset=-1)
    with pytest.raises(ValueError, match="sort"):
        UserQuery(sort="password")  # type: ignore[arg-type]


# find and count: filters and the pattern.


async def filtered_population(store: UserStore) -> dict[str, User]:
    """Users spread over every filter, with near misses (a scope that starts like another, say)."""
    made = {
        "ann": new_user("ann", "ann@example.com", scope=("admin", "user"), plan="pro", vendor=("acme",)),
        "ben": new_user("ben", "ben@example.com", scope=("user",), plan="pro", vendor=("acme", "globex")),
        "cid": new_user("cid", "cid@example.com", scope=("user", "acme1"), plan="free", vendor=()),
        "dee": new_user("dee", "dee@example.com", scope=("admin:read",), plan="free", vendor=("globex",)),
        "eve": new_user("eve", "eve@example.com", scope=("user", "acme1"), plan="pro", is_active=True),
        "fay": new_user("fay", "fay@example.com", scope=("acme",), plan="free", vendor=("acme1",), is_active=True),
    }
    return {name: await store.add(user) for name, user in made.items()}


FILTERS: list[tuple[UserQuery, set[str]]] = [
    (UserQuery(), {"ann", "ben", "cid", "dee", "eve", "fay"}),
    (UserQuery(scope=("admin",)), {"ann"}),
    (UserQuery(scope=("user",)), {"ann", "ben", "cid", "eve"}),
    (UserQuery(scope=("acme1",)), {"cid", "eve"}),
    (UserQuery(scope=("acme",)), {"fay"}),
    (UserQuery(scope=("user", "acme1")), {"cid", "eve"}),
    (UserQuery(scope=("admin", "acme1")), set()),
    (UserQuery(scope=("nobody",)), set()),
    (UserQuery(plan=("pro",)), {"ann", "ben", "eve"}),
    (UserQuery(plan=("pro", "free")), set()),
    (UserQuery(is_active=(True,)), {"eve", "fay"}),
    (UserQuery(is_active=(False,)), {"ann", "ben", "cid", "dee"}),
    (UserQuery(is_active=(True, False)), set()),
    (UserQuery(vendor=("acme",)), {"ann", "ben"}),
    (UserQuery(vendor=("acme", "globex")), {"ben"}),
    (UserQuery(vendor=("acme1",)), {"fay"}),
    (UserQuery(scope=("user",), plan=("pro",)), {"ann", "ben", "eve"}),
    (UserQuery(scope=("user",), plan=("pro",), is_active=(False,)), {"ann", "ben"}),
    (UserQuery(scope=("user",), plan=("pro",), is_active=(False,), vendor=("globex",)), {"ben"}),
    (UserQuery(plan=("free",), is_active=(True,), vendor=("acme1",), scope=("acme",)), {"fay"}),
    (UserQuery(pattern="e"), {"ben", "dee", "eve"}),
    (UserQuery(pattern="e", plan=("pro",)), {"ben", "eve"}),
    (UserQuery(pattern="e", plan=("pro",), scope=("acme1",), is_active=(True,)), {"eve"}),
]


@pytest.mark.parametrize(("query", "expected"), FILTERS)
async def test_every_filter_and_combination_selects_exactly_its_users(
    store: UserStore, query: UserQuery, expected: set[str]
) -> None:
    users = await filtered_population(store)
    found = await store.find(query)
    assert {user.username for user in found} == expected
    assert found == by_created_then_id([users[name] for name in expected], descending=True)
    assert await store.count(query) == len(expected)
    # limit and offset change the page, never the count.
    assert await store.count(dataclasses.replace(query, limit=1, offset=1)) == len(expected)


async def test_the_pattern_is_a_literal_case_insensitive_substring(store: UserStore) -> None:
    names = ["a%b", "a_b", "axb", "100%", "A%Z", "back\\slash", "[ab]", "plain"]
    added = {name: await store.add(new_user(name, f"{n}@example.com")) for n, name in enumerate(names)}

    async def matching(pattern: str) -> set[str]:
        found = await store.find(UserQuery(pattern=pattern))
        assert await store.count(UserQuery(pattern=pattern)) == len(found)
        return {user.username for user in found}

    assert await matching("%") == {"a%b", "100%", "A%Z"}
    assert await matching("_") == {"a_b"}
    assert await matching("a%") == {"a%b", "A%Z"}  # keys are case-folded, and so is the pattern
    assert await matching("%b") == {"a%b"}
    assert await matching("\\") == {"back\\slash"}
    assert await matching("[ab]") == {"[ab]"}
    assert await matching("a.b") == set()
    assert await matching("*") == set()
    assert await matching("") == set(added)
    assert await matching("PLAIN") == set()  # the caller passes the pattern in key form


# update


async def test_update_changes_each_field_and_returns_the_user_as_stored(store: UserStore) -> None:
    alice = await store.add(new_user(metadata={"old": 1}))
    bob = await store.add(new_user("bob", "bob@example.com"))
    assert await store.get_by_id(alice.id) == alice
    changes = UserChanges(
        scope=("admin", "user"),
        vendor=("acme",),
        metadata={"new": [1, 2]},
        email="Alice.New@Example.com",
        email_key="alice.new@example.com",
        username="Alicia",
        username_key="alicia",
        username_skeleton=username_skeleton("Alicia"),
        password_hash=OTHER_HASH,
        is_active=True,
        plan="pro",
    )
    updated = await store.update(alice.id, changes)
    expected = dataclasses.replace(
        alice,
        scope=("admin", "user"),
        vendor=("acme",),
        metadata={"new": [1, 2]},
        email="Alice.New@Example.com",
        username="Alicia",
        password_hash=OTHER_HASH,
        is_active=True,
        plan="pro",
    )
    assert updated == expected
    assert await store.get_by_id(alice.id) == expected
    assert await store.get_by_username("alicia") == expected
    assert await store.get_by_email("alice.new@example.com") == expected
    assert await store.get_by_username("alice") is None
    assert await store.get_by_email("alice@example.com") is None
    assert await store.get_by_id(bob.id) == bob
    # The old username and email are free again.
    await store.add(new_user("alice", "alice@example.com"))


async def test_update_changes_only_what_it_names(store: UserStore) -> None:
    alice = await store.add(new_user(metadata={"keep": True}, vendor=("acme",)))
    assert await store.update(alice.id, UserChanges(plan="pro")) == dataclasses.replace(alice, plan="pro")
    assert await store.update(alice.id, UserChanges(is_active=False)) == dataclasses.replace(alice, plan="pro")
    assert await store.update(alice.id, UserChanges()) == dataclasses.replace(alice, plan="pro")
    cleared = await store.update(alice.id, UserChanges(metadata={}, vendor=()))
    assert cleared is not None
    assert (cleared.metadata, cleared.vendor) == ({}, ())


async def test_update_of_an_unknown_user_is_none(store: UserStore) -> None:
    assert await store.update(new_user_id(), UserChanges(plan="pro")) is None
    assert await store.update(new_user_id(), UserChanges()) is None
    assert await store.update(new_user_id(), UserChanges(scope=("user",)), keep_an_admin=True) is None


async def test_update_to_a_taken_username_or_email_conflicts_and_changes_nothing(store: UserStore) -> None:
    alice = await store.add(new_user("alice", "alice@example.com"))
    bob = await store.add(new_user("bob", "bob@example.com"))
    with pytest.raises(UsernameTaken):
        await store.update(
            bob.id,
            UserChanges(
                username="ALICE", username_key="alice", username_skeleton=username_skeleton("alice"), plan="pro"
            ),
        )
    with pytest.raises(EmailTaken):
        await store.update(
            bob.id, UserChanges(email="Alice@example.com", email_key="alice@example.com", revoke_tokens=True)
        )
    assert await store.get_by_id(bob.id) == bob
    assert await store.get_by_id(alice.id) == alice
    assert await store.get_by_username("bob") == bob


async def test_update_to_ones_own_key_in_another_spelling_is_allowed(store: UserStore) -> None:
    alice = await store.add(new_user("alice", "alice@example.com"))
    updated = await store.update(
        alice.id,
        UserChanges(
            username="ALICE",
            username_key="alice",
            username_skeleton=username_skeleton("alice"),
            email="ALICE@example.com",
            email_key="alice@example.com",
        ),
    )
    assert updated == dataclasses.replace(alice, username="ALICE", email="ALICE@example.com")
    assert await store.get_by_username("alice") == updated


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


async def test_update_to_a_look_alike_username_conflicts_and_changes_nothing(store: UserStore) -> None:
    await store.add(new_user("admin", "admin@example.com"))
    bob = await store.add(new_user("bob", "bob@example.com"))
    look_alike = "\u0430dmin"  # a Cyrillic a
    with pytest.raises(UsernameConfusable):
        await store.update(
            bob.id,
            UserChanges(username=look_alike, username_key=look_alike, username_skeleton=username_skeleton(look_alike)),
        )
    assert await store.get_by_id(bob.id) == bob
    # Bob's own skeleton moves with his name: his old name is free again, his new one is his.
    renamed = await store.update(
        bob.id, UserChanges(username="robert", username_key="robert", username_skeleton=username_skeleton("robert"))
    )
    assert renamed is not None
    await store.add(new_user("bob", "bob2@example.com"))
    with pytest.raises(UsernameTaken):
        await store.add(new_user("r\u043ebert", "robert2@example.com"))  # a Cyrillic o


def test_changes_refuse_a_new_email_or_username_without_its_key() -> None:
    with pytest.raises(ValueError, match="email"):
        UserChanges(email="a@example.com")
    with pytest.raises(ValueError, match="username"):
        UserChanges(username_key="a")


async def test_concurrent_updates_to_one_username_let_exactly_one_win(store: UserStore) -> None:
    users = [await store.add(new_user(f"u{n}", f"u{n}@example.com")) for n in range(10)]
    results = await asyncio.gather(
        *(
            store.update(
                user.id,
                UserChanges(username="Wanted", username_key="wanted", username_skeleton=username_skeleton("wanted")),
            )
            for user in users
        ),
        return_exceptions=True,
    )
    winners = [result for result in results if isinstance(result, User)]
    assert len(winners) == 1
    assert all(isinstance(result, UsernameTaken) for result in results if not isinstance(result, User))
    assert await store.get_by_username("wanted") == winners[0]


# Revocation.


async def test_revoking_increments_the_version_each_time(store: UserStore) -> None:
    alice = await store.add(new_user())
    bob = await store.add(new_user("bob", "bob@example.com"))
    assert await store.get_by_id(alice.id) == alice  # read first: a cache in front must forget it
    assert alice.token_version == 0
    assert await store.revoke_tokens(alice.id) == 1
    assert await store.revoke_tokens(alice.id) == 2
    stored = await store.get_by_id(alice.id)
    assert stored == dataclasses.replace(alice, token_version=2)
    assert await store.get_by_id(bob.id) == bob
    assert await store.revoke_tokens(new_user_id()) is None


async def test_concurrent_revocations_each_count(store: UserStore) -> None:
    alice = await store.add(new_user())
    versions = await asyncio.gather(*(store.revoke_tokens(alice.id) for _ in range(10)))
    assert sorted(v for v in versions if v is not None) == list(range(1, 11))


async def test_a_password_change_and_its_revocation_land_in_one_write(store: UserStore) -> None:
    alice = await store.add(new_user())
    assert await store.get_by_id(alice.id) == alice
    updated = await store.update(alice.id, UserChanges(password_hash=OTHER_HASH, revoke_tokens=True))
    assert updated == dataclasses.replace(alice, password_hash=OTHER_HASH, token_version=1)
    assert await store.get_by_id(alice.id) == updated
    untouched = await store.update(alice.id, UserChanges(password_hash=HASH))
    assert untouched is not None
    assert untouched.token_version == 1
    assert await store.get_by_id(alice.id) == untouched


# Reset codes.

NOW = 1_790_000_000_000
HOUR = 3_600_000


async def test_a_reset_code_works_once(store: UserStore) -> None:
    alice = await store.add(new_user())
    assert await store.put_reset_code(alice.id, "hash-1", NOW + HOUR) is True
    assert await store.consume_reset_code("hash-1", NOW) == alice.id
    assert await store.consume_reset_code("hash-1", NOW) is None


async def test_an_expired_reset_code_is_refused_and_stays_refused(store: UserStore) -> None:
    alice = await store.add(new_user())
    await store.put_reset_code(alice.id, "hash-1", NOW + HOUR)
    assert await store.consume_reset_code("hash-1", NOW + HOUR) is None  # expiry is exclusive
    assert await store.consume_reset_code("hash-1", NOW) is None
    await store.put_reset_code(alice.id, "hash-2", NOW + HOUR)
    assert await store.consume_reset_code("hash-2", NOW + HOUR - 1) == alice.id


async def test_a_new_reset_code_replaces_the_old_one(store: UserStore) -> None:
    alice = await store.add(new_user())
    await store.put_reset_code(alice.id, "hash-1", NOW + HOUR)
    await store.put_reset_code(alice.id, "hash-2", NOW + 2 * HOUR)
    assert await store.consume_reset_code("hash-1", NOW) is None
    assert await store.consume_reset_code("hash-2", NOW) == alice.id


async def test_reset_codes_of_different_users_are_independent(store: UserStore) -> None:
    alice = await store.add(new_user())
    bob = await store.add(new_user("bob", "bob@example.com"))
    await store.put_reset_code(alice.id, "hash-a", NOW + HOUR)
    await store.put_reset_code(bob.id, "hash-b", NOW + HOUR)
    assert await store.consume_reset_code("hash-b", NOW) == bob.id
    assert await store.consume_reset_code("hash-a", NOW) == alice.id
    assert await store.consume_reset_code("unknown", NOW) is None


async def test_a_reset_code_for_an_unknown_user_is_not_kept(store: UserStore) -> None:
    unknown = new_user_id()
    assert await store.put_reset_code(unknown, "hash-1", NOW + HOUR) is False
    assert await store.consume_reset_code("hash-1", NOW) is None


async def test_two_concurrent_consumers_of_one_code_exactly_one_wins(store: UserStore) -> None:
    users = [await store.add(new_user(f"u{n}", f"u{n}@example.com")) for n in range(5)]
    for n, user in enumerate(users):
        await store.put_reset_code(user.id, f"hash-{n}", NOW + HOUR)
    for n, user in enumerate(users):
        results = await asyncio.gather(
            store.consume_reset_code(f"hash-{n}", NOW), store.consume_reset_code(f"hash-{n}", NOW)
        )
        assert sorted(results, key=lambda result: result is None) == [user.id, None]


async def test_deleting_a_user_removes_their_reset_code(store: UserStore) -> None:
    alice = await store.add(new_user())
    await store.put_reset_code(alice.id, "hash-1", NOW + HOUR)
    assert await store.delete(alice.id) is True
    # The same id back (an import of an old export, say) must not revive the code.
    await store.add(dataclasses.replace(new_user(), id=alice.id))
    assert await store.consume_reset_code("hash-1", NOW) is None


# Delete tickets.


def ticket(user_id: str, status: str = "in-progress", done: int = 0, updated: int = NOW) -> DeleteTicket:
    return DeleteTicket(
        id="5f0c8a52-7a4e-4d2b-9d43-0b6e2b1c7a10",
        user_id=user_id,
        status=status,  # type: ignore[arg-type]
        steps_done=done,
        steps_total=2,
        updated=updated,
    )


async def test_a_delete_ticket_is_created_updated_and_read_back(store: UserStore) -> None:
    alice = await store.add(new_user())
    started = ticket(alice.id)
    await store.save_delete_ticket(started)
    assert await store.get_delete_ticket(started.id) == started
    finished = ticket(alice.id, "completed", 2, NOW + 5)
    await store.save_delete_ticket(finished)
    assert await store.get_delete_ticket(started.id) == finished
    assert await store.get_delete_ticket("00000000-0000-4000-8000-000000000000") is None


async def test_a_delete_ticket_outlives_its_user_and_is_kept_24_hours(store: UserStore) -> None:
    alice = await store.add(new_user())
    done = ticket(alice.id, "completed", 2)
    await store.save_delete_ticket(done)
    await store.delete(alice.id)
    later = dataclasses.replace(ticket(new_user_id()), id="later", updated=NOW + 24 * HOUR)
    await store.save_delete_ticket(later)
    assert await store.get_delete_ticket(done.id) == done
    assert DELETE_TICKET_RETENTION_MS >= 24 * HOUR


# The last admin.


async def test_the_last_admin_keeps_the_scope_and_the_account(store: UserStore) -> None:
    admin = await store.add(new_user("root", "root@example.com", scope=("admin", "user")))
    plain = await store.add(new_user())
    assert await store.get_by_id(plain.id) == plain
    with pytest.raises(LastAdmin):
        await store.update(admin.id, UserChanges(scope=("user",), plan="pro"), keep_an_admin=True)
    with pytest.raises(LastAdmin):
        await store.delete(admin.id, keep_an_admin=True)
    assert await store.get_by_id(admin.id) == admin
    # Changes that keep admin, and changes to other users, go through.
    kept = await store.update(admin.id, UserChanges(scope=("admin",), plan="pro"), keep_an_admin=True)
    assert kept == dataclasses.replace(admin, scope=("admin",), plan="pro")
    assert await store.update(plain.id, UserChanges(scope=("viewer",)), keep_an_admin=True) is not None
    assert await store.get_by_id(plain.id) == dataclasses.replace(plain, scope=("viewer",))
    assert await store.delete(plain.id, keep_an_admin=True) is True
    assert await store.get_by_id(plain.id) is None
    assert await store.delete(new_user_id(), keep_an_admin=True) is False


async def test_without_the_guard_the_last_admin_may_go(store: UserStore) -> None:
    admin = await store.add(new_user("root", "root@example.com", scope=("admin",)))
    assert await store.update(admin.id, UserChanges(scope=("user",))) is not None
    assert await store.count(UserQuery(scope=("admin",))) == 0
    # With no admin at all, the guard has nothing to keep.
    assert await store.update(admin.id, UserChanges(scope=("viewer",)), keep_an_admin=True) is not None
    assert await store.delete(admin.id, keep_an_admin=True) is True


async def test_one_of_two_admins_may_go_then_not_the_other(store: UserStore) -> None:
    first = await store.add(new_user("root1", "root1@example.com", scope=("admin",)))
    second = await store.add(new_user("root2", "root2@example.com", scope=("admin", "user")))
    assert await store.delete(first.id, keep_an_admin=True) is True
    with pytest.raises(LastAdmin):
        await store.update(second.id, UserChanges(scope=("user",)), keep_an_admin=True)
    # "admin:read" or "administrator" is not admin.
    await store.add(new_user("near", "near@example.com", scope=("admin:read", "administrator")))
    with pytest.raises(LastAdmin):
        await store.delete(second.id, keep_an_admin=True)


@pytest.mark.parametrize("how", ["demote", "delete", "mixed"])
async def test_racing_removals_of_the_last_two_admins_leave_one(store: UserStore, how: str) -> None:
    admins = [await store.add(new_user(f"root{n}", f"root{n}@example.com", scope=("admin",))) for n in range(2)]

    async def remove(user: User, n: int) -> object:
        if how == "delete" or (how == "mixed" and n == 0):
            return await store.delete(user.id, keep_an_admin=True)
        return await store.update(user.id, UserChanges(scope=("user",)), keep_an_admin=True)

    results = await asyncio.gather(*(remove(user, n) for n, user in enumerate(admins)), return_exceptions=True)
    assert sum(isinstance(result, LastAdmin) for result in results) == 1, results
    assert await store.count(UserQuery(scope=("admin",))) == 1


async def test_filters_match_names_with_quotes_backslashes_and_non_ascii_exactly(store: UserStore) -> None:
    odd = 'Ünï "co"\\rp'
    holder = await store.add(new_user("holder", "holder@example.com", scope=(odd,), vendor=(odd, "x")))
    await store.add(new_user("near", "near@example.com", scope=(odd + "2",), vendor=('"' + odd,)))
    assert await store.find(UserQuery(scope=(odd,))) == [holder]
    assert await store.find(UserQuery(vendor=(odd,))) == [holder]
    assert await store.count(UserQuery(vendor=(odd, "x"))) == 1
    assert await store.count(UserQuery(vendor=("Ünï",))) == 0


# add_many: an import's all-or-nothing insert.


async def test_add_many_adds_every_user_as_given_in_one_write(store: UserStore) -> None:
    users = [
        dataclasses.replace(
            new_user("Alice", "alice@example.com", scope=("admin", "user"), metadata={"team": "a"}),
            vendor=("acme",),
            created=1_700_000_000_123,
            is_active=True,
            token_version=3,
        ),
        new_user("Bob", "bob@example.com", password_hash=OTHER_HASH),
    ]
    added = await store.add_many(users)
    assert added == [user.as_user() for user in users]
    for user in added:
        assert await store.get_by_id(user.id) == user
    assert await store.get_by_username("alice") == added[0]
    assert await store.get_by_email("bob@example.com") == added[1]
    assert await store.add_many([]) == []


@pytest.mark.parametrize(
    ("clash", "error"),
    [
        ("id", UserIdTaken),
        ("username", UsernameTaken),
        ("look-alike", UsernameConfusable),
        ("email", EmailTaken),
    ],
)
async def test_add_many_with_one_taken_key_adds_nothing(store: UserStore, clash: str, error: type[Exception]) -> None:
    stored = await store.add(new_user("Alice", "alice@example.com"))
    clashing = {
        "id": dataclasses.replace(new_user("Carol", "carol@example.com"), id=stored.id),
        "username": new_user("ALICE", "carol@example.com"),
        "look-alike": new_user("\u0430lice", "carol@example.com"),  # Cyrillic a
        "email": new_user("Carol", "Alice@EXAMPLE.com"),
    }[clash]
    batch = [new_user("Bob", "bob@example.com"), clashing, new_user("Dave", "dave@example.com")]
    with pytest.raises(error):
        await store.add_many(batch)
    assert await store.count(UserQuery()) == 1
    assert await store.get_by_username("bob") is None
    assert await store.get_by_username("dave") is None
    assert await store.get_by_id(stored.id) == stored


async def test_add_many_refuses_two_users_of_the_batch_sharing_a_key(store: UserStore) -> None:
    with pytest.raises(EmailTaken):
        await store.add_many([new_user("Alice", "same@example.com"), new_user("Bob", "SAME@example.com")])
    first = new_user("Alice", "alice@example.com")
    with pytest.raises(UserIdTaken):
        await store.add_many([first, dataclasses.replace(new_user("Bob", "bob@example.com"), id=first.id)])
    assert await store.count(UserQuery()) == 0


async def test_add_with_a_taken_id_raises_user_id_taken(store: UserStore) -> None:
    first = await store.add(new_user("Alice", "alice@example.com"))
    with pytest.raises(UserIdTaken):
        await store.add(dataclasses.replace(new_user("Bob", "bob@example.com"), id=first.id))
    assert await store.get_by_id(first.id) == first
    assert await store.get_by_username("bob") is None
