"""Bad input of every kind gets the contract's JSON error and a 4xx, never a 500 or a traceback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.web.keys import SERVICE

ERROR_KEYS = {"error", "message", "statusCode", "code"}


async def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == ERROR_KEYS
    assert body["statusCode"] == status
    assert body["code"] == code
    assert body["error"] == body["message"]
    assert body["error"].endswith(".")
    return body


@pytest.mark.parametrize("path", ["/user", "/user/auth"])
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "malformed_body"),
        (b"{", "malformed_body"),
        (b"{'single': 'quotes'}", "malformed_body"),
        (b"\xff\xfe{}", "malformed_body"),
        (b'{"password": NaN}', "malformed_body"),
        (b'{"password": Infinity}', "malformed_body"),
        (b'{"metadata": {"n": 1e999}}', "malformed_body"),
        (b'{"username": "\\ud800", "password": "x"}', "malformed_body"),
        (b"[" * 5000 + b"]" * 5000, "malformed_body"),
        (b"[]", "invalid_body"),
        (b'"a string"', "invalid_body"),
        (b"42", "invalid_body"),
        (b"null", "invalid_body"),
    ],
)
async def test_malformed_bodies_give_400(client: TestClient[Any, Any], path: str, raw: bytes, code: str) -> None:
    response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    await assert_error(response, 400, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_non_json_content_type_gives_415(client: TestClient[Any, Any], content_type: str) -> None:
    response = await client.post("/user/auth", data=b"{}", headers={"Content-Type": content_type})
    await assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json", None])
async def test_json_content_types_and_a_missing_one_are_read_as_json(
    client: TestClient[Any, Any], content_type: str | None
) -> None:
    body = json.dumps({"username": "a", "email": "a@example.com", "password": "abc321"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/user", data=body, headers=headers, skip_auto_headers=["Content-Type"])
    assert response.status == 200, await response.text()


async def test_body_over_16_kib_gives_413(client: TestClient[Any, Any]) -> None:
    big = {"username": "a", "email": "a@example.com", "password": "abc321", "metadata": {"x": "y" * 17000}}
    response = await client.post("/user", json=big)
    await assert_error(response, 413, "body_too_large")


async def test_body_just_under_16_kib_is_accepted(client: TestClient[Any, Any]) -> None:
    body = {"username": "a", "email": "a@example.com", "password": "abc321", "metadata": {"x": ""}}
    filler = 16 * 1024 - len(json.dumps(body))
    body["metadata"] = {"x": "y" * filler}
    assert len(json.dumps(body)) == 16 * 1024
    response = await client.post("/user", json=body)
    assert response.status == 200


async def test_unknown_route_gives_404(client: TestClient[Any, Any]) -> None:
    response = await client.get("/no/such/route")
    await assert_error(response, 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [("PUT", "/user"), ("DELETE", "/user"), ("GET", "/user/auth")])
async def test_wrong_method_gives_405_with_allow(client: TestClient[Any, Any], method: str, path: str) -> None:
    response = await client.request(method, path)
    await assert_error(response, 405, "method_not_allowed")
    assert "Allow" in response.headers


async def test_every_response_carries_a_request_id(client: TestClient[Any, Any]) -> None:
    ok = await client.get("/openapi.json")
    missing = await client.get("/nope")
    assert len(ok.headers["X-Request-Id"]) == 32
    assert ok.headers["X-Request-Id"] != missing.headers["X-Request-Id"]
    kept = await client.get("/nope", headers={"X-Request-Id": "caller-chosen-id.1"})
    assert kept.headers["X-Request-Id"] == "caller-chosen-id.1"
    replaced = await client.get("/nope", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["X-Request-Id"] != "bad id\twith spaces"


async def test_an_unexpected_fault_gives_a_bare_500(client: TestClient[Any, Any], monkeypatch: Any) -> None:
    service = client.app[SERVICE]

    async def explode(body: Any) -> Any:
        raise RuntimeError("SELECT secret FROM users -- internal detail")

    monkeypatch.setattr(service, "sign_in", explode)
    response = await client.post("/user/auth", json={"username": "a", "password": "abc321"})
    body = await assert_error(response, 500, "internal_error")
    text = json.dumps(body)
    assert "SELECT" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text


async def test_success_bodies_never_contain_an_error_key(client: TestClient[Any, Any]) -> None:
    create = await client.post("/user", json={"username": "a", "email": "a@example.com", "password": "abc321"})
    token = (await create.json())["token"]
    sign_in = await client.post("/user/auth", json={"username": "a", "password": "abc321"})
    me = await client.get("/user", headers={"Authorization": f"Bearer {token}"})
    for response in (create, sign_in, me):
        assert response.status == 200
        assert "error" not in await response.json()
