"""GET /openapi.json is a valid OpenAPI 3.1 document, and real responses match what it promises."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import PASSWORD, ClientFactory, bearer, create_admin


async def fetch_document(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


class Conformance:
    """Checks each response against the document's schema for its path, method and status."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource("urn:mixauth", resource)
        self.seen: set[tuple[str, str, str]] = set()

    async def check(self, method: str, path: str, response: Any) -> None:
        status = str(response.status)
        operation = self.document["paths"][path][method.lower()]
        assert status in operation["responses"], f"{method} {path} answered {status}, not documented"
        declared = operation["responses"][status]
        media = declared["content"]["application/json"]
        assert response.content_type == "application/json"
        schema = _rebase(media["schema"])
        jsonschema.validate(await response.json(), schema, cls=jsonschema.Draft202012Validator, registry=self.registry)
        for header in declared.get("headers", {}):
            assert header in response.headers, f"{method} {path} {status} lacks {header}"
        self.seen.add((method.lower(), path, status))


def _rebase(schema: Any) -> Any:
    """Point the document's local ``#/components/...`` references at the registered document."""
    if isinstance(schema, dict):
        return {
            key: ("urn:mixauth" + value if key == "$ref" and value.startswith("#") else _rebase(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(item) for item in schema]
    return schema


async def test_the_document_is_valid_openapi_3_1(client: TestClient[Any, Any]) -> None:
    document = await fetch_document(client)
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert set(document["paths"]) == {"/user", "/user/auth", "/openapi.json"}


async def test_real_responses_match_the_document(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_email=1)
    conformance = Conformance(await fetch_document(client))
    body = {"username": "abc@example.com", "email": "abc@example.com", "password": PASSWORD, "metadata": {"a": 1}}

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        response = await client.request(method, path, **kwargs)
        await conformance.check(method, path, response)
        return response

    created = await call("POST", "/user", json=body)
    token = (await created.json())["token"]
    await call("POST", "/user", json={**body, "email": "other@example.com"})  # 409
    await call("POST", "/user", json=body)  # 429 for the email
    await call("POST", "/user", json={"username": "x"})  # 400
    await call("POST", "/user", data=b"x" * 20000, headers={"Content-Type": "application/json"})  # 413
    await call("POST", "/user", data=b"{}", headers={"Content-Type": "text/plain"})  # 415
    await call("POST", "/user/auth", json={"username": "abc@example.com", "password": PASSWORD})  # 200
    await call("POST", "/user/auth", json={"username": "abc@example.com", "password": "wrong!"})  # 403
    await call("POST", "/user/auth", json={"password": PASSWORD})  # 400
    await call("GET", "/user", headers=bearer(token))  # 200 with metadata
    await call("GET", "/user")  # 401
    await call("GET", "/user", headers=bearer("bad"))  # 401
    await call("GET", "/openapi.json")  # 200
    expected = {
        ("post", "/user", "200"),
        ("post", "/user", "409"),
        ("post", "/user", "429"),
        ("post", "/user", "400"),
        ("post", "/user", "413"),
        ("post", "/user", "415"),
        ("post", "/user/auth", "200"),
        ("post", "/user/auth", "403"),
        ("post", "/user/auth", "400"),
        ("get", "/user", "200"),
        ("get", "/user", "401"),
        ("get", "/openapi.json", "200"),
    }
    assert expected <= conformance.seen


async def test_scope_restricted_create_matches_the_document(make_client: ClientFactory) -> None:
    client = await make_client(api_user_create_scope=("admin",))
    conformance = Conformance(await fetch_document(client))
    body = {"username": "a", "email": "a@example.com", "password": PASSWORD}
    await conformance.check("POST", "/user", await client.post("/user", json=body))  # 401
    user_token = await create_admin(client, ("user",))
    await conformance.check("POST", "/user", await client.post("/user", json=body, headers=bearer(user_token)))
    admin = await create_admin(client, ("admin",))
    await conformance.check("POST", "/user", await client.post("/user", json=body, headers=bearer(admin)))
    assert {("post", "/user", "401"), ("post", "/user", "403"), ("post", "/user", "200")} <= conformance.seen


async def test_an_undocumented_status_fails_the_check(client: TestClient[Any, Any]) -> None:
    """The conformance check itself can fail: a 404 is not documented for GET /user."""
    conformance = Conformance(await fetch_document(client))
    response = await client.get("/nope")
    with pytest.raises(AssertionError):
        await conformance.check("GET", "/user", response)
