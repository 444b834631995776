"""server.admin: finding users by any name, and the changes operators make, on a real store with bcrypt at cost 4."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server import admin
from server.admin import AmbiguousUser, NoSuchUser
from server.domain import InvalidField, PasswordTooLong, PasswordTooShort, User, UserStore
from server.hashing import PasswordHasher
from server.security import build_new_user, check_password, new_user_id, password_bytes
from server.storage.sqlite import open_store

OLD_PASSWORD = "old-password"
NEW_PASSWORD = "new-password"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[UserStore]:
    async with open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    pool = PasswordHasher(rounds=4, workers=1)
    yield pool
    pool.close()


async def add(
    store: UserStore,
    hasher: PasswordHasher,
    username: str,
    email: str | None = None,
    scope: tuple[str, ...] = ("user",),
    user_id: str | None = None,
) -> User:
    email = email or f"{username}@example.com"
    user = build_new_user(username, email, await hasher.hash(password_bytes(OLD_PASSWORD)), scope, "free")
    return await store.add(user if user_id is None else dataclasses.replace(user, id=user_id))


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs]


# Finding a user.


@pytest.mark.parametrize("name", ["Alice", "alice", "  ALICE ", "alice@example.com", " Alice@EXAMPLE.com"])
async def test_a_user_is_found_by_username_or_email_in_any_case(
    store: UserStore, hasher: PasswordHasher, name: str
) -> None:
    alice = await add(store, hasher, "Alice")
    await add(store, hasher, "bob")
    assert await admin.find_user(store, name) == alice


async def test_a_user_is_found_by_id_in_either_case(store: UserStore, hasher: PasswordHasher) -> None:
    alice = await add(store, hasher, "alice")
    assert await admin.find_user(store, alice.id) == alice
    assert await admin.find_user(store, f" {alice.id.upper()} ") == alice


@pytest.mark.parametrize("name", ["nobody", "", "   ", "nobody@example.com", "0" * 24])
async def test_an_unknown_name_is_no_such_user(store: UserStore, hasher: PasswordHasher, name: str) -> None:
    await add(store, hasher, "alice")
    with pytest.raises(NoSuchUser) as raised:
        await admin.find_user(store, name)
    assert raised.value.message == f"no user matches {name!r}"


async def test_a_username_that_is_also_its_own_email_is_one_user(store: UserStore, hasher: PasswordHasher) -> None:
    user = await add(store, hasher, "abc@example.com", "abc@example.com")
    assert await admin.find_user(store, "ABC@example.com") == user


async def test_a_name_that_fits_two_users_is_refused(store: UserStore, hasher: PasswordHasher) -> None:
    first = await add(store, hasher, "shared@example.com", "first@example.com")
    second = await add(store, hasher, "second", "shared@example.com")
    with pytest.raises(AmbiguousUser) as raised:
        await admin.find_user(store, "shared@example.com")
    assert first.id in raised.value.message
    assert second.id in raised.value.message
    assert await admin.find_user(store, first.id) == first


async def test_a_username_that_looks_like_another_users_id_is_refused(store: UserStore, hasher: PasswordHasher) -> None:
    target = await add(store, hasher, "target")
    await add(store, hasher, target.id, "lookalike@example.com")
    with pytest.raises(AmbiguousUser):
        await admin.find_user(store, target.id)


# Listing.


async def test_list_users_pages_through_the_store(store: UserStore, hasher: PasswordHasher) -> None:
    users = sorted([await add(store, hasher, f"user{n}") for n in range(3)], key=lambda user: user.id)
    admin_user = await add(store, hasher, "root", scope=("admin",))
    assert await admin.list_users(store, limit=2) == sorted([*users, admin_user], key=lambda user: user.id)[:2]
    assert await admin.list_users(store, scope="admin") == [admin_user]
    assert await admin.list_users(store, scope="user", after=users[0].id) == users[1:]


def test_created_at_is_the_time_in_the_id() -> None:
    moment = datetime(2026, 11, 28, 4, 56, 40, tzinfo=UTC)
    user = User(new_user_id(moment.timestamp()), "u", "u@example.com", ("user",), "free", False, "hash")
    assert admin.created_at(user) == moment


# Changing a password.


async def test_change_password_stores_a_new_hash_at_the_hashers_cost(store: UserStore, hasher: PasswordHasher) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs:
        await admin.change_password(store, hasher, alice, NEW_PASSWORD, min_length=6, via="cli")
    stored = await store.get_by_id(alice.id)
    assert stored is not None
    assert stored.password_hash.startswith("$2b$04$")
    assert check_password(password_bytes(NEW_PASSWORD), stored.password_hash)
    assert not check_password(password_bytes(OLD_PASSWORD), stored.password_hash)
    assert stored == dataclasses.replace(alice, password_hash=stored.password_hash)
    assert logs == [{"event": "user.password_changed", "user_id": alice.id, "via": "cli", "log_level": "info"}]


async def test_a_new_password_is_normalised_like_a_signup_password(store: UserStore, hasher: PasswordHasher) -> None:
    alice = await add(store, hasher, "alice")
    await admin.change_password(store, hasher, alice, "ｐａｓｓｗｏｒｄ", min_length=6, via="cli")  # noqa: RUF001
    stored = await store.get_by_id(alice.id)
    assert stored is not None
    assert check_password(password_bytes("password"), stored.password_hash)


@pytest.mark.parametrize(
    ("password", "min_length", "error"),
    [
        ("abc", 6, PasswordTooShort),
        ("eight-ch", 10, PasswordTooShort),
        ("x" * 73, 6, PasswordTooLong),
        ("é" * 37, 6, PasswordTooLong),  # 74 bytes in UTF-8
    ],
)
async def test_a_password_the_signup_rules_refuse_changes_nothing(
    store: UserStore, hasher: PasswordHasher, password: str, min_length: int, error: type[Exception]
) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs, pytest.raises(error):
        await admin.change_password(store, hasher, alice, password, min_length=min_length, via="cli")
    assert await store.get_by_id(alice.id) == alice
    assert logs == []


# Changing scopes.


async def test_change_scope_replaces_the_scopes_and_logs_both(store: UserStore, hasher: PasswordHasher) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs:
        changed = await admin.change_scope(store, alice, ["admin", "user", "admin"], via="cli")
    assert changed == dataclasses.replace(alice, scope=("admin", "user"))
    assert await store.get_by_id(alice.id) == changed
    assert logs == [
        {
            "event": "user.scope_changed",
            "user_id": alice.id,
            "scope": ["admin", "user"],
            "previous_scope": ["user"],
            "via": "cli",
            "log_level": "info",
        }
    ]


@pytest.mark.parametrize("scope", [[], ["bad scope"], ["admin", ""], ["x" * 65]])
async def test_an_invalid_scope_changes_nothing(store: UserStore, hasher: PasswordHasher, scope: list[str]) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs, pytest.raises(InvalidField):
        await admin.change_scope(store, alice, scope, via="cli")
    assert await store.get_by_id(alice.id) == alice
    assert logs == []


# Removing a user.


async def test_remove_user_deletes_and_logs(store: UserStore, hasher: PasswordHasher) -> None:
    alice = await add(store, hasher, "alice")
    bob = await add(store, hasher, "bob")
    with capture_logs() as logs:
        await admin.remove_user(store, alice, via="cli")
    assert await store.get_by_id(alice.id) is None
    assert await store.get_by_id(bob.id) == bob
    assert logs == [{"event": "user.deleted", "user_id": alice.id, "via": "cli", "log_level": "info"}]


async def test_a_user_removed_meanwhile_is_no_such_user_for_every_change(
    store: UserStore, hasher: PasswordHasher
) -> None:
    alice = await add(store, hasher, "alice")
    await store.delete(alice.id)
    with capture_logs() as logs:
        with pytest.raises(NoSuchUser, match=alice.id):
            await admin.change_password(store, hasher, alice, NEW_PASSWORD, min_length=6, via="cli")
        with pytest.raises(NoSuchUser, match=alice.id):
            await admin.change_scope(store, alice, ["admin"], via="cli")
        with pytest.raises(NoSuchUser, match=alice.id):
            await admin.remove_user(store, alice, via="cli")
    assert logs == []
    assert await store.list_users() == []
