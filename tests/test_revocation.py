"""Exact revocation: tokens carry the user's token_version (claim ``ver``), and a token is accepted only while
its version is the stored one.

For each revoking event (change-password, logout, an admin setting the password or resetting it, a reset by
code, deletion), a token taken just before is refused on
the very next request and the fresh one accepted, also when both are issued in the same second (the app's
wall clock is a fake that does not move). A revocation made through another store connection (the admin
command line, another server) is seen within the user cache's recheck, and a token that another process
issued after its revocation is accepted at once.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.domain import InvalidToken
from server.security import TokenCodec
from server.storage.sqlite import open_store
from server.web.keys import STORE
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, FakeClock, bearer, create_admin, sign_up
from tests.test_api_forgot_password import Receiver, code_for, with_webhook
from tests.test_api_forgot_password import receiver as receiver  # the fixture, for the reset by code

NEW_PASSWORD = "new-pw-4b9e17"
USER_ID = "65f1c0de0123456789abcdef"


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    return decoded


async def status_of(client: TestClient[Any, Any], token: str) -> int:
    response = await client.get("/user", headers=bearer(token))
    if response.status == 401:
        assert (await response.json())["code"] == "invalid_token"
    return response.status


async def sign_in(client: TestClient[Any, Any], password: str = PASSWORD) -> str:
    response = await client.post("/user/auth", json={"username": "alice", "password": password})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    return token


async def alice(client: TestClient[Any, Any]) -> str:
    """Alice signs up; her token is used once, so that it and she are remembered by the server's caches."""
    token = await sign_up(client, username="alice", email="alice@example.com")
    assert await status_of(client, token) == 200
    return token


# The claim


def test_the_version_travels_in_the_ver_claim() -> None:
    codec = TokenCodec(JWT_SECRET.encode(), 3600)
    assert "ver" not in claims(codec.issue(USER_ID, ("user",)))  # version 0: the contract's four claims only
    assert codec.verify(codec.issue(USER_ID, ("user",))).version == 0
    token = codec.issue(USER_ID, ("user",), version=7)
    assert claims(token)["ver"] == 7
    assert codec.verify(token).version == 7


@pytest.mark.parametrize("ver", ["1", 1.5, True, None, [1], -1])
def test_a_version_that_is_not_a_whole_number_is_malformed(ver: object) -> None:
    codec = TokenCodec(JWT_SECRET.encode(), 3600)
    token = codec.issue(USER_ID, ("user",))
    forged = jwt.encode({**claims(token), "ver": ver}, JWT_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as caught:
        codec.verify(forged)
    assert caught.value.reason == "malformed"


# Each revoking event, in one second


async def test_change_password_refuses_every_earlier_token_and_accepts_the_fresh_one(
    client: TestClient[Any, Any], wall_clock: FakeClock
) -> None:
    before = await alice(client)
    other_session = await sign_in(client)
    assert await status_of(client, other_session) == 200
    body = {"oldPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    response = await client.post("/user/change-password", json=body, headers=bearer(before))
    assert response.status == 200
    fresh = (await response.json())["token"]
    # One second for all three: only the version tells them apart.
    assert claims(before)["iat"] == claims(other_session)["iat"] == claims(fresh)["iat"] == int(wall_clock.now)
    assert claims(fresh)["ver"] == 1
    assert await status_of(client, before) == 401
    assert await status_of(client, other_session) == 401
    assert await status_of(client, fresh) == 200
    assert await status_of(client, await sign_in(client, NEW_PASSWORD)) == 200


async def test_logout_refuses_every_earlier_token_and_a_new_sign_in_is_accepted(
    client: TestClient[Any, Any], wall_clock: FakeClock
) -> None:
    before = await alice(client)
    other_session = await sign_in(client)
    response = await client.post("/user/logout", headers=bearer(before))
    assert response.status == 200
    assert await response.json() == {}
    assert await status_of(client, before) == 401
    assert await status_of(client, other_session) == 401
    after = await sign_in(client)
    assert claims(before)["iat"] == claims(after)["iat"] == int(wall_clock.now)
    assert await status_of(client, after) == 200
    # Logging out again revokes that one too, and a revoked token cannot log out.
    assert (await client.post("/user/logout", headers=bearer(after))).status == 200
    assert await status_of(client, after) == 401
    assert (await client.post("/user/logout", headers=bearer(after))).status == 401


async def test_a_revoked_token_cannot_change_the_password(client: TestClient[Any, Any]) -> None:
    before = await alice(client)
    assert (await client.post("/user/logout", headers=bearer(await sign_in(client)))).status == 200
    body = {"oldPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    response = await client.post("/user/change-password", json=body, headers=bearer(before))
    assert response.status == 401
    assert await status_of(client, await sign_in(client)) == 200  # the password is unchanged


async def test_a_token_with_a_version_the_user_never_had_is_refused(client: TestClient[Any, Any]) -> None:
    token = await alice(client)
    ahead = jwt.encode({**claims(token), "ver": 5}, JWT_SECRET, algorithm="HS256")
    assert await status_of(client, ahead) == 401
    assert await status_of(client, token) == 200


# Another process on the same database


async def test_a_revocation_through_another_connection_is_seen_within_the_recheck(
    make_client: ClientFactory, clock: FakeClock, settings: Any
) -> None:
    client = await make_client()
    token = await alice(client)
    user_id = claims(token)["id"]
    async with open_store(settings.data_dir) as other:  # its own connections, as the command line has
        assert await other.revoke_tokens(user_id) == 1
    clock.advance(1.0)  # CachedUserStore's recheck
    assert await status_of(client, token) == 401


async def test_a_token_issued_after_another_process_revoked_is_accepted_at_once(
    make_client: ClientFactory, settings: Any
) -> None:
    """The other process revokes and issues a fresh token: this server still remembers the user at the old
    version, and must read the user again rather than refuse the newer token (and then refuse the old one)."""
    client = await make_client()
    before = await alice(client)
    user_id = claims(before)["id"]
    async with open_store(settings.data_dir) as other:
        version = await other.revoke_tokens(user_id)
    assert version == 1
    fresh = TokenCodec(JWT_SECRET.encode(), 3600).issue(user_id, ("user",), version=version)
    assert await status_of(client, fresh) == 200  # the clock has not moved: the cache alone is stale
    assert await status_of(client, before) == 401


async def test_a_password_change_on_another_server_is_honoured_here_at_once(
    make_client: ClientFactory, settings: Any
) -> None:
    """Two servers on one database: a change on one gives a token the other accepts on its next request."""
    here = await make_client()
    there = await make_client()
    before = await alice(here)
    assert await status_of(there, before) == 200  # both remember alice at version 0
    body = {"oldPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    response = await there.post("/user/change-password", json=body, headers=bearer(before))
    fresh = (await response.json())["token"]
    assert await status_of(here, fresh) == 200
    assert await status_of(here, before) == 401
    assert (await here.app[STORE].get_by_id(claims(fresh)["id"])).token_version == 1


# The events an admin or a reset code brings about, in one second too: the token taken just before is refused
# on the very next request, and one taken after (a sign-in with the new password) is accepted.


async def admin_and_alice(client: TestClient[Any, Any]) -> tuple[str, str, str]:
    """An admin's token, Alice's token (used once, so both she and it are cached) and Alice's id."""
    admin = await create_admin(client)
    before = await alice(client)
    return admin, before, claims(before)["id"]


async def test_an_admin_setting_the_password_refuses_earlier_tokens_in_the_same_second(
    client: TestClient[Any, Any], wall_clock: FakeClock
) -> None:
    admin, before, user_id = await admin_and_alice(client)
    response = await client.put(f"/users/{user_id}", json={"password": NEW_PASSWORD}, headers=bearer(admin))
    assert response.status == 200, await response.text()
    assert await status_of(client, before) == 401
    after = await sign_in(client, NEW_PASSWORD)
    assert claims(before)["iat"] == claims(after)["iat"] == int(wall_clock.now)
    assert await status_of(client, after) == 200


async def test_an_admin_change_without_a_password_keeps_the_tokens(client: TestClient[Any, Any]) -> None:
    admin, before, user_id = await admin_and_alice(client)
    response = await client.put(f"/users/{user_id}", json={"plan": "pro"}, headers=bearer(admin))
    assert response.status == 200
    assert await status_of(client, before) == 200


async def test_an_admin_reset_refuses_earlier_tokens_in_the_same_second(
    client: TestClient[Any, Any], wall_clock: FakeClock
) -> None:
    admin, before, _ = await admin_and_alice(client)
    body = {"email": "alice@example.com", "password": NEW_PASSWORD}
    response = await client.post("/user/reset-password", json=body, headers=bearer(admin))
    assert response.status == 200, await response.text()
    assert await status_of(client, before) == 401
    after = await sign_in(client, NEW_PASSWORD)
    assert claims(before)["iat"] == claims(after)["iat"] == int(wall_clock.now)
    assert await status_of(client, after) == 200


async def test_a_reset_by_code_refuses_earlier_tokens_in_the_same_second(
    make_client: ClientFactory, receiver: tuple[Receiver, str], wall_clock: FakeClock
) -> None:
    listener, url = receiver
    client = await with_webhook(make_client, url)
    before = await alice(client)
    code = await code_for(client, listener, "alice@example.com")
    response = await client.post("/user/forgot-password/reset", json={"code": code, "password": NEW_PASSWORD})
    assert response.status == 200, await response.text()
    assert await status_of(client, before) == 401
    after = await sign_in(client, NEW_PASSWORD)
    assert claims(before)["iat"] == claims(after)["iat"] == int(wall_clock.now)
    assert await status_of(client, after) == 200


async def test_deleting_a_user_refuses_their_tokens_at_once(client: TestClient[Any, Any]) -> None:
    admin, before, user_id = await admin_and_alice(client)
    response = await client.delete(f"/users/{user_id}", headers=bearer(admin))
    assert response.status == 200
    assert await status_of(client, before) == 401
    # A new user with the freed name is someone else: the old token names the deleted id and stays refused.
    await sign_up(client, username="alice", email="alice@example.com")
    assert await status_of(client, before) == 401
