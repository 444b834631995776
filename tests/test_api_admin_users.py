"""The admin user calls over HTTP: GET /users (filters, pattern, sort, paging, X-Total-Count), GET /users/count,
GET, PUT and DELETE /users/:id with the delete ticket, POST /user/reset-password; every success shape and
every error (400, 401, 403, 404, 409 including last_admin and look-alikes)."""

from __future__ import annotations

import re
import uuid
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.domain import NewUser, User
from server.security import build_new_user, check_password, hash_password, new_user_id, password_bytes
from server.web.keys import STORE
from tests.conftest import PASSWORD, ClientFactory, admin_token, bearer, create_admin, sign_up
from tests.test_openapi import Conformance, fetch_document

USER_OBJECT_FIELDS = ["id", "username", "email", "isActive", "scope", "plan", "vendor", "metadata", "created"]
CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# One hash for every seeded user: bcrypt at cost 4 a thousand times would be the whole test's time.
SEED_HASH = hash_password(password_bytes(PASSWORD), 4)
BASE_MS = 1_800_000_000_000
RESET = {"email": "bob@example.com", "password": "reset-pass-1"}
UNKNOWN = {**RESET, "email": "nobody@example.com"}


async def seed(client: TestClient[Any, Any], username: str, **fields: Any) -> User:
    """Add a user straight to the app's store; ``created`` (ms) and the other NewUser fields as given."""
    email = fields.pop("email", f"{username}@example.com")
    user = build_new_user(username, email, SEED_HASH, fields.pop("scope", ("user",)), "free")
    fields.setdefault("created", BASE_MS)
    if "user_id" in fields:
        fields["id"] = fields.pop("user_id")
    stored: User = await client.app[STORE].add(NewUser(**{**_fields(user), **fields}))
    return stored


def _fields(user: NewUser) -> dict[str, Any]:
    return {name: getattr(user, name) for name in NewUser.__slots__}


@pytest.fixture
async def admin(client: TestClient[Any, Any]) -> dict[str, str]:
    """Headers of the one admin (username admin-admin, created now)."""
    return bearer(await create_admin(client))


async def get_json(client: TestClient[Any, Any], path: str, headers: dict[str, str], status: int = 200) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return await response.json()


async def names(client: TestClient[Any, Any], query: str, headers: dict[str, str]) -> list[str]:
    body = await get_json(client, f"/users?{query}", headers)
    return [user["username"] for user in body]


def auth_events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    """The events a change logged, without the request's access line."""
    return [entry["event"] for entry in logs if entry["event"] != "http.request"]


def assert_error(body: dict[str, Any], status: int, code: str, *fragments: str) -> None:
    assert body["statusCode"] == status
    assert body["code"] == code
    assert body["error"] == body["message"]
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


# Who may call them.

ADMIN_CALLS = [
    ("GET", "/users"),
    ("GET", "/users/count"),
    ("GET", f"/users/{'0' * 24}"),
    ("PUT", f"/users/{'0' * 24}"),
    ("DELETE", f"/users/{'0' * 24}"),
    ("GET", f"/users/{'0' * 24}/delete-status/{uuid.uuid4()}"),
    ("POST", "/user/reset-password"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_every_admin_call_needs_an_admins_token(client: TestClient[Any, Any], method: str, path: str) -> None:
    body = {"plan": "pro"} if method == "PUT" else {"email": "a@example.com", "password": "whatever1"}
    kwargs: dict[str, Any] = {"json": body} if method in ("PUT", "POST") else {}
    response = await client.request(method, path, **kwargs)
    assert response.status == 401
    assert_error(await response.json(), 401, "authentication_required")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await client.request(method, path, headers={"Authorization": "Bearer nonsense"}, **kwargs)
    assert_error(await response.json(), 401, "invalid_token")
    user_token = await sign_up(client)
    response = await client.request(method, path, headers=bearer(user_token), **kwargs)
    assert response.status == 403
    assert_error(await response.json(), 403, "insufficient_scope")


async def test_scopes_are_read_from_the_store_not_the_token(client: TestClient[Any, Any]) -> None:
    user_token = await sign_up(client)
    user_id = (await get_json(client, "/user", bearer(user_token)))["id"]
    forged_scope = admin_token(user_id, ["admin"])  # validly signed, but the stored scope is user
    assert (await client.get("/users", headers=bearer(forged_scope))).status == 403


# GET /users.


async def test_list_users_is_a_bare_array_of_user_objects_newest_first(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    alice = await seed(client, "alice", created=BASE_MS + 1, vendor=("acme",), metadata={"tier": 1})
    response = await client.get("/users", headers=admin)
    assert response.status == 200
    assert response.headers["X-Total-Count"] == "2"
    assert response.content_type == "application/json"
    first, second = await response.json()
    assert list(first) == USER_OBJECT_FIELDS
    assert first == {
        "id": alice.id,
        "username": "alice",
        "email": "alice@example.com",
        "isActive": False,
        "scope": ["user"],
        "plan": "free",
        "vendor": ["acme"],
        "metadata": {"tier": 1},
        "created": "2027-01-15T08:00:00.001Z",
    }
    assert second["username"] == "admin-admin"  # created now, years before BASE_MS
    assert second["vendor"] == []
    assert second["metadata"] == {}
    assert CREATED.fullmatch(second["created"])
    assert "password" not in str(first)
    assert "$2b$" not in await response.text()


async def test_sort_ties_are_broken_by_id_ascending_in_either_direction(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    ids = sorted(new_user_id() for _ in range(4))
    for n, user_id in enumerate(reversed(ids)):
        await seed(client, f"tie{n}", user_id=user_id)  # the same created, ids added in reverse
    for sort in ("created:-1", "created:1"):
        body = await get_json(client, f"/users?sort={sort}&pattern=tie", admin)
        assert [user["id"] for user in body] == ids


async def test_sort_by_username_and_email_compares_their_keys(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    await seed(client, "Bravo")
    await seed(client, "alpha", email="zulu@example.com")
    await seed(client, "charlie", email="Alpha@example.com")
    assert await names(client, "sort=username:1&pattern=a", admin) == ["admin-admin", "alpha", "Bravo", "charlie"]
    assert await names(client, "sort=username:-1&pattern=a", admin) == ["charlie", "Bravo", "alpha", "admin-admin"]
    assert await names(client, "sort=email:1&pattern=a", admin) == ["admin-admin", "charlie", "Bravo", "alpha"]


async def test_paging_edges_and_the_total(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    for n in range(5):
        await seed(client, f"page{n}", created=BASE_MS + n)
    response = await client.get("/users?limit=1&offset=1&pattern=page", headers=admin)
    assert [user["username"] for user in await response.json()] == ["page3"]
    assert response.headers["X-Total-Count"] == "5"
    response = await client.get("/users?offset=5&pattern=page", headers=admin)
    assert await response.json() == []
    assert response.headers["X-Total-Count"] == "5"  # past the end: nothing, and still the total
    response = await client.get("/users?offset=1000000000000", headers=admin)
    assert (response.status, await response.json(), response.headers["X-Total-Count"]) == (200, [], "6")
    seen: list[str] = []
    for offset in range(0, 6, 2):
        seen += await names(client, f"limit=2&offset={offset}&sort=username:1", admin)
    assert seen == ["admin-admin", *(f"page{n}" for n in range(5))]


async def test_limit_defaults_to_100_and_goes_up_to_1000(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    store = client.app[STORE]
    for n in range(1000):
        user = build_new_user(f"bulk{n:04}", f"bulk{n:04}@example.com", SEED_HASH, ("user",), "free")
        await store.add(NewUser(**{**_fields(user), "created": BASE_MS + n}))
    response = await client.get("/users", headers=admin)
    assert len(await response.json()) == 100
    assert response.headers["X-Total-Count"] == "1001"
    response = await client.get("/users?limit=1000", headers=admin)
    body = await response.json()
    assert len(body) == 1000
    assert body[0]["username"] == "bulk0999"
    assert body[-1]["username"] == "bulk0000"  # the admin, oldest, is the 1001st
    assert len(await get_json(client, "/users?limit=1000&offset=1000", admin)) == 1


async def test_every_filter(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    await seed(client, "a1", scope=("user", "acme1"), plan="pro", is_active=True, vendor=("acme", "beta"))
    await seed(client, "a2", scope=("acme1",), plan="free", is_active=False, vendor=("beta",))
    await seed(client, "a3", scope=("user",), plan="pro", is_active=False)
    order = "&sort=username:1"
    assert await names(client, "filter=scope:acme1" + order, admin) == ["a1", "a2"]
    assert await names(client, "filter=scope:acme1&filter=scope:user" + order, admin) == ["a1"]
    assert await names(client, "filter=scope:acme" + order, admin) == []  # a whole scope name, not a prefix
    assert await names(client, "filter=scope:admin" + order, admin) == ["admin-admin"]
    assert await names(client, "filter=plan:pro" + order, admin) == ["a1", "a3"]
    assert await names(client, "filter=isActive:true" + order, admin) == ["a1"]
    assert await names(client, "filter=isActive:false&filter=plan:pro" + order, admin) == ["a3"]
    assert await names(client, "filter=vendor:beta" + order, admin) == ["a1", "a2"]
    assert await names(client, "filter=vendor:beta&filter=scope:user" + order, admin) == ["a1"]
    assert await names(client, "filter=plan:free&pattern=A" + order, admin) == ["a2", "admin-admin"]
    assert await names(client, "filter=plan:a:b" + order, admin) == []  # the value is all after the first colon
    response = await client.get("/users?filter=vendor:beta&limit=1", headers=admin)
    assert response.headers["X-Total-Count"] == "2"


async def test_pattern_is_a_literal_case_insensitive_substring(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    for username in ("100%_sure", "100x_sure", "1000 sure", "Straße", "dot.name"):
        await seed(client, username)
    order = "&sort=username:1"
    assert await names(client, "pattern=%25" + order, admin) == ["100%_sure"]
    assert await names(client, "pattern=0%25_" + order, admin) == ["100%_sure"]
    assert await names(client, "pattern=_" + order, admin) == ["100%_sure", "100x_sure"]
    assert await names(client, "pattern=." + order, admin) == ["dot.name"]
    assert await names(client, "pattern=.*" + order, admin) == []
    assert await names(client, "pattern=STRASSE" + order, admin) == ["Straße"]  # keys are case-folded
    assert await names(client, "pattern=" + order, admin) == sorted(
        ["100%_sure", "100x_sure", "1000 sure", "Straße", "dot.name", "admin-admin"], key=str.casefold
    )


BAD_PARAMETERS = [
    ("filter=scope", "filter"),
    ("filter=scope:", "filter"),
    ("filter=name:alice", "filter"),
    ("filter=isActive:yes", "filter"),
    ("filter=plan:" + "x" * 257, "filter"),
    ("sort=username", "sort"),
    ("sort=username:0", "sort"),
    ("sort=password:1", "sort"),
    ("sort=created:1&sort=email:1", "sort"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("limit=-1", "limit"),
    ("limit=%2B5", "limit"),
    ("limit=", "limit"),
    ("offset=-1", "offset"),
    ("offset=1.5", "offset"),
    ("offset=99999999999999", "offset"),
    ("pattern=" + "x" * 513, "pattern"),
]


@pytest.mark.parametrize(("query", "parameter"), BAD_PARAMETERS)
async def test_a_malformed_parameter_is_400_naming_it(
    client: TestClient[Any, Any], admin: dict[str, str], query: str, parameter: str
) -> None:
    response = await client.get(f"/users?{query}", headers=admin)
    assert response.status == 400
    assert_error(await response.json(), 400, "invalid_parameter", f"The {parameter} parameter")


async def test_unknown_parameters_are_ignored(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    response = await client.get("/users?page=2&projection=username&q=%ff", headers=admin)
    assert response.status == 200
    assert len(await response.json()) == 1


async def test_odd_bytes_in_the_query_are_not_a_500(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    for query in ("pattern=%ff%fe", "filter=plan:%00", "pattern=%ed%a0%80", "sort=%ff:1", "filter=%ff:x"):
        response = await client.get(f"/users?{query}", headers=admin)
        assert response.status in (200, 400), query
        assert (await client.get(f"/users/count?{query}", headers=admin)).status in (200, 400)


# GET /users/count.


async def test_count_takes_filters_and_pattern(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    await seed(client, "alice", plan="pro")
    await seed(client, "bob", plan="pro")
    assert await get_json(client, "/users/count", admin) == {"count": 3}
    assert await get_json(client, "/users/count?filter=plan:pro", admin) == {"count": 2}
    assert await get_json(client, "/users/count?filter=plan:pro&pattern=LI", admin) == {"count": 1}
    # sort, limit and offset mean nothing to a count, and are ignored like any parameter it does not know
    assert await get_json(client, "/users/count?limit=1&offset=9&sort=x", admin) == {"count": 3}
    body = await get_json(client, "/users/count?filter=colour:red", admin, status=400)
    assert_error(body, 400, "invalid_parameter", "filter")


# GET /users/:id.


async def test_get_a_user_by_id(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    alice = await seed(client, "alice", metadata={"a": [1, 2]})
    body = await get_json(client, f"/users/{alice.id}", admin)
    assert list(body) == USER_OBJECT_FIELDS
    assert (body["id"], body["username"], body["metadata"]) == (alice.id, "alice", {"a": [1, 2]})


@pytest.mark.parametrize("user_id", ["0" * 24, "not-an-id", "0" * 25, "ABCDEF" * 4, "%C3%A9", "count-me"])
async def test_an_unknown_or_malformed_id_is_404(
    client: TestClient[Any, Any], admin: dict[str, str], user_id: str
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"plan": "pro"}} if method == "PUT" else {}
        response = await client.request(method, f"/users/{user_id}", headers=admin, **kwargs)
        assert response.status == 404
        assert_error(await response.json(), 404, "user_not_found")


# PUT /users/:id.


async def test_put_changes_each_field_and_answers_the_user_object(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    alice = await seed(client, "alice", metadata={"old": True})
    body = {
        "scope": ["user", "acme1", "user"],
        "vendor": "acme",
        "metadata": {"new": 1},
        "email": "Alice.New@Example.com",
        "username": "Alice New",
        "isActive": True,
        "plan": "pro",
    }
    with capture_logs() as logs:
        response = await client.put(f"/users/{alice.id}", json=body, headers=admin)
    assert response.status == 200, await response.text()
    updated = await response.json()
    assert updated == {
        "id": alice.id,
        "username": "Alice New",
        "email": "Alice.New@Example.com",
        "isActive": True,
        "scope": ["user", "acme1"],
        "plan": "pro",
        "vendor": ["acme"],
        "metadata": {"new": 1},
        "created": "2027-01-15T08:00:00.000Z",
    }
    assert await get_json(client, f"/users/{alice.id}", admin) == updated
    (event,) = [entry for entry in logs if entry["event"] == "user.updated"]
    assert event["fields"] == ["username", "email", "scope", "vendor", "plan", "metadata", "isActive"]
    assert event["via"] == "admin"
    assert "Alice New" not in str(event)  # names, never values
    assert "'pro'" not in str(event)
    vendors = await client.put(f"/users/{alice.id}", json={"vendor": ["x", "y"], "metadata": {}}, headers=admin)
    assert ((await vendors.json())["vendor"], (await vendors.json())["metadata"]) == (["x", "y"], {})
    cleared = await client.put(f"/users/{alice.id}", json={"vendor": []}, headers=admin)
    assert (await cleared.json())["vendor"] == []


async def test_a_password_set_by_an_admin_follows_the_rules_and_revokes_tokens(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    token = await sign_up(client, "carol", "carol@example.com")
    user_id = (await get_json(client, "/user", bearer(token)))["id"]
    short = await client.put(f"/users/{user_id}", json={"password": "abc"}, headers=admin)
    assert_error(await short.json(), 400, "password_too_short")
    with capture_logs() as logs:
        response = await client.put(f"/users/{user_id}", json={"password": "brand-new-pass"}, headers=admin)
    assert response.status == 200
    stored = await client.app[STORE].get_by_id(user_id)
    assert stored is not None
    assert stored.token_version == 1  # every token issued before carries 0, and is refused
    assert check_password(password_bytes("brand-new-pass"), stored.password_hash)
    assert auth_events(logs) == ["user.updated", "user.password_changed", "tokens.revoked"]
    assert logs[1]["via"] == "admin"
    signed_in = await client.post("/user/auth", json={"username": "carol", "password": "brand-new-pass"})
    assert signed_in.status == 200


BAD_BODIES: list[tuple[Any, str, str]] = [
    ({"id": "0" * 24}, "invalid_field", "'id'"),
    ({"plan": "pro", "created": "x"}, "invalid_field", "'created'"),
    ({"password_hash": "x"}, "invalid_field", "'password_hash'"),
    ({}, "missing_field", "at least one field"),
    ({"scope": "admin"}, "invalid_field", "scope field must be a list"),
    ({"scope": [1]}, "invalid_field", "scope field must be a list"),
    ({"scope": []}, "invalid_field", "At least one scope"),
    ({"scope": ["Admin"]}, "invalid_field", "not a valid scope name"),
    ({"scope": ["x" * 65]}, "invalid_field", "not a valid scope name"),
    ({"scope": ["a.b"]}, "invalid_field", "not a valid scope name"),
    ({"vendor": 3}, "invalid_field", "vendor field"),
    ({"vendor": [""]}, "invalid_field", "vendor field"),
    ({"metadata": []}, "invalid_field", "metadata field must be a JSON object"),
    ({"metadata": None}, "invalid_field", "metadata field must be a JSON object"),
    ({"isActive": "true"}, "invalid_field", "isActive field must be true or false"),
    ({"isActive": 1}, "invalid_field", "isActive field must be true or false"),
    ({"plan": 5}, "invalid_field", "plan field must be a string"),
    ({"plan": "  "}, "invalid_field", "plan must be 1 to"),
    ({"email": None}, "invalid_field", "email field must be a string"),
    ({"email": "nope"}, "invalid_email", "not valid"),
    ({"username": ""}, "invalid_username", "must not be empty"),
    ({"username": "a\u200bb"}, "invalid_username", "invisible"),
    ({"password": "x" * 73}, "password_too_long", "72 bytes"),
    ([1], "invalid_body", "JSON object"),
]


@pytest.mark.parametrize(("body", "code", "fragment"), BAD_BODIES)
async def test_a_bad_put_body_is_400_and_changes_nothing(
    client: TestClient[Any, Any], admin: dict[str, str], body: Any, code: str, fragment: str
) -> None:
    alice = await seed(client, "alice")
    response = await client.put(f"/users/{alice.id}", json=body, headers=admin)
    assert response.status == 400
    assert_error(await response.json(), 400, code, fragment)
    assert await client.app[STORE].get_by_id(alice.id) == alice


async def test_a_bad_put_body_is_400_even_when_the_user_exists_not(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    json_type = {"Content-Type": "application/json"}
    response = await client.put(f"/users/{'0' * 24}", data=b"{not json", headers={**admin, **json_type})
    assert_error(await response.json(), 400, "malformed_body")
    response = await client.put(f"/users/{'0' * 24}", data=b"plan=pro", headers={**admin, "Content-Type": "text/plain"})
    assert_error(await response.json(), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"username": "BOB"}, "username_taken"),
        ({"username": " bob "}, "username_taken"),
        ({"username": "b\u043eb"}, "username_confusable"),  # a Cyrillic o
        ({"username": "adrnin-admin"}, "username_confusable"),  # rn looks like m
        ({"email": "BOB@example.com"}, "email_taken"),
        ({"email": "bob@EXAMPLE.COM", "plan": "pro"}, "email_taken"),
    ],
)
async def test_taken_and_look_alike_names_are_409(
    client: TestClient[Any, Any], admin: dict[str, str], body: dict[str, Any], code: str
) -> None:
    await seed(client, "bob")
    alice = await seed(client, "alice")
    response = await client.put(f"/users/{alice.id}", json=body, headers=admin)
    assert response.status == 409
    assert_error(await response.json(), 409, code)
    assert await client.app[STORE].get_by_id(alice.id) == alice


async def test_a_user_may_keep_or_recase_their_own_name(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    alice = await seed(client, "alice")
    body = {"username": "ALICE", "email": "Alice@Example.com"}
    response = await client.put(f"/users/{alice.id}", json=body, headers=admin)
    assert response.status == 200
    assert ((await response.json())["username"], (await response.json())["email"]) == ("ALICE", "Alice@Example.com")


async def test_the_last_admin_cannot_lose_admin_nor_be_deleted(client: TestClient[Any, Any]) -> None:
    token = await create_admin(client)
    admin = bearer(token)
    me = (await get_json(client, "/user", admin))["id"]
    response = await client.put(f"/users/{me}", json={"scope": ["user"]}, headers=admin)
    assert response.status == 409
    assert_error(await response.json(), 409, "last_admin")
    response = await client.delete(f"/users/{me}", headers=admin)
    assert_error(await response.json(), 409, "last_admin")
    assert (await get_json(client, f"/users/{me}", admin))["scope"] == ["admin"]
    other = await seed(client, "deputy", scope=("admin",))
    response = await client.put(f"/users/{me}", json={"scope": ["user"]}, headers=admin)
    assert response.status == 200
    assert (await client.get("/users", headers=admin)).status == 403  # no longer an admin, at once
    deputy = bearer(admin_token(other.id, ["admin"]))
    response = await client.delete(f"/users/{other.id}", headers=deputy)
    assert_error(await response.json(), 409, "last_admin")


# DELETE /users/:id and its ticket.


async def test_delete_answers_a_ticket_and_the_user_is_gone_at_once(
    client: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    token = await sign_up(client, "carol", "carol@example.com")
    user_id = (await get_json(client, "/user", bearer(token)))["id"]
    with capture_logs() as logs:
        response = await client.delete(f"/users/{user_id}", headers=admin)
    assert response.status == 200
    body = await response.json()
    assert list(body) == ["ticket"]
    assert uuid.UUID(body["ticket"]).version == 4
    assert auth_events(logs) == ["user.deleted"]
    assert (await client.get("/user", headers=bearer(token))).status == 401
    assert (await client.get(f"/users/{user_id}", headers=admin)).status == 404
    status = await get_json(client, f"/users/{user_id}/delete-status/{body['ticket']}", admin)
    assert status == {"status": "completed", "stepsDone": 1, "stepsTotal": 1}
    again = await client.delete(f"/users/{user_id}", headers=admin)
    assert_error(await again.json(), 404, "user_not_found")
    await sign_up(client, "carol", "carol@example.com")  # the name and the email are free again


async def test_an_unknown_ticket_is_404(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    alice, bob = await seed(client, "alice"), await seed(client, "bob")
    ticket = (await (await client.delete(f"/users/{alice.id}", headers=admin)).json())["ticket"]
    for path in (
        f"/users/{alice.id}/delete-status/{uuid.uuid4()}",
        f"/users/{bob.id}/delete-status/{ticket}",  # another user's ticket
        f"/users/{alice.id}/delete-status/not-a-ticket",
        f"/users/{alice.id}/delete-status/{'x' * 2000}",
    ):
        body = await get_json(client, path, admin, status=404)
        assert_error(body, 404, "delete_ticket_not_found")


# POST /user/reset-password.


async def test_reset_password_sets_it_and_revokes_tokens(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    token = await sign_up(client, "carol", "carol@example.com")
    user_id = (await get_json(client, "/user", bearer(token)))["id"]
    with capture_logs() as logs:
        response = await client.post(
            "/user/reset-password", json={"email": " CAROL@example.com ", "password": "reset-pass-1"}, headers=admin
        )
    assert response.status == 200
    assert await response.json() == {}
    stored = await client.app[STORE].get_by_id(user_id)
    assert stored is not None
    assert stored.token_version == 1
    assert auth_events(logs) == ["user.updated", "user.password_changed", "tokens.revoked"]
    assert "carol@example.com" not in str(logs).lower()
    signed_in = await client.post("/user/auth", json={"email": "carol@example.com", "password": "reset-pass-1"})
    assert signed_in.status == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"email": "nobody@example.com", "password": "reset-pass-1"}, 404, "user_not_found"),
        ({"email": "carol@example.com"}, 400, "missing_field"),
        ({"password": "reset-pass-1"}, 400, "missing_field"),
        ({"email": "carol@example.com", "password": "abc"}, 400, "password_too_short"),
        ({"email": "carol@example.com", "password": 123456}, 400, "invalid_field"),
        ({"email": ["carol@example.com"], "password": "reset-pass-1"}, 400, "invalid_field"),
        ({"email": "x" * 2000, "password": "reset-pass-1"}, 400, "invalid_email"),
    ],
)
async def test_reset_password_errors(
    client: TestClient[Any, Any], admin: dict[str, str], body: dict[str, Any], status: int, code: str
) -> None:
    await sign_up(client, "carol", "carol@example.com")
    before = await client.app[STORE].get_by_username("carol")
    response = await client.post("/user/reset-password", json=body, headers=admin)
    assert response.status == status
    assert_error(await response.json(), status, code)
    assert await client.app[STORE].get_by_username("carol") == before


# DEFAULT_USER_VENDOR.


async def test_new_users_get_the_default_vendor(make_client: ClientFactory) -> None:
    client = await make_client(default_user_vendor=("acme", "beta"))
    admin = bearer(await create_admin(client))
    token = await sign_up(client)
    user_id = (await get_json(client, "/user", bearer(token)))["id"]
    assert (await get_json(client, f"/users/{user_id}", admin))["vendor"] == ["acme", "beta"]
    assert await names(client, "filter=vendor:beta&sort=username:1", admin) == ["abc@example.com", "admin-admin"]


# The OpenAPI document (the schemathesis run in tests/test_fuzz_api.py fuzzes these calls too).


async def test_every_answer_matches_the_document(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    conformance = Conformance(await fetch_document(client))
    alice = await seed(client, "alice", vendor=("acme",))
    user = bearer(await sign_up(client, "bob", "bob@example.com"))
    me = (await get_json(client, "/user", admin))["id"]
    missing = "0" * 24
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("GET", "/users", "/users?filter=vendor:acme&sort=username:1&limit=5", {"headers": admin}),
        ("GET", "/users", "/users?limit=0", {"headers": admin}),
        ("GET", "/users", "/users", {}),
        ("GET", "/users", "/users", {"headers": user}),
        ("GET", "/users/count", "/users/count?pattern=li", {"headers": admin}),
        ("GET", "/users/count", "/users/count?filter=x", {"headers": admin}),
        ("GET", "/users/{id}", f"/users/{alice.id}", {"headers": admin}),
        ("GET", "/users/{id}", f"/users/{missing}", {"headers": admin}),
        ("PUT", "/users/{id}", f"/users/{alice.id}", {"headers": admin, "json": {"plan": "pro", "isActive": True}}),
        ("PUT", "/users/{id}", f"/users/{alice.id}", {"headers": admin, "json": {"colour": "red"}}),
        ("PUT", "/users/{id}", f"/users/{alice.id}", {"headers": admin, "json": {"username": "BOB"}}),
        ("PUT", "/users/{id}", f"/users/{me}", {"headers": admin, "json": {"scope": ["user"]}}),
        ("PUT", "/users/{id}", f"/users/{missing}", {"headers": admin, "json": {"plan": "pro"}}),
        ("POST", "/user/reset-password", "/user/reset-password", {"headers": admin, "json": RESET}),
        ("POST", "/user/reset-password", "/user/reset-password", {"headers": admin, "json": {"email": 1}}),
        (
            "POST",
            "/user/reset-password",
            "/user/reset-password",
            {"headers": admin, "json": UNKNOWN},
        ),
        ("DELETE", "/users/{id}", f"/users/{me}", {"headers": admin}),
        ("DELETE", "/users/{id}", f"/users/{missing}", {"headers": admin}),
        ("GET", "/users/{id}/delete-status/{ticket}", f"/users/{alice.id}/delete-status/x", {"headers": admin}),
    ]
    for method, template, path, kwargs in calls:
        await conformance.check(method, template, await client.request(method, path, **kwargs))
    deleted = await client.delete(f"/users/{alice.id}", headers=admin)
    await conformance.check("DELETE", "/users/{id}", deleted)
    ticket = (await deleted.json())["ticket"]
    status = await client.get(f"/users/{alice.id}/delete-status/{ticket}", headers=admin)
    await conformance.check("GET", "/users/{id}/delete-status/{ticket}", status)
    statuses = {
        "/users": {"200", "400", "401", "403"},
        "/users/count": {"200", "400"},
        "/users/{id}": {"200", "400", "404", "409"},
        "/user/reset-password": {"200", "400", "404"},
        "/users/{id}/delete-status/{ticket}": {"200", "404"},
    }
    seen = {(path, status) for _, path, status in conformance.seen}
    assert {(path, status) for path, codes in statuses.items() for status in codes} <= seen


async def test_signups_keep_their_millisecond_so_one_second_sorts_in_order(
    client: TestClient[Any, Any], admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    moments = iter([1_800_000_000.750, 1_800_000_000.250])  # one second; ids alone would order them at random
    monkeypatch.setattr("server.security.time", SimpleNamespace(time=lambda: next(moments)))
    await sign_up(client, "later", "later@example.com")
    await sign_up(client, "early", "early@example.com")
    body = await get_json(client, "/users?sort=created:1&filter=scope:user", admin)
    assert [(user["username"], user["created"]) for user in body] == [
        ("early", "2027-01-15T08:00:00.250Z"),
        ("later", "2027-01-15T08:00:00.750Z"),
    ]
    assert body[0]["id"][:8] == body[1]["id"][:8] == f"{1_800_000_000:08x}"


async def test_count_is_no_user_id_for_any_method(client: TestClient[Any, Any], admin: dict[str, str]) -> None:
    for method in ("PUT", "DELETE", "OPTIONS", "POST"):
        response = await client.request(method, "/users/count", headers=admin)
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
    response = await client.get("/users/count/delete-status/x", headers=admin)
    assert_error(await response.json(), 404, "delete_ticket_not_found")
