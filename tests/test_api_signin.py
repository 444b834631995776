"""POST /user/auth through HTTP: the seed's shapes and the contract's failure rules."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import JWT_SECRET, PASSWORD, bearer, sign_up


async def test_sign_in_by_username_returns_the_seed_shape(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="abc@example.com", email="abc@example.com")
    response = await client.post("/user/auth", json={"username": "abc@example.com", "password": PASSWORD})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"user", "token"}
    assert set(body["user"]) == {"id", "username", "isActive", "email", "plan"}
    assert body["user"]["username"] == "abc@example.com"
    assert body["user"]["email"] == "abc@example.com"
    assert body["user"]["isActive"] is False
    assert body["user"]["plan"] == "free"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["id"] == body["user"]["id"]
    assert claims["scope"] == ["user"]
    assert claims["exp"] - claims["iat"] == 30 * 86400


async def test_sign_in_by_email_when_no_username_is_given(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="tomas", email="tomas@client.io")
    response = await client.post("/user/auth", json={"email": "tomas@client.io", "password": PASSWORD})
    assert response.status == 200
    assert (await response.json())["user"]["username"] == "tomas"


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "  TOMAS "},
        {"username": "Tomas"},
        {"email": " TOMAS@Client.IO  "},
        {"username": "", "email": "tomas@client.io"},
    ],
)
async def test_matching_ignores_case_and_surrounding_space(
    client: TestClient[Any, Any], credentials: dict[str, str]
) -> None:
    await sign_up(client, username="tomas", email="tomas@client.io")
    response = await client.post("/user/auth", json={**credentials, "password": PASSWORD})
    assert response.status == 200, await response.text()


async def test_username_wins_over_email_when_both_are_given(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="first", email="first@example.com")
    await sign_up(client, username="second", email="second@example.com")
    response = await client.post(
        "/user/auth", json={"username": "second", "email": "first@example.com", "password": PASSWORD}
    )
    assert (await response.json())["user"]["username"] == "second"


async def test_the_token_from_sign_in_works_on_get_user(client: TestClient[Any, Any]) -> None:
    await sign_up(client)
    response = await client.post("/user/auth", json={"email": "abc@example.com", "password": PASSWORD})
    token = (await response.json())["token"]
    me = await client.get("/user", headers=bearer(token))
    assert me.status == 200


async def test_unknown_user_wrong_password_and_too_long_password_look_the_same(
    client: TestClient[Any, Any],
) -> None:
    await sign_up(client)
    attempts = [
        {"username": "nobody@example.com", "password": PASSWORD},
        {"username": "abc@example.com", "password": "wrong-password"},
        {"username": "abc@example.com", "password": PASSWORD + "x" * 80},
        {"email": "nobody@example.com", "password": PASSWORD},
    ]
    bodies = set()
    for attempt in attempts:
        response = await client.post("/user/auth", json=attempt)
        assert response.status == 403
        bodies.add(await response.read())
    assert len(bodies) == 1
    headers = (await client.post("/user/auth", json=attempts[0])).headers
    assert "Retry-After" not in headers


async def test_a_password_with_the_right_first_72_bytes_does_not_sign_in(client: TestClient[Any, Any]) -> None:
    password = "p" * 72
    await sign_up(client, password=password)
    ok = await client.post("/user/auth", json={"username": "abc@example.com", "password": password})
    assert ok.status == 200
    longer = await client.post("/user/auth", json={"username": "abc@example.com", "password": password + "q"})
    assert longer.status == 403


async def test_password_is_compared_after_nfkc_normalisation(client: TestClient[Any, Any]) -> None:
    await sign_up(client, password="p\u00e5ssword")  # precomposed a-ring
    response = await client.post("/user/auth", json={"username": "abc@example.com", "password": "pa\u030assword"})
    assert response.status == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"username": "abc@example.com"}, "missing_field"),
        ({"password": PASSWORD}, "missing_field"),
        ({"username": "  ", "password": PASSWORD}, "missing_field"),
        ({"username": 5, "password": PASSWORD}, "invalid_field"),
        ({"email": ["abc@example.com"], "password": PASSWORD}, "invalid_field"),
        ({"username": "abc@example.com", "password": 123456}, "invalid_field"),
        ({"username": "abc@example.com", "password": None}, "missing_field"),
    ],
)
async def test_missing_or_mistyped_fields_give_400(
    client: TestClient[Any, Any], body: dict[str, Any], code: str
) -> None:
    response = await client.post("/user/auth", json=body)
    assert response.status == 400
    error = await response.json()
    assert error["code"] == code
    assert error["statusCode"] == 400
    assert error["error"] == error["message"]
