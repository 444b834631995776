"""Attacks on bearer tokens through HTTP, and the headers that keep tokens and answers safe in a browser.

``tests/test_security.py`` covers the token codec case by case, and ``tests/test_api_get_user.py`` the common bad
tokens over HTTP. This file adds the attacks those leave out (``alg: none`` in every letter case with every kind
of signature, algorithm and key confusion, embedded keys, malformed ``exp``/``iat``/``id`` claims signed with the
right key, whitespace, empty and doubled credentials) and checks that every one of them gets the same 401,
byte for byte, so a caller learns nothing about why a token failed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from server.domain import InvalidToken
from server.security import TokenCodec, new_user_id
from server.web.keys import SERVICE
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, bearer, create_admin, sign_up

SECRET = JWT_SECRET.encode()
ATTACKER_KEY = b"attacker-chosen-key-0123456789abcdef-0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def mac(signing_input: str, key: bytes = SECRET, digest: str = "sha256") -> str:
    return b64url(hmac.new(key, signing_input.encode("ascii"), getattr(hashlib, digest)).digest())


def forge(header: dict[str, Any], claims: Any, key: bytes = SECRET, digest: str = "sha256") -> str:
    """A JWT with exactly ``header`` and ``claims``, its signature an HMAC of them under ``key``."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{mac(signing_input, key, digest)}"


class _Drop:
    """Marks a claim to leave out."""


_DROP: Any = _Drop()


def attacks(user_id: str, genuine: str) -> dict[str, str | list[str]]:
    """Authorization header values (a list: several Authorization fields), each of which must get the 401."""
    now = int(time.time())
    good = {"id": user_id, "scope": ["user"], "iat": now, "exp": now + 600}
    hs256 = {"alg": "HS256", "typ": "JWT"}
    genuine_signature = genuine.rsplit(".", 1)[1]

    def signed(**changes: Any) -> str:
        claims = {**good, **changes}
        return "Bearer " + forge(hs256, {key: value for key, value in claims.items() if value is not _DROP})

    cases: dict[str, str | list[str]] = {}
    for alg in ("none", "None", "NONE", "nOnE"):
        signing_input = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(good)}"
        cases[f"alg_{alg}_unsigned"] = f"Bearer {signing_input}."
        cases[f"alg_{alg}_two_segments"] = f"Bearer {signing_input}"
        cases[f"alg_{alg}_with_a_correct_hs256_mac"] = f"Bearer {signing_input}.{mac(signing_input)}"
        cases[f"alg_{alg}_with_a_copied_signature"] = f"Bearer {signing_input}.{genuine_signature}"
    cases.update(
        {
            # Other algorithms with the right key, and headers that name none the server accepts.
            "hs384_right_key": "Bearer " + forge({"alg": "HS384", "typ": "JWT"}, good, digest="sha384"),
            "hs256_header_hs512_mac": "Bearer " + forge(hs256, good, digest="sha512"),
            "alg_lower_case_hs256": "Bearer " + forge({"alg": "hs256", "typ": "JWT"}, good),
            "alg_missing": "Bearer " + forge({"typ": "JWT"}, good),
            "alg_null": "Bearer " + forge({"alg": None, "typ": "JWT"}, good),
            "alg_list": "Bearer " + forge({"alg": ["HS256"], "typ": "JWT"}, good),
            # Key confusion: an asymmetric algorithm named, the server's HMAC secret used as its "public key".
            "rs256_header_hmac_with_the_secret": "Bearer " + forge({"alg": "RS256", "typ": "JWT"}, good),
            "es256_header_hmac_with_the_secret": "Bearer " + forge({"alg": "ES256", "typ": "JWT"}, good),
            # Keys the attacker chose: their own, one embedded in the header, an empty one, a prefix of the secret.
            "attacker_key": "Bearer " + forge(hs256, good, key=ATTACKER_KEY),
            "embedded_jwk": "Bearer "
            + forge({**hs256, "jwk": {"kty": "oct", "k": b64url(ATTACKER_KEY)}}, good, key=ATTACKER_KEY),
            "kid_pointing_elsewhere": "Bearer " + forge({**hs256, "kid": "../../dev/null"}, good, key=b""),
            "empty_key": "Bearer " + forge(hs256, good, key=b""),
            "secret_prefix": "Bearer " + forge(hs256, good, key=SECRET[:32]),
            # Claims signed with the right key but malformed.
            "exp_float_string": signed(exp=f"{now + 600}.5"),
            "exp_numeric_string": signed(exp=str(now + 600)),
            "exp_null": signed(exp=None),
            "exp_true": signed(exp=True),
            "exp_false": signed(exp=False),
            "exp_object": signed(exp={"$date": now + 600}),
            "exp_missing_iat_missing": signed(exp=_DROP, iat=_DROP),
            "iat_string": signed(iat="now"),
            "iat_numeric_string": signed(iat=str(now)),
            "iat_null": signed(iat=None),
            "iat_far_future": signed(iat=now + 10**9, exp=now + 10**9 + 600),
            "id_list": signed(id=[user_id]),
            "id_null": signed(id=None),
            "id_object": signed(id={"$oid": user_id}),
            "id_true": signed(id=True),
            "id_upper_case": signed(id=user_id.upper()),
            "id_with_newline": signed(id=user_id + "\n"),
            "id_padded": signed(id=f" {user_id} "),
            "id_unknown": signed(id=new_user_id()),
            "id_missing": signed(id=_DROP),
            "claims_not_an_object": "Bearer " + forge(hs256, [good]),
            # Garbage and near misses.
            "null": "Bearer null",
            "undefined": "Bearer undefined",
            "only_a_header": "Bearer " + segment(hs256),
            "four_segments": f"Bearer {genuine}.{genuine_signature}",
            "base64_padding": f"Bearer {genuine}==",
            "long_garbage": "Bearer " + "A" * 4000,
            "other_scheme_with_a_genuine_token": f"Token {genuine}",
            "no_space_after_scheme": f"Bearer{genuine}",
            "scheme_twice": f"Bearer Bearer {genuine}",
            # Empty credentials.
            "empty_header": "",
            "scheme_only": "Bearer",
            "scheme_and_space": "Bearer ",
            "scheme_and_spaces": "Bearer     ",
            # White space inside the credentials (RFC 6750 separates scheme and token with spaces only).
            "tab_after_scheme": f"Bearer\t{genuine}",
            "space_inside_token": "Bearer " + genuine.replace(".", ". ", 1),
            "space_inside_signature": f"Bearer {genuine[:-10]} {genuine[-10:]}",
            # Two tokens in one field, and two Authorization fields.
            "two_tokens_space": f"Bearer {genuine} {genuine}",
            "two_tokens_comma": f"Bearer {genuine},{genuine}",
            "two_credentials_comma": f"Bearer {genuine}, Bearer {genuine}",
            "two_fields_genuine_first": [f"Bearer {genuine}", "Bearer garbage"],
            "two_fields_genuine_last": ["Bearer garbage", f"Bearer {genuine}"],
            "two_fields_both_genuine": [f"Bearer {genuine}", f"Bearer {genuine}"],
        }
    )
    return cases


def headers_for(value: str | list[str]) -> CIMultiDict[str]:
    values = value if isinstance(value, list) else [value]
    return CIMultiDict(("Authorization", item) for item in values)


async def test_every_attack_gets_one_identical_401(client: TestClient[Any, Any]) -> None:
    genuine = await sign_up(client)
    me = await client.get("/user", headers=bearer(genuine))
    assert me.status == 200
    user_id = (await me.json())["id"]

    baseline = await client.get("/user", headers=bearer("not-a-token"))
    assert baseline.status == 401
    expected_body = await baseline.read()
    expected_challenge = baseline.headers["WWW-Authenticate"]
    assert json.loads(expected_body)["code"] == "invalid_token"

    accepted, different = [], []
    for name, value in attacks(user_id, genuine).items():
        response = await client.get("/user", headers=headers_for(value))
        body = await response.read()
        if response.status != 401:
            accepted.append((name, response.status))
        elif body != expected_body or response.headers.get("WWW-Authenticate") != expected_challenge:
            different.append((name, body))
    assert accepted == [], f"not refused with 401: {accepted}"
    assert different == [], f"refused with another body or challenge: {different}"


async def test_the_genuine_token_still_works_with_the_spaces_rfc_6750_allows(client: TestClient[Any, Any]) -> None:
    """The 401s above are about the attacks, not about formatting: ``Bearer 1*SP token`` and OWS are fine."""
    genuine = await sign_up(client)
    for value in (f"Bearer {genuine}", f"Bearer   {genuine}", f"bearer {genuine}", f"  Bearer {genuine}  "):
        response = await client.get("/user", headers={"Authorization": value})
        assert response.status == 200, value


@pytest.mark.parametrize(("method", "path"), [("POST", "/user"), ("POST", "/user/auth"), ("GET", "/openapi.json")])
async def test_attacks_get_the_same_401_on_open_endpoints(client: TestClient[Any, Any], method: str, path: str) -> None:
    """An open endpoint is no oracle either: a forged token there gets the very same answer as on GET /user."""
    genuine = await sign_up(client)
    body = {"username": "other", "email": "other@example.com", "password": PASSWORD}
    forged = "Bearer " + forge({"alg": "none", "typ": "JWT"}, {"id": "0" * 24, "scope": ["admin"]}, key=b"")
    reference = await (await client.get("/user", headers={"Authorization": forged})).read()
    for value in (forged, f"Bearer {genuine} {genuine}", [f"Bearer {genuine}", "Bearer garbage"]):
        response = await client.request(method, path, json=body, headers=headers_for(value))
        assert response.status == 401, value
        assert await response.read() == reference


# Bytes a header may carry that are not text: aiohttp hands a non-UTF-8 byte over as a lone surrogate.

RAW_CREDENTIALS = {
    "latin_1_byte_in_token": lambda genuine: b"Bearer " + genuine[:-1].encode() + b"\xe9",
    "latin_1_byte_after_token": lambda genuine: b"Bearer " + genuine.encode() + b"\xe9",
    "invalid_utf_8": lambda genuine: b"Bearer \xff\xfe" + genuine.encode(),
    "utf_8_letter": lambda genuine: b"Bearer " + genuine.encode() + "\u00e9".encode(),
    "latin_1_scheme": lambda genuine: b"B\xe9arer " + genuine.encode(),
}


def test_a_token_that_is_not_ascii_is_malformed() -> None:
    codec = TokenCodec(SECRET, 3600)
    genuine = codec.issue(new_user_id(), ("user",))
    assert codec.verify(genuine).scope == ("user",)
    for token in (genuine[:-1] + "\udce9", genuine + "\udcff", "\u00e9" + genuine, genuine.replace(".", "\u2024", 1)):
        with pytest.raises(InvalidToken) as refused:
            codec.verify(token)
        assert refused.value.reason == "malformed"


@pytest.mark.parametrize("name", sorted(RAW_CREDENTIALS))
@pytest.mark.parametrize(("method", "path"), [("GET", "/user"), ("POST", "/user/auth")])
async def test_any_byte_in_the_token_gets_the_same_401(
    client: TestClient[Any, Any], name: str, method: str, path: str
) -> None:
    genuine = await sign_up(client)
    reference = await client.get("/user", headers=bearer("not-a-token"))
    expected = await reference.read()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\nAuthorization: ".encode()
            + RAW_CREDENTIALS[name](genuine)
            + b"\r\n\r\n{}"
        )
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert answer.endswith(b"\r\n\r\n" + expected)


# Response headers


async def test_every_response_that_carries_a_token_is_not_stored(make_client: ClientFactory) -> None:
    client = await make_client(api_user_create_scope=("admin",))
    admin = await create_admin(client)
    created = await client.post(
        "/user", json={"username": "u", "email": "u@example.com", "password": PASSWORD}, headers=bearer(admin)
    )
    by_username = await client.post("/user/auth", json={"username": "U", "password": PASSWORD})
    by_email = await client.post("/user/auth", json={"email": " U@Example.com ", "password": PASSWORD})
    for response in (created, by_username, by_email):
        assert response.status == 200
        assert "token" in await response.json()
        assert response.headers["Cache-Control"] == "no-store"


async def test_every_response_forbids_content_sniffing(make_client: ClientFactory, monkeypatch: Any) -> None:
    client = await make_client(user_signup_rate_limit_email=1)
    body = {"username": "abc", "email": "abc@example.com", "password": PASSWORD}
    responses: dict[str, Any] = {}
    created = await client.post("/user", json=body)
    responses["200 POST /user"] = created
    token = (await created.json())["token"]
    responses["200 POST /user/auth"] = await client.post("/user/auth", json={"username": "abc", "password": PASSWORD})
    responses["200 GET /user"] = await client.get("/user", headers=bearer(token))
    responses["200 GET /openapi.json"] = await client.get("/openapi.json")
    responses["400"] = await client.post("/user", json={"username": "x"})
    responses["401 no token"] = await client.get("/user")
    responses["401 bad token"] = await client.get("/user", headers=bearer("bad"))
    responses["403"] = await client.post("/user/auth", json={"username": "abc", "password": "wrong-password"})
    responses["404"] = await client.get("/no/such/path")
    responses["405"] = await client.delete("/user")
    responses["409"] = await client.post("/user", json={**body, "email": "other@example.com"})
    responses["413"] = await client.post("/user", data=b"x" * 20_000, headers={"Content-Type": "application/json"})
    responses["415"] = await client.post("/user", data=b"{}", headers={"Content-Type": "text/plain"})
    responses["429"] = await client.post("/user", json=body)

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    def explode_now(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    # Both the check without a wait (this token's user is remembered) and the one with.
    monkeypatch.setattr(client.app[SERVICE], "authenticate_now", explode_now)
    monkeypatch.setattr(client.app[SERVICE], "authenticate", explode)
    responses["500"] = await client.get("/user", headers=bearer(token))

    for label, response in responses.items():
        assert str(response.status) == label.split()[0], (label, response.status, await response.text())
        assert response.headers.get("X-Content-Type-Options") == "nosniff", label
        assert response.content_type == "application/json", label
