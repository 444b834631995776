"""Sign-in brute-force protection through HTTP: failures are throttled per account and per client IP."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server import security
from tests.conftest import PASSWORD, ClientFactory, FakeClock, sign_up

THROTTLED_SENTENCE = "Too many failed sign-in attempts. Please try again later."
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


async def sign_in(
    client: TestClient[Any, Any], password: str = "wrong-password", ip: str | None = None, **who: str
) -> Any:
    body = dict(who) or {"username": "alice"}
    headers = {"X-Forwarded-For": ip} if ip else None
    return await client.post("/user/auth", json={**body, "password": password}, headers=headers)


async def alice(make_client: ClientFactory, **changes: Any) -> TestClient[Any, Any]:
    client = await make_client(**changes)
    await sign_up(client, username="Alice", email="alice@example.com")
    return client


async def test_the_account_defaults_to_100_failures_per_hour(make_client: ClientFactory, clock: FakeClock) -> None:
    client = await alice(make_client)
    for _ in range(100):
        assert (await sign_in(client)).status == 403
    refused = await sign_in(client, password=PASSWORD)  # even the right password
    assert refused.status == 429
    body = await refused.json()
    assert body == {
        "error": THROTTLED_SENTENCE,
        "message": THROTTLED_SENTENCE,
        "statusCode": 429,
        "code": "signin_throttled",
    }
    assert refused.headers["Retry-After"] == "36"  # one token per 3600 s / 100
    clock.advance(35)
    assert (await sign_in(client, password=PASSWORD)).status == 429
    clock.advance(1)
    assert (await sign_in(client, password=PASSWORD)).status == 200


async def test_username_and_email_in_any_case_share_one_bucket(make_client: ClientFactory) -> None:
    client = await alice(make_client, user_signin_rate_limit_account=4)
    for who in (
        {"username": "alice"},
        {"username": " ALICE "},
        {"email": "Alice@Example.com"},
        {"email": "alice@example.com"},
    ):
        assert (await sign_in(client, **who)).status == 403
    for who in ({"username": "Alice"}, {"email": "ALICE@EXAMPLE.COM"}):
        assert (await sign_in(client, password=PASSWORD, **who)).status == 429


async def test_unknown_identifiers_are_throttled_the_same_way(make_client: ClientFactory) -> None:
    client = await alice(make_client, user_signin_rate_limit_account=3)
    known = [(await sign_in(client)).status for _ in range(4)]
    unknown = [(await sign_in(client, username="nobody")).status for _ in range(4)]
    assert known == unknown == [403, 403, 403, 429]
    assert (await sign_in(client, username="NOBODY ")).status == 429  # the same name, normalised
    retry_known = (await sign_in(client)).headers["Retry-After"]
    retry_unknown = (await sign_in(client, username="nobody")).headers["Retry-After"]
    assert retry_known == retry_unknown


async def test_only_failures_take_a_token(make_client: ClientFactory) -> None:
    client = await alice(make_client, user_signin_rate_limit_account=2, user_signin_rate_limit_ip=2)
    for _ in range(10):
        assert (await sign_in(client, password=PASSWORD)).status == 200
    assert (await sign_in(client)).status == 403
    assert (await sign_in(client)).status == 403
    assert (await sign_in(client)).status == 429


async def test_a_success_refills_its_accounts_bucket(make_client: ClientFactory) -> None:
    client = await alice(make_client, user_signin_rate_limit_account=3)
    await sign_up(client, username="bob", email="bob@example.com")
    for _ in range(2):
        assert (await sign_in(client)).status == 403
        assert (await sign_in(client, username="bob")).status == 403
    assert (await sign_in(client, password=PASSWORD)).status == 200
    for _ in range(3):  # alice's bucket is full again: three more failures before a 429
        assert (await sign_in(client)).status == 403
    assert (await sign_in(client)).status == 429
    assert (await sign_in(client, username="bob")).status == 403  # bob's was not refilled: one left
    assert (await sign_in(client, username="bob", password=PASSWORD)).status == 429


async def test_the_client_ip_defaults_to_300_failures_per_hour(make_client: ClientFactory) -> None:
    client = await make_client(trusted_proxies=LOOPBACK)
    for n in range(300):
        assert (await sign_in(client, username=f"user{n}", ip="203.0.113.5")).status == 403
    refused = await sign_in(client, username="someone-new", ip="203.0.113.5")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "12"  # one token per 3600 s / 300
    assert (await sign_in(client, username="someone-new", ip="203.0.113.6")).status == 403


async def test_an_ipv6_client_is_throttled_by_its_64_network(make_client: ClientFactory) -> None:
    client = await make_client(trusted_proxies=LOOPBACK, user_signin_rate_limit_ip=2)
    assert (await sign_in(client, username="a", ip="2001:db8:1:2::1")).status == 403
    assert (await sign_in(client, username="b", ip="2001:db8:1:2:ffff::9")).status == 403
    assert (await sign_in(client, username="c", ip="2001:db8:1:2::abcd")).status == 429
    assert (await sign_in(client, username="d", ip="2001:db8:1:3::1")).status == 403


async def test_throttling_is_logged_once_with_the_resolved_client_ip(make_client: ClientFactory) -> None:
    client = await alice(make_client, trusted_proxies=LOOPBACK, user_signin_rate_limit_account=1)
    assert (await sign_in(client, ip="198.51.100.4")).status == 403
    with capture_logs() as logs:
        assert (await sign_in(client, password=PASSWORD, ip="198.51.100.4")).status == 429
    (event,) = [entry for entry in logs if entry["event"] == "user.signin.throttled"]
    assert event["limit"] == "account"
    assert event["identified_by"] == "username"
    assert event["user_id"]
    assert event["retry_after"] > 0
    assert not [entry for entry in logs if entry["event"].startswith("user.signin.") and entry is not event]


async def test_a_throttled_sign_in_spends_no_bcrypt(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await alice(make_client, user_signin_rate_limit_account=1)
    assert (await sign_in(client)).status == 403
    calls: list[str] = []
    original = security.check_password

    def counting(password: bytes, password_hash: str) -> bool:
        calls.append("check")
        return original(password, password_hash)

    monkeypatch.setattr(security, "check_password", counting)
    assert (await sign_in(client, password=PASSWORD)).status == 429
    assert calls == []
