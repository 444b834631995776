"""Signup rate limiting through HTTP: the seed's defaults, sentences, 429 and Retry-After, and the bypass."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import PASSWORD, ClientFactory, FakeClock, bearer, create_admin

EMAIL_SENTENCE = "Too many signup attempts for this email address. Please try again later."
IP_SENTENCE = "Too many signup attempts from your IP address. Please try again later."


async def signup(client: TestClient[Any, Any], n: int, email: str | None = None, token: str | None = None) -> Any:
    body = {"username": f"user{n}", "email": email or f"user{n}@example.com", "password": PASSWORD}
    return await client.post("/user", json=body, headers=bearer(token) if token else None)


async def test_email_limit_defaults_to_10_per_hour(client: TestClient[Any, Any], clock: FakeClock) -> None:
    for n in range(10):
        response = await signup(client, n, email="same@example.com")
        assert response.status in (200, 409)  # attempts count, successful or not
    refused = await signup(client, 10, email="SAME@example.com ")
    assert refused.status == 429
    body = await refused.json()
    assert body["error"] == EMAIL_SENTENCE
    assert body["code"] == "signup_email_rate_limited"
    assert body["statusCode"] == 429
    assert refused.headers["Retry-After"] == "360"  # one token per 3600 s / 10
    clock.advance(359)
    assert (await signup(client, 11, email="same@example.com")).status == 429
    clock.advance(1)
    assert (await signup(client, 12, email="same@example.com")).status == 409


async def test_ip_limit_defaults_to_50_per_hour(client: TestClient[Any, Any], clock: FakeClock) -> None:
    for n in range(50):
        assert (await signup(client, n)).status == 200
    refused = await signup(client, 50)
    assert refused.status == 429
    assert (await refused.json())["error"] == IP_SENTENCE
    assert (await refused.json())["code"] == "signup_ip_rate_limited"
    assert refused.headers["Retry-After"] == "72"  # 3600 s / 50
    clock.advance(72)
    assert (await signup(client, 51)).status == 200


async def test_limits_and_windows_come_from_settings(make_client: ClientFactory, clock: FakeClock) -> None:
    client = await make_client(
        user_signup_rate_limit_email=2,
        user_signup_rate_limit_email_window_ms=10_000,
        user_signup_rate_limit_ip=3,
        user_signup_rate_limit_ip_window_ms=60_000,
    )
    assert (await signup(client, 1, email="e@example.com")).status == 200
    assert (await signup(client, 2, email="e@example.com")).status == 409
    email_refused = await signup(client, 3, email="e@example.com")
    assert (await email_refused.json())["error"] == EMAIL_SENTENCE
    assert email_refused.headers["Retry-After"] == "5"
    assert (await signup(client, 4)).status == 200  # the refused request took no IP token
    ip_refused = await signup(client, 5)
    assert (await ip_refused.json())["error"] == IP_SENTENCE
    assert ip_refused.headers["Retry-After"] == "20"


async def test_email_is_checked_first(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_email=1, user_signup_rate_limit_ip=1)
    assert (await signup(client, 1, email="e@example.com")).status == 200
    refused = await signup(client, 2, email="e@example.com")
    assert (await refused.json())["error"] == EMAIL_SENTENCE


async def test_invalid_requests_count_as_attempts(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_ip=2)
    bad = await client.post("/user", json={"username": "a", "email": "a@example.com", "password": "short"})
    assert bad.status == 400
    missing = await client.post("/user", json={"username": "b"})
    assert missing.status == 400
    refused = await signup(client, 3)
    assert refused.status == 429


async def test_the_limit_is_per_ip(make_client: ClientFactory) -> None:
    """Clients at other addresses keep their own buckets; X-Forwarded-For is not trusted."""
    client = await make_client(user_signup_rate_limit_ip=1)
    assert (await signup(client, 1)).status == 200
    spoofed = await client.post(
        "/user",
        json={"username": "u2", "email": "u2@example.com", "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert spoofed.status == 429


async def test_admin_token_bypasses_the_limits(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_email=1, user_signup_rate_limit_ip=1)
    token = await create_admin(client, ("admin",))
    for n in range(5):
        assert (await signup(client, n, email="same@example.com" if n == 0 else None, token=token)).status == 200
    assert (await signup(client, 10, email="other@example.com")).status == 200  # anonymous buckets untouched


async def test_create_scope_holder_bypasses_the_limits(make_client: ClientFactory) -> None:
    client = await make_client(api_user_create_scope=("provisioner",), user_signup_rate_limit_ip=1)
    token = await create_admin(client, ("provisioner",))
    for n in range(3):
        assert (await signup(client, n, token=token)).status == 200


async def test_plain_user_token_does_not_bypass(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_ip=2)
    token = (await (await signup(client, 1)).json())["token"]
    assert (await signup(client, 2, token=token)).status == 200
    assert (await signup(client, 3, token=token)).status == 429
