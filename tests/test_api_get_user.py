"""GET /user and bearer tokens through HTTP: every kind of bad token is one 401."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.security import new_user_id
from server.web.bodies import JsonMemo
from tests.conftest import JWT_SECRET, ClientFactory, bearer, create_admin, sign_up


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], alg: str = "none") -> str:
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}."


async def user_id_of(client: TestClient[Any, Any], token: str) -> str:
    user_id: str = (await (await client.get("/user", headers=bearer(token))).json())["id"]
    return user_id


async def test_get_user_returns_the_seed_shape(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client, username="tomas@client.io", email="tomas@client.io")
    response = await client.get("/user", headers=bearer(token))
    assert response.status == 200
    body = await response.json()
    assert list(body) == ["id", "username", "isActive", "email", "scope", "plan"]
    assert body["username"] == "tomas@client.io"
    assert body["scope"] == ["user"]


async def test_get_user_shows_the_user_as_changed_since_the_last_answer(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client, username="nora", email="nora@example.com")
    before = await (await client.get("/user", headers=bearer(token))).json()
    again = await (await client.get("/user", headers=bearer(token))).json()
    admin = bearer(await create_admin(client))
    change = {"plan": "pro", "metadata": {"team": "blue"}, "username": "Nora B"}
    assert (await client.put(f"/users/{before['id']}", json=change, headers=admin)).status == 200
    after = await (await client.get("/user", headers=bearer(token))).json()
    assert again == before
    assert after == {**before, "plan": "pro", "username": "Nora B", "metadata": {"team": "blue"}}


def test_the_json_memo_serialises_each_record_once_and_forgets_beyond_its_size() -> None:
    rendered: list[dict[str, str]] = []

    def render(record: dict[str, str]) -> dict[str, str]:
        rendered.append(record)
        return record

    memo: JsonMemo[dict[str, str]] = JsonMemo(render, size=2)
    first, second, third = {"n": "1"}, {"n": "2"}, {"n": "1"}  # the third equals the first: another record
    bodies = [memo.response(record).body for record in (first, first, second, third, first)]
    assert bodies == [b'{"n":"1"}', b'{"n":"1"}', b'{"n":"2"}', b'{"n":"1"}', b'{"n":"1"}']
    # first once, second once, third (a new identity, beyond the size: all forgotten), first again
    assert [id(record) for record in rendered] == [id(first), id(second), id(third), id(first)]
    assert memo.response(first).content_type == "application/json"


async def test_bearer_scheme_is_case_insensitive(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client)
    response = await client.get("/user", headers={"Authorization": f"bearer {token}"})
    assert response.status == 200


async def test_no_token_gives_401(client: TestClient[Any, Any]) -> None:
    response = await client.get("/user")
    assert response.status == 401
    assert (await response.json())["code"] == "authentication_required"


async def test_token_in_query_string_is_ignored(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client)
    for name in ("token", "access_token"):
        response = await client.get("/user", params={name: token})
        assert response.status == 401


def _bad_tokens(user_id: str) -> dict[str, str]:
    now = int(time.time())
    good = {"id": user_id, "scope": ["user"], "iat": now, "exp": now + 600}
    signed = jwt.encode(good, JWT_SECRET, algorithm="HS256")
    header, payload, signature = signed.split(".")
    tampered_payload = _b64({**good, "scope": ["admin"]})
    return {
        "expired": jwt.encode({**good, "iat": now - 7200, "exp": now - 3600}, JWT_SECRET, algorithm="HS256"),
        "wrong_key": jwt.encode(good, "another-secret-that-is-also-32-bytes-long!", algorithm="HS256"),
        "alg_none": unsigned_token(good),
        "alg_NoNe": unsigned_token(good, alg="NoNe"),
        "hs512": jwt.encode(good, JWT_SECRET, algorithm="HS512"),
        "tampered": f"{header}.{tampered_payload}.{signature}",
        "truncated_signature": f"{header}.{payload}.{signature[:-4]}",
        "no_exp": jwt.encode({"id": user_id, "scope": ["user"], "iat": now}, JWT_SECRET, algorithm="HS256"),
        "no_iat": jwt.encode({"id": user_id, "scope": ["user"], "exp": now + 60}, JWT_SECRET, algorithm="HS256"),
        "string_exp": jwt.encode({**good, "exp": "tomorrow"}, JWT_SECRET, algorithm="HS256"),
        "future_iat": jwt.encode({**good, "iat": now + 3600, "exp": now + 7200}, JWT_SECRET, algorithm="HS256"),
        "numeric_id": jwt.encode({**good, "id": 12345}, JWT_SECRET, algorithm="HS256"),
        "unknown_user": jwt.encode({**good, "id": new_user_id()}, JWT_SECRET, algorithm="HS256"),
        "garbage": "not-a-token",
        "empty": "",
        "three_dots": "...",
        "non_ascii": "\u00e9t\u00e9.\u00e9t\u00e9.\u00e9t\u00e9",
    }


async def test_every_bad_token_gives_the_same_401(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client)
    user_id = await user_id_of(client, token)
    bodies = {}
    for name, bad in _bad_tokens(user_id).items():
        response = await client.get("/user", headers={"Authorization": f"Bearer {bad}"})
        assert response.status == 401, name
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        bodies[name] = await response.read()
    assert len(set(bodies.values())) == 1, bodies
    assert json.loads(next(iter(bodies.values())))["code"] == "invalid_token"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "Bearer a b c"])
async def test_malformed_authorization_headers_give_401(client: TestClient[Any, Any], header: str) -> None:
    response = await client.get("/user", headers={"Authorization": header})
    assert response.status == 401
    assert (await response.json())["code"] == "invalid_token"


@pytest.mark.parametrize(("method", "path"), [("POST", "/user"), ("POST", "/user/auth"), ("GET", "/openapi.json")])
async def test_an_invalid_token_gives_401_on_open_endpoints_too(
    client: TestClient[Any, Any], method: str, path: str
) -> None:
    response = await client.request(
        method, path, json={"username": "a", "email": "a@example.com", "password": "abc321"}, headers=bearer("x.y.z")
    )
    assert response.status == 401


async def test_a_valid_token_is_accepted_on_open_endpoints(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client)
    response = await client.get("/openapi.json", headers=bearer(token))
    assert response.status == 200


async def test_token_survives_a_restart_with_a_generated_secret(make_client: ClientFactory) -> None:
    first = await make_client(jwt_secret=None)
    token = await sign_up(first)
    await first.close()
    second = await make_client(jwt_secret=None)
    assert (await second.get("/user", headers=bearer(token))).status == 200


async def test_token_from_another_secret_is_refused(make_client: ClientFactory) -> None:
    first = await make_client(jwt_secret="a" * 32)
    token = await sign_up(first)
    await first.close()
    second = await make_client(jwt_secret="b" * 32)
    assert (await second.get("/user", headers=bearer(token))).status == 401


async def test_token_lifetime_is_configurable(make_client: ClientFactory) -> None:
    client = await make_client(jwt_token_exp=3600)
    token = await sign_up(client)
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600
