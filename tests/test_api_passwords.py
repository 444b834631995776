"""A user's own password and sessions through HTTP: POST /user/change-password, POST /user/logout, and the
hash upgrade on sign-in when BCRYPT_ROUNDS changes (revocation itself: tests/test_revocation.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server import security
from server.domain import User, UserChanges
from server.hashing import PasswordHasher
from server.limits.memory import MemoryRateLimiter
from server.security import TokenCodec
from server.service import AuthService
from server.web.app import auth_policy
from server.web.keys import STORE
from tests.conftest import PASSWORD, ClientFactory, FakeClock, bearer, sign_up
from tests.fakes import FakeUserStore

NEW_PASSWORD = "new-pw-4b9e17"
WRONG = "wrong-password"
INVALID_CREDENTIALS = "Invalid username, email or password."


def error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": message, "message": message, "statusCode": status, "code": code}


async def change(client: TestClient[Any, Any], token: str, old: str = PASSWORD, new: str = NEW_PASSWORD) -> Any:
    return await client.post(
        "/user/change-password", json={"oldPassword": old, "newPassword": new}, headers=bearer(token)
    )


async def sign_in_status(client: TestClient[Any, Any], password: str) -> int:
    response = await client.post("/user/auth", json={"username": "alice", "password": password})
    return response.status


async def alice(client: TestClient[Any, Any]) -> str:
    return await sign_up(client, username="alice", email="alice@example.com")


async def stored(client: TestClient[Any, Any], username: str = "alice") -> User:
    user = await client.app[STORE].get_by_username(username)
    assert user is not None
    return user  # type: ignore[no-any-return]


# POST /user/change-password


async def test_change_password_answers_a_fresh_token_and_the_new_password_signs_in(
    client: TestClient[Any, Any],
) -> None:
    token = await alice(client)
    with capture_logs() as events:
        response = await change(client, token)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"token"}
    assert (await client.get("/user", headers=bearer(body["token"]))).status == 200
    assert await sign_in_status(client, PASSWORD) == 403
    assert await sign_in_status(client, NEW_PASSWORD) == 200
    user = await stored(client)
    changed = [e for e in events if e["event"] in {"user.password_changed", "tokens.revoked"}]
    assert changed == [
        {"event": "user.password_changed", "via": "self", "user_id": user.id, "log_level": "info"},
        {"event": "tokens.revoked", "via": "password_change", "user_id": user.id, "log_level": "info"},
    ]


async def test_change_password_writes_once_and_revokes_in_that_write(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await alice(client)
    store = client.app[STORE]
    writes: list[UserChanges] = []
    original = store.update

    async def update(user_id: str, changes: UserChanges, **kwargs: Any) -> User | None:
        writes.append(changes)
        updated: User | None = await original(user_id, changes, **kwargs)
        return updated

    monkeypatch.setattr(store, "update", update)
    assert (await change(client, token)).status == 200
    assert len(writes) == 1
    assert writes[0].revoke_tokens
    assert writes[0].password_hash is not None
    assert (await stored(client)).token_version == 1


async def test_a_wrong_old_password_is_403_and_changes_nothing(client: TestClient[Any, Any]) -> None:
    token = await alice(client)
    with capture_logs() as events:
        response = await change(client, token, old=WRONG)
    assert response.status == 403
    assert await response.json() == error(403, "invalid_credentials", INVALID_CREDENTIALS)
    assert (await client.get("/user", headers=bearer(token))).status == 200  # nothing revoked
    assert await sign_in_status(client, PASSWORD) == 200
    failed = [e for e in events if e["event"] == "user.signin.failed"]
    assert [(e["reason"], e["identified_by"]) for e in failed] == [("wrong_password", "token")]


async def test_wrong_old_passwords_share_the_accounts_sign_in_throttle(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    client = await make_client(user_signin_rate_limit_account=3)
    token = await alice(client)
    assert [(await change(client, token, old=WRONG)).status for _ in range(2)] == [403, 403]
    assert await sign_in_status(client, WRONG) == 403  # the third failure, by sign-in: one bucket
    refused = await change(client, token)  # even the right old password
    assert refused.status == 429
    message = "Too many failed sign-in attempts. Please try again later."
    assert await refused.json() == error(429, "signin_throttled", message)
    assert refused.headers["Retry-After"] == "1200"  # one token per 3600 s / 3
    assert await sign_in_status(client, PASSWORD) == 429
    clock.advance(1200)
    assert (await change(client, token)).status == 200


async def test_wrong_old_passwords_count_against_the_client_ip(make_client: ClientFactory) -> None:
    client = await make_client(user_signin_rate_limit_ip=2)
    token = await alice(client)
    bob = await sign_up(client, username="bob", email="bob@example.com")
    assert (await change(client, token, old=WRONG)).status == 403
    assert (await change(client, bob, old=WRONG)).status == 403
    refused = await change(client, bob)
    assert refused.status == 429
    assert (await refused.json())["code"] == "signin_throttled"


async def test_a_successful_change_refills_the_accounts_bucket(make_client: ClientFactory) -> None:
    client = await make_client(user_signin_rate_limit_account=2)
    token = await alice(client)
    assert (await change(client, token, old=WRONG)).status == 403
    token = (await (await change(client, token)).json())["token"]
    assert [(await change(client, token, old=WRONG, new=PASSWORD)).status for _ in range(3)] == [403, 403, 429]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"newPassword": NEW_PASSWORD}, "missing_field", "The oldPassword field is required."),
        ({"oldPassword": PASSWORD}, "missing_field", "The newPassword field is required."),
        (
            {"oldPassword": 123456, "newPassword": NEW_PASSWORD},
            "invalid_field",
            "The oldPassword field must be a string.",
        ),
        ({"oldPassword": PASSWORD, "newPassword": ["x"]}, "invalid_field", "The newPassword field must be a string."),
        ({"oldPassword": PASSWORD, "newPassword": "abc"}, "password_too_short", None),
        ({"oldPassword": PASSWORD, "newPassword": "é" * 37}, "password_too_long", None),
    ],
)
async def test_bad_bodies_are_400_and_take_nothing_from_the_throttle(
    make_client: ClientFactory, body: dict[str, Any], code: str, message: str | None
) -> None:
    client = await make_client(user_signin_rate_limit_account=1)
    token = await alice(client)
    response = await client.post("/user/change-password", json=body, headers=bearer(token))
    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == code
    assert answer["statusCode"] == 400
    assert answer["error"] == answer["message"]
    if message is not None:
        assert answer["message"] == message
    assert (await change(client, token)).status == 200  # the one token of the account's bucket is still there


async def test_the_new_password_follows_the_configured_minimum(make_client: ClientFactory) -> None:
    client = await make_client(password_min_length=12)
    token = await alice(client)
    response = await change(client, token, new="elevenchars")
    assert (await response.json()) == error(
        400, "password_too_short", "The password must be at least 12 characters long."
    )


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{", {"Content-Type": "application/json"}, 400),
        (b"[]", {"Content-Type": "application/json"}, 400),
        (b"{}", {"Content-Type": "text/plain"}, 415),
        (b"{" + b" " * 20000 + b"}", {"Content-Type": "application/json"}, 413),
    ],
    ids=["malformed", "not-an-object", "not-json", "too-large"],
)
async def test_unreadable_bodies_get_the_json_error_body(
    client: TestClient[Any, Any], data: bytes, headers: dict[str, str], status: int
) -> None:
    token = await alice(client)
    response = await client.post("/user/change-password", data=data, headers={**headers, **bearer(token)})
    assert response.status == status
    assert set(await response.json()) == {"error", "message", "statusCode", "code"}


@pytest.mark.parametrize("path", ["/user/change-password", "/user/logout"])
@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_without_a_valid_token_both_calls_are_401(
    client: TestClient[Any, Any], path: str, token: str | None
) -> None:
    headers = bearer(token) if token else {}
    response = await client.post(path, json={"oldPassword": PASSWORD, "newPassword": NEW_PASSWORD}, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    body = await response.json()
    assert body["code"] == ("invalid_token" if token else "authentication_required")
    assert body["statusCode"] == 401


# POST /user/logout


async def test_logout_answers_an_empty_object_and_logs_the_revocation(client: TestClient[Any, Any]) -> None:
    token = await alice(client)
    with capture_logs() as events:
        response = await client.post("/user/logout", headers=bearer(token))
    assert response.status == 200
    assert await response.json() == {}
    user = await stored(client)
    assert user.token_version == 1
    assert {"event": "tokens.revoked", "via": "logout", "user_id": user.id, "log_level": "info"} in events


async def test_logout_ignores_a_body(client: TestClient[Any, Any]) -> None:
    token = await alice(client)
    response = await client.post(
        "/user/logout", data=b"not json", headers={"Content-Type": "text/plain", **bearer(token)}
    )
    assert response.status == 200


# Hash upgrades on sign-in


def cost(password_hash: str) -> int:
    return int(password_hash[4:6])


async def test_sign_in_upgrades_a_hash_to_the_configured_cost_and_keeps_tokens(make_client: ClientFactory) -> None:
    old_server = await make_client(bcrypt_rounds=4)
    token = await alice(old_server)
    assert cost((await stored(old_server)).password_hash) == 4
    server = await make_client(bcrypt_rounds=5)  # the same database, restarted with a higher cost
    with capture_logs() as events:
        assert await sign_in_status(server, PASSWORD) == 200
    user = await stored(server)
    assert user.password_hash.startswith("$2b$05$")
    assert user.token_version == 0
    assert (await server.get("/user", headers=bearer(token))).status == 200  # tokens stay valid
    rehashed = [e for e in events if e["event"] == "user.password_rehashed"]
    assert rehashed == [
        {"event": "user.password_rehashed", "user_id": user.id, "from_cost": 4, "to_cost": 5, "log_level": "info"}
    ]
    with capture_logs() as events:
        assert await sign_in_status(server, PASSWORD) == 200  # already at the cost: nothing to do
        assert await sign_in_status(server, WRONG) == 403  # a failed sign-in never rehashes
    assert not [e for e in events if e["event"].startswith("user.password_rehash")]
    assert (await stored(server)).password_hash == user.password_hash


async def test_a_lower_cost_is_applied_too(make_client: ClientFactory) -> None:
    await alice(await make_client(bcrypt_rounds=5))
    server = await make_client(bcrypt_rounds=4)
    assert await sign_in_status(server, PASSWORD) == 200
    assert cost((await stored(server)).password_hash) == 4


@pytest.mark.parametrize("variant", ["2a", "2y"])
async def test_imported_2a_and_2y_hashes_sign_in_and_become_2b(client: TestClient[Any, Any], variant: str) -> None:
    await alice(client)
    user = await stored(client)
    imported = f"${variant}${user.password_hash[4:]}"  # the same hash, as another implementation writes it
    await client.app[STORE].update(user.id, UserChanges(password_hash=imported))
    assert await sign_in_status(client, WRONG) == 403
    assert (await stored(client)).password_hash == imported
    assert await sign_in_status(client, PASSWORD) == 200
    upgraded = (await stored(client)).password_hash
    assert upgraded.startswith("$2b$04$")
    assert upgraded != imported
    assert await sign_in_status(client, PASSWORD) == 200


async def test_the_upgrade_hashes_on_the_hashing_pool(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await alice(await make_client(bcrypt_rounds=5))
    server = await make_client(bcrypt_rounds=4)
    threads: list[str] = []
    original = security.hash_password

    def hash_password(password: bytes, rounds: int) -> str:
        threads.append(threading.current_thread().name)
        return original(password, rounds)

    monkeypatch.setattr(security, "hash_password", hash_password)
    assert await sign_in_status(server, PASSWORD) == 200
    assert len(threads) == 1
    assert threads[0].startswith("bcrypt")


class GatedHasher(PasswordHasher):
    """Holds every ``hash`` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(5, workers=2)
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def hash(self, password: bytes) -> str:
        self.started.set()
        await self.gate.wait()
        return await super().hash(password)


async def test_an_upgrade_never_overwrites_a_password_changed_meanwhile(settings: Any, clock: FakeClock) -> None:
    """The upgrade's hash is of the password just checked; if the password was replaced while it was computed,
    storing it would bring the old password back."""
    store = FakeUserStore()
    hasher = GatedHasher()
    service = AuthService(store, hasher, TokenCodec(b"k" * 32, 3600), MemoryRateLimiter(clock), auth_policy(settings))
    try:
        old_hash = security.hash_password(security.password_bytes(PASSWORD), 4)
        await store.add(security.build_new_user("alice", "alice@example.com", old_hash, ("user",), "free"))
        sign_in = asyncio.create_task(service.sign_in({"username": "alice", "password": PASSWORD}, "127.0.0.1"))
        await asyncio.wait_for(hasher.started.wait(), 10)  # a bound, so a missing upgrade fails, not hangs
        user_id = store.only_user().id
        new_hash = security.hash_password(security.password_bytes(NEW_PASSWORD), 5)
        await store.update(user_id, UserChanges(password_hash=new_hash, revoke_tokens=True))
        hasher.gate.set()
        await sign_in
        assert store.only_user().password_hash == new_hash
    finally:
        hasher.close()


async def test_of_two_concurrent_changes_with_one_token_one_wins(client: TestClient[Any, Any]) -> None:
    """The second finds its token revoked by the first: the user ends with one new password and one valid token."""
    token = await alice(client)
    first, second = await asyncio.gather(change(client, token), change(client, token, new="other-new-password"))
    assert sorted([first.status, second.status]) == [200, 401]
    winner = first if first.status == 200 else second
    assert (await client.get("/user", headers=bearer((await winner.json())["token"]))).status == 200
    assert (await stored(client)).token_version == 1
