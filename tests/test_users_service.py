"""server.users: the user service both admin doors use, on a real store with bcrypt at cost 4: finding users by
any name, the changes operators make, the last-admin guard, revocation on a password set, look-alikes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.domain import (
    AmbiguousUser,
    EmailTaken,
    InvalidEmail,
    InvalidField,
    InvalidUsername,
    LastAdmin,
    NoSuchDeleteTicket,
    NoSuchUser,
    PasswordTooLong,
    PasswordTooShort,
    Rule,
    User,
    UsernameConfusable,
    UsernameTaken,
    UserStore,
)
from server.hashing import PasswordHasher
from server.security import build_new_user, check_password, password_bytes
from server.service import AuthPolicy
from server.storage.sqlite import open_store
from server.users import UserAdministration, UserCreation, UserListing, UserUpdate, pattern_key

OLD_PASSWORD = "old-password"
NEW_PASSWORD = "new-password"
_RULE = Rule("unused", 1, 1.0)
POLICY = AuthPolicy(_RULE, _RULE, _RULE, _RULE, default_vendor=("acme",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[UserStore]:
    async with open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    pool = PasswordHasher(rounds=4, workers=1)
    yield pool
    pool.close()


@pytest.fixture
def users(store: UserStore, hasher: PasswordHasher) -> UserAdministration:
    return UserAdministration(store, hasher, POLICY, wall_clock=lambda: 1_800_000_000.5)


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


# Finding a user (the command line names users by id, username or email).


@pytest.mark.parametrize("name", ["Alice", "alice", "  ALICE ", "alice@example.com", " Alice@EXAMPLE.com"])
async def test_a_user_is_found_by_username_or_email_in_any_case(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration, name: str
) -> None:
    alice = await add(store, hasher, "Alice")
    await add(store, hasher, "bob")
    assert await users.find(name) == alice


async def test_a_user_is_found_by_id_in_either_case(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    assert await users.find(alice.id) == alice
    assert await users.find(f" {alice.id.upper()} ") == alice


@pytest.mark.parametrize("name", ["nobody", "", "   ", "nobody@example.com", "0" * 24])
async def test_an_unknown_name_is_no_such_user(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration, name: str
) -> None:
    await add(store, hasher, "alice")
    with pytest.raises(NoSuchUser) as raised:
        await users.find(name)
    assert raised.value.message == f"no user matches {name!r}"
    assert (raised.value.status, raised.value.code) == (404, "user_not_found")


async def test_a_name_that_fits_two_users_is_refused(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    first = await add(store, hasher, "shared@example.com", "first@example.com")
    second = await add(store, hasher, "second", "shared@example.com")
    with pytest.raises(AmbiguousUser) as raised:
        await users.find("shared@example.com")
    assert first.id in raised.value.message
    assert second.id in raised.value.message
    assert (raised.value.status, raised.value.code) == (409, "user_ambiguous")
    assert await users.find(first.id) == first


async def test_a_username_that_looks_like_another_users_id_is_refused(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    target = await add(store, hasher, "target")
    await add(store, hasher, target.id, "lookalike@example.com")
    with pytest.raises(AmbiguousUser):
        await users.find(target.id)


@pytest.mark.parametrize("user_id", ["", "count", "0" * 23, "A" * 24, "0" * 25])
async def test_get_takes_only_a_well_formed_id(users: UserAdministration, user_id: str) -> None:
    with pytest.raises(NoSuchUser):
        await users.get(user_id)


# Listing.


async def test_page_lists_in_id_order_after_a_cursor(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    plain = sorted([await add(store, hasher, f"user{n}") for n in range(3)], key=lambda user: user.id)
    root = await add(store, hasher, "root", scope=("admin",))
    assert await users.page(limit=2) == sorted([*plain, root], key=lambda user: user.id)[:2]
    assert await users.page(scope="admin") == [root]
    assert await users.page(scope="user", after=plain[0].id) == plain[1:]


async def test_a_listing_pattern_is_keyed_like_usernames_but_not_trimmed(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    await add(store, hasher, "John Smith")
    await add(store, hasher, "Ｓｍｉｔｈｙ")  # noqa: RUF001 - full-width letters are keyed as ASCII
    await add(store, hasher, "blacksmith")
    assert pattern_key(" SMITH") == " smith"
    page = await users.list_users(UserListing(pattern="SMITH", sort="username", descending=False))
    assert [user.username for user in page.users] == ["blacksmith", "John Smith", "Ｓｍｉｔｈｙ"]  # noqa: RUF001
    assert page.total == 3
    assert await users.count_users(UserListing(pattern=" smith")) == 1


# Creating (create-user).


async def test_create_gives_the_default_vendor_and_checks_scope_names(
    users: UserAdministration, store: UserStore
) -> None:
    created = await users.create(UserCreation("alice", "alice@example.com", NEW_PASSWORD, ("admin", "user")), via="cli")
    assert (created.scope, created.vendor, created.plan) == (("admin", "user"), ("acme",), "free")
    with pytest.raises(InvalidField, match="not a valid scope name"):
        await users.create(UserCreation("bob", "bob@example.com", NEW_PASSWORD, ("Admin",)), via="cli")
    assert await store.get_by_username("bob") is None


# Setting a password: the signup rules, and every token revoked in the same write.


async def test_set_password_stores_a_new_hash_and_revokes_every_token(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs:
        changed = await users.set_password(alice.id, NEW_PASSWORD, via="cli")
    stored = await store.get_by_id(alice.id)
    assert stored == changed
    assert stored is not None
    assert stored.password_hash.startswith("$2b$04$")
    assert check_password(password_bytes(NEW_PASSWORD), stored.password_hash)
    assert not check_password(password_bytes(OLD_PASSWORD), stored.password_hash)
    assert stored.token_version == alice.token_version + 1
    assert stored == dataclasses.replace(alice, password_hash=stored.password_hash, token_version=1)
    assert logs == [
        {"event": "user.updated", "user_id": alice.id, "fields": ["password"], "via": "cli", "log_level": "info"},
        {"event": "user.password_changed", "user_id": alice.id, "via": "cli", "log_level": "info"},
        {
            "event": "tokens.revoked",
            "user_id": alice.id,
            "version": 1,
            "reason": "password_set",
            "via": "cli",
            "log_level": "info",
        },
    ]


async def test_a_new_password_is_normalised_like_a_signup_password(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    await users.set_password(alice.id, "ｐａｓｓｗｏｒｄ", via="cli")  # noqa: RUF001
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
    users = UserAdministration(store, hasher, dataclasses.replace(POLICY, password_min_length=min_length))
    with capture_logs() as logs, pytest.raises(error):
        await users.set_password(alice.id, password, via="cli")
    assert await store.get_by_id(alice.id) == alice
    assert logs == []


# Changing scopes, and the last-admin guard.


async def test_set_scope_replaces_the_scopes_and_logs_names_and_scopes(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs:
        changed = await users.set_scope(alice.id, ["admin", "user", "admin"], via="cli")
    assert changed == dataclasses.replace(alice, scope=("admin", "user"))
    assert await store.get_by_id(alice.id) == changed
    assert logs == [
        {"event": "user.updated", "user_id": alice.id, "fields": ["scope"], "via": "cli", "log_level": "info"},
        {
            "event": "user.scope_changed",
            "user_id": alice.id,
            "scope": ["admin", "user"],
            "previous_scope": ["user"],
            "via": "cli",
            "log_level": "info",
        },
    ]


@pytest.mark.parametrize("scope", [[], ["bad scope"], ["admin", ""], ["x" * 65], ["Admin"], ["admin:read"]])
async def test_an_invalid_scope_changes_nothing(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration, scope: list[str]
) -> None:
    alice = await add(store, hasher, "alice")
    with capture_logs() as logs, pytest.raises(InvalidField):
        await users.set_scope(alice.id, scope, via="cli")
    assert await store.get_by_id(alice.id) == alice
    assert logs == []


async def test_the_last_admin_keeps_the_admin_scope_and_is_not_deleted(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    root = await add(store, hasher, "root", scope=("admin", "user"))
    with capture_logs() as logs:
        with pytest.raises(LastAdmin):
            await users.set_scope(root.id, ["user"], via="admin")
        with pytest.raises(LastAdmin):
            await users.delete(root.id, via="admin")
    assert logs == []
    assert await store.get_by_id(root.id) == root
    second = await add(store, hasher, "second", scope=("admin",))
    assert (await users.set_scope(root.id, ["user"], via="admin")).scope == ("user",)
    with pytest.raises(LastAdmin):
        await users.delete(second.id, via="admin")
    assert await users.update(second.id, UserUpdate(plan="pro"), via="admin")  # no scope given: no guard needed


# Other changes: look-alikes, uniqueness, changed field names only.


async def test_update_refuses_taken_and_look_alike_names(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    await add(store, hasher, "admin", "root@example.com")
    bob = await add(store, hasher, "bob")
    for update, error in [
        (UserUpdate(username="ADMIN"), UsernameTaken),
        (UserUpdate(username="\u0430dmin"), UsernameConfusable),  # a Cyrillic a
        (UserUpdate(email="ROOT@example.com"), EmailTaken),
        (UserUpdate(email="not an address"), InvalidEmail),
        (UserUpdate(username="bob\u200b"), InvalidUsername),  # zero-width space
    ]:
        with pytest.raises(error):
            await users.update(bob.id, update, via="admin")
    assert await store.get_by_id(bob.id) == bob
    renamed = await users.update(bob.id, UserUpdate(username="Bob", email="BOB@example.com"), via="admin")
    assert (renamed.username, renamed.email) == ("Bob", "BOB@example.com")


async def test_user_updated_names_only_the_fields_that_changed(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    bob = await add(store, hasher, "bob")
    update = UserUpdate(plan="free", vendor=("acme", "acme"), metadata={"tier": 2}, is_active=True, scope=("user",))
    with capture_logs() as logs:
        changed = await users.update(bob.id, update, via="admin")
    assert (changed.vendor, changed.metadata, changed.is_active) == (("acme",), {"tier": 2}, True)
    assert logs == [
        {
            "event": "user.updated",
            "user_id": bob.id,
            "fields": ["vendor", "metadata", "isActive"],
            "via": "admin",
            "log_level": "info",
        }
    ]
    with capture_logs() as logs:
        await users.update(bob.id, update, via="admin")
    assert logs == []


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    "update",
    [
        UserUpdate(plan=" "),
        UserUpdate(plan="x" * 129),
        UserUpdate(plan="pro\u200b"),
        UserUpdate(vendor=("",)),
        UserUpdate(vendor=(" acme",)),
        UserUpdate(metadata=nested(17)),  # one level beyond the signup rule's bound
    ],
)
async def test_bad_values_change_nothing(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration, update: UserUpdate
) -> None:
    bob = await add(store, hasher, "bob")
    with pytest.raises(InvalidField):
        await users.update(bob.id, update, via="admin")
    assert await store.get_by_id(bob.id) == bob


# Deleting.


async def test_delete_removes_the_user_and_keeps_a_completed_ticket(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    bob = await add(store, hasher, "bob")
    with capture_logs() as logs:
        ticket = await users.delete(alice.id, via="cli")
    assert await store.get_by_id(alice.id) is None
    assert await store.get_by_id(bob.id) == bob
    assert (ticket.user_id, ticket.status, ticket.steps_done, ticket.steps_total) == (alice.id, "completed", 1, 1)
    assert ticket.updated == 1_800_000_000_500
    assert await users.delete_status(alice.id, ticket.id) == ticket
    assert logs == [
        {"event": "user.deleted", "user_id": alice.id, "ticket": ticket.id, "via": "cli", "log_level": "info"}
    ]
    with pytest.raises(NoSuchUser):
        await users.delete(alice.id, via="cli")


async def test_a_ticket_is_found_only_under_its_own_user(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    bob = await add(store, hasher, "bob")
    ticket = await users.delete(alice.id, via="admin")
    for user_id, ticket_id in [(bob.id, ticket.id), (alice.id, "nope"), (alice.id, "x" * 10_000)]:
        with pytest.raises(NoSuchDeleteTicket):
            await users.delete_status(user_id, ticket_id)


async def test_a_user_removed_meanwhile_is_no_such_user_for_every_change(
    store: UserStore, hasher: PasswordHasher, users: UserAdministration
) -> None:
    alice = await add(store, hasher, "alice")
    await store.delete(alice.id)
    with capture_logs() as logs:
        with pytest.raises(NoSuchUser):
            await users.set_password(alice.id, NEW_PASSWORD, via="cli")
        with pytest.raises(NoSuchUser):
            await users.set_scope(alice.id, ["admin"], via="cli")
        with pytest.raises(NoSuchUser):
            await users.delete(alice.id, via="cli")
    assert logs == []
    assert await store.list_users() == []
