"""GET /openapi.json is a valid OpenAPI 3.1 document, and real responses match what it promises."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from server import validation
from server.domain import InvalidRequest
from server.web.openapi import NOT_BLANK, OPENAPI_DOCUMENT, WHITESPACE_CLASS, trimmed_length_pattern
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
        for header, spec in declared.get("headers", {}).items():
            if header not in response.headers:
                assert not spec.get("required"), f"{method} {path} {status} lacks {header}"
                continue
            value: Any = response.headers[header]
            if spec["schema"].get("type") == "integer":
                assert re.fullmatch(r"[0-9]+", value), f"{header}: {value!r} is not a whole number"
                value = int(value)
            jsonschema.validate(value, spec["schema"], cls=jsonschema.Draft202012Validator)
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
    assert set(document["paths"]) == {
        "/user",
        "/user/auth",
        "/openapi.json",
        "/health/live",
        "/health/ready",
        "/users",
        "/users/count",
        "/users/{id}",
        "/users/{id}/delete-status/{ticket}",
        "/user/reset-password",
        "/user/forgot-password",
        "/user/forgot-password/reset",
        "/user/change-password",
        "/user/logout",
    }


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


async def test_throttling_and_overload_answers_match_the_document(make_client: ClientFactory) -> None:
    """429 from sign-in throttling and 503 from a full hashing queue, each with Retry-After, as documented."""
    client = await make_client(user_signin_rate_limit_account=1, bcrypt_rounds=10, hash_workers=1, hash_queue_limit=0)
    conformance = Conformance(await fetch_document(client))
    wrong = {"username": "nobody", "password": "wrong-password"}
    await conformance.check("POST", "/user/auth", await client.post("/user/auth", json=wrong))  # 403
    await conformance.check("POST", "/user/auth", await client.post("/user/auth", json=wrong))  # 429
    await conformance.check("POST", "/user/auth", await client.post("/user/auth", json=wrong, headers=bearer("x")))

    # One worker, no queue: while one bcrypt run is in progress, other password work is refused at once.
    bodies = [{"username": f"u{n}", "email": f"u{n}@example.com", "password": PASSWORD} for n in range(4)]
    responses = await asyncio.gather(*(client.post("/user", json=body) for body in bodies))
    for response in responses:
        await conformance.check("POST", "/user", response)
    sign_ins = [{"username": f"other{n}", "password": "wrong-password"} for n in range(4)]
    responses = await asyncio.gather(*(client.post("/user/auth", json=body) for body in sign_ins))
    for response in responses:
        await conformance.check("POST", "/user/auth", response)
    expected = {
        ("post", "/user/auth", "403"),
        ("post", "/user/auth", "429"),
        ("post", "/user/auth", "401"),
        ("post", "/user/auth", "503"),
        ("post", "/user", "200"),
        ("post", "/user", "503"),
    }
    assert expected <= conformance.seen


async def test_a_wrong_header_value_fails_the_check(make_client: ClientFactory) -> None:
    """The conformance check reads header values, not only names."""
    client = await make_client(user_signup_rate_limit_email=1)
    conformance = Conformance(await fetch_document(client))
    body = {"username": "a", "email": "a@example.com", "password": PASSWORD}
    await conformance.check("POST", "/user", await client.post("/user", json=body))
    limited = await client.post("/user", json=body)
    await conformance.check("POST", "/user", limited)  # Retry-After is about an hour
    headers = conformance.document["paths"]["/user"]["post"]["responses"]["429"]["headers"]
    headers["Retry-After"]["schema"] = {"type": "integer", "maximum": 60}
    with pytest.raises(jsonschema.ValidationError):
        await conformance.check("POST", "/user", limited)


def test_every_response_documents_its_headers() -> None:
    for path, operations in OPENAPI_DOCUMENT["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                where = f"{method.upper()} {path} {status}"
                headers = response["headers"]
                assert headers["X-Request-Id"]["required"], where
                assert headers["X-Content-Type-Options"]["schema"]["enum"] == ["nosniff"], where
                if status in {"429", "503"} and path != "/health/ready":  # a probe is not told to come back
                    assert headers["Retry-After"]["required"], where
                if status == "401":
                    assert headers["WWW-Authenticate"]["required"], where
                if status == "200" and "token" in str(response["content"]):
                    assert headers["Cache-Control"]["schema"]["enum"] == ["no-store"], where
    for path in ("/user", "/user/auth"):
        assert {"400", "401", "403", "413", "415", "429", "503"} <= set(
            OPENAPI_DOCUMENT["paths"][path]["post"]["responses"]
        )
    assert "409" in OPENAPI_DOCUMENT["paths"]["/user"]["post"]["responses"]


# The request schemas' patterns against the server's own rules


def test_the_white_space_class_is_what_str_strip_removes() -> None:
    everything = "".join(map(chr, range(0x110000)))
    matched = set(re.findall(f"[{WHITESPACE_CLASS}]", everything))
    assert matched == {char for char in everything if char.isspace()}


edges = st.text(st.sampled_from([" ", "\t", "\n", "\u3000", "\u2028", "\x1c", "\x85", "\ufeff", "\u200b"]), max_size=3)
bodies = st.one_of(st.text(max_size=140), st.text(st.sampled_from("ab \u00e9\t"), min_size=120, max_size=135))


@settings(deadline=None, max_examples=300)
@given(before=edges, body=bodies, after=edges)
@example("", "a" * 128, "")
@example(" ", "a" * 128, "\t")
@example("", "a" * 129, "")
@example("\ufeff", "a", "")  # ECMA-262 counts U+FEFF as white space; Python, and so the server, does not
def test_trimmed_length_patterns_say_what_the_validators_do(before: str, body: str, after: str) -> None:
    value = before + body + after
    trimmed = value.strip()
    username = re.search(trimmed_length_pattern(validation.USERNAME_MAX_CHARS), value) is not None
    email = re.search(trimmed_length_pattern(validation.EMAIL_MAX_CHARS), value) is not None
    assert username == (1 <= len(trimmed) <= validation.USERNAME_MAX_CHARS)
    assert email == (1 <= len(trimmed) <= validation.EMAIL_MAX_CHARS)
    assert (re.search(NOT_BLANK, value) is not None) == bool(trimmed)
    # What the document refuses, the server refuses too.
    if not username:
        with pytest.raises(InvalidRequest):
            validation.clean_username(value)
    if not email:
        with pytest.raises(InvalidRequest):
            validation.clean_email(value)


async def test_an_undocumented_status_fails_the_check(client: TestClient[Any, Any]) -> None:
    """The conformance check itself can fail: a 404 is not documented for GET /user."""
    conformance = Conformance(await fetch_document(client))
    response = await client.get("/nope")
    with pytest.raises(AssertionError):
        await conformance.check("GET", "/user", response)
