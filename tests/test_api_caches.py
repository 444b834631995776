"""The caches on the authenticated path (verified tokens, users by id) keep the contract exact.

A scope change, a deletion or an expiry made through the server is seen on the very next request; one
made by another process (the admin command line) within one second of the app's clock.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from server.domain import User, UserChanges
from server.storage.sqlite import open_store
from server.web.keys import STORE, USERS
from tests.conftest import JWT_SECRET, ClientFactory, FakeClock, bearer, create_admin, sign_up


async def current_user(client: Any, token: str) -> Any:
    response = await client.get("/user", headers=bearer(token))
    return response.status, (await response.json())


async def remembered(client: Any, token: str) -> User:
    """Load the user twice through GET /user, so that both the token and the user are cached."""
    for _ in range(2):
        status, body = await current_user(client, token)
        assert status == 200
    user = await client.app[STORE].get_by_id(body["id"])
    assert user is not None
    return user  # type: ignore[no-any-return]


async def test_a_scope_change_through_the_server_is_seen_on_the_next_request(make_client: ClientFactory) -> None:
    client = await make_client(api_user_create_scope=("provisioner",))
    token = await plain_user_created_by_a_provisioner(client)
    user = await remembered(client, token)
    body = {"username": "new", "email": "new@example.com", "password": "new-password"}
    assert (await client.post("/user", json=body, headers=bearer(token))).status == 403
    await client.app[USERS].set_scope(user.id, ["provisioner"], via="test")
    assert (await current_user(client, token))[1]["scope"] == ["provisioner"]
    assert (await client.post("/user", json=body, headers=bearer(token))).status == 200
    await client.app[USERS].set_scope(user.id, ["user"], via="test")
    body = {"username": "newer", "email": "newer@example.com", "password": "new-password"}
    assert (await client.post("/user", json=body, headers=bearer(token))).status == 403


async def plain_user_created_by_a_provisioner(client: Any) -> str:
    """A token for a plain user, created by a holder of the create scope (signup is restricted)."""
    admin_token = await create_admin(client, scope=("provisioner",))
    body = {"username": "plain", "email": "plain@example.com", "password": "plain-password"}
    response = await client.post("/user", json=body, headers=bearer(admin_token))
    assert response.status == 200
    return (await response.json())["token"]  # type: ignore[no-any-return]


async def test_a_deleted_user_is_refused_on_the_next_request(make_client: ClientFactory) -> None:
    client = await make_client()
    token = await sign_up(client)
    user = await remembered(client, token)
    await client.app[USERS].delete(user.id, via="test")
    status, body = await current_user(client, token)
    assert status == 401
    assert body["code"] == "invalid_token"


async def test_a_remembered_token_expires_on_the_next_request_after_its_exp(
    make_client: ClientFactory, wall_clock: FakeClock
) -> None:
    client = await make_client()
    user_id = (await current_user(client, await sign_up(client)))[1]["id"]
    now = int(time.time())
    token = jwt.encode({"id": user_id, "scope": ["user"], "iat": now, "exp": now + 100}, JWT_SECRET, algorithm="HS256")
    await remembered(client, token)
    wall_clock.now = now + 99.9
    assert (await current_user(client, token))[0] == 200
    wall_clock.now = now + 100
    status, body = await current_user(client, token)
    assert status == 401
    assert body["code"] == "invalid_token"


async def test_a_change_from_another_process_is_seen_within_a_second(
    make_client: ClientFactory, clock: FakeClock, settings: Any
) -> None:
    client = await make_client()
    token = await sign_up(client)
    user = await remembered(client, token)
    async with open_store(settings.data_dir) as other:  # its own connections, as the command line has
        await other.update(user.id, UserChanges(scope=("user", "billing")))
    clock.advance(1.0)
    assert (await current_user(client, token))[1]["scope"] == ["user", "billing"]
    async with open_store(settings.data_dir) as other:
        await other.delete(user.id)
    clock.advance(1.0)
    assert (await current_user(client, token))[0] == 401
