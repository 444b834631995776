"""POST /user/forgot-password and /user/forgot-password/reset through HTTP, with a real webhook receiver.

The receiver is a real aiohttp server in the test; mixauth posts to it over loopback as it would to any URL.
Whether the answer waits for the receiver is shown by order (the receiver holds the request until the test
has its answer), never by a deadline. The timing test at the end compares distributions, as test_timing.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.cli import main
from server.config import ConfigError, Settings, load_settings
from server.domain import Overloaded
from server.hashing import PasswordHasher
from server.storage.sqlite import DATABASE_FILE
from server.views import iso_ms
from server.web import webhook
from server.web.keys import STORE
from server.web.webhook import BACKGROUND
from tests.conftest import PASSWORD, ClientFactory, FakeClock, sign_up
from tests.process import start_server
from tests.test_openapi import Conformance, fetch_document

SECRET = "webhook-secret-0123456789abcdef"
NEW_PASSWORD = "new-pw-7d2a91"
EMAIL = "known@example.com"
CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43,}$")


class Receiver:
    """A webhook receiver: records each request's headers and raw body; answers ``status``, or holds the
    request until ``release`` is set when ``hold`` is on."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.status = 200
        self.hold = False
        self.release = asyncio.Event()
        self.answered = 0
        self.answers: asyncio.Queue[int] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.put_nowait((dict(request.headers), await request.read()))
        if self.hold:
            await self.release.wait()
        self.answered += 1
        self.answers.put_nowait(self.status)
        return web.Response(status=self.status)

    async def next(self) -> tuple[dict[str, str], dict[str, Any], bytes]:
        headers, raw = await asyncio.wait_for(self.requests.get(), 10)
        return headers, json.loads(raw), raw


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    """A running receiver and its URL (with a query, which the logs must not show)."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/forgot", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/hooks/forgot")) + "?key=receiver-credential"


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "BACKOFF", 0.001)


async def with_webhook(make_client: ClientFactory, url: str, **changes: Any) -> TestClient[Any, Any]:
    return await make_client(webhook_user_forgot_password=url, webhook_secret=SECRET, **changes)


async def forgot(client: TestClient[Any, Any], email: str = EMAIL, **headers: str) -> Any:
    return await client.post("/user/forgot-password", json={"email": email}, headers=headers or None)


async def reset(client: TestClient[Any, Any], code: str, password: str = NEW_PASSWORD) -> Any:
    return await client.post("/user/forgot-password/reset", json={"code": code, "password": password})


async def sign_in(client: TestClient[Any, Any], password: str) -> int:
    response = await client.post("/user/auth", json={"email": EMAIL, "password": password})
    return response.status


async def code_for(client: TestClient[Any, Any], receiver: Receiver, email: str = EMAIL) -> str:
    assert (await forgot(client, email)).status == 200
    _, body, _ = await receiver.next()
    code: str = body["code"]
    return code


async def known_user_code(
    make_client: ClientFactory, receiver: tuple[Receiver, str], **changes: Any
) -> tuple[TestClient[Any, Any], str]:
    """A server with the webhook (and ``changes``), the known user signed up, and a code sent for them and stored."""
    hook, url = receiver
    client = await with_webhook(make_client, url, **changes)
    await sign_up(client, username="known", email=EMAIL)
    code = await code_for(client, hook)
    await client.app[BACKGROUND].wait()
    return client, code


async def error(response: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    assert set(body) == {"error", "message", "statusCode", "code"}
    assert body["code"] == code
    assert body["statusCode"] == status
    assert body["error"] == body["message"]
    return body


def events(lines: list[str], name: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    return [line for line in parsed if line.get("event") == name]


# The webhook: body, signature, and never in the answer's way


async def test_a_known_email_gets_a_signed_code_by_webhook(
    make_client: ClientFactory,
    receiver: tuple[Receiver, str],
    wall_clock: FakeClock,
    log_guard: list[str],
    settings: Settings,
) -> None:
    hook, url = receiver
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)
    user = await client.app[STORE].get_by_email(EMAIL)
    assert user is not None

    response = await forgot(client)
    assert response.status == 200
    assert await response.json() == {}
    headers, body, raw = await hook.next()

    assert set(body) == {"code", "email", "userId", "created", "link"}
    assert CODE_PATTERN.fullmatch(body["code"])
    assert body["email"] == EMAIL
    assert body["userId"] == user.id
    assert body["created"] == iso_ms(int(wall_clock.now * 1000))
    assert body["link"] == f"http://localhost:8080/reset-password?code={body['code']}"
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Mixauth-Signature"], expected)
    print(f"the receiver got:\n{raw.decode()}\nX-Mixauth-Signature: {headers['X-Mixauth-Signature']}")

    # Only the code's hash is stored, and the code is never logged.
    await client.app[BACKGROUND].wait()
    with sqlite3.connect(settings.data_dir / DATABASE_FILE) as database:
        stored = database.execute("SELECT user_id, code_hash FROM reset_codes").fetchall()
    assert stored == [(user.id, hashlib.sha256(body["code"].encode()).hexdigest())]
    assert not any(body["code"] in line for line in log_guard)
    (requested,) = events(log_guard, "password_reset.requested")
    assert requested["user_id"] == user.id
    assert "email" not in requested
    assert "code" not in requested
    (delivered,) = events(log_guard, "webhook.delivered")
    assert "?" not in delivered["url"]
    assert "receiver-credential" not in json.dumps(delivered)


async def test_the_code_sets_a_new_password_and_revokes_tokens(
    make_client: ClientFactory, receiver: tuple[Receiver, str], log_guard: list[str]
) -> None:
    hook, url = receiver
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)
    before = await client.app[STORE].get_by_email(EMAIL)
    assert before is not None
    code = await code_for(client, hook)

    response = await reset(client, code)
    assert response.status == 200
    assert await response.json() == {}
    assert await sign_in(client, NEW_PASSWORD) == 200
    assert await sign_in(client, PASSWORD) == 403
    after = await client.app[STORE].get_by_id(before.id)
    assert after is not None
    assert after.token_version == before.token_version + 1

    assert len(events(log_guard, "password_reset.completed")) == 1
    (changed,) = events(log_guard, "user.password_changed")
    assert changed["via"] == "reset"
    assert changed["user_id"] == before.id
    (revoked,) = events(log_guard, "tokens.revoked")
    assert revoked["user_id"] == before.id
    assert revoked["version"] == before.token_version + 1
    assert not any(code in line for line in log_guard)


async def test_a_hanging_receiver_does_not_hold_the_answer(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    hook.hold = True
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)

    response = await forgot(client)
    assert response.status == 200
    _, body, _ = await hook.next()
    # The receiver has the delivery and has not answered it: the answer above did not wait for it.
    assert hook.answered == 0
    hook.release.set()
    await client.app[BACKGROUND].wait()
    assert hook.answered == 1
    assert (await reset(client, body["code"])).status == 200


async def test_a_failing_receiver_changes_nothing_and_is_logged(
    make_client: ClientFactory, receiver: tuple[Receiver, str], log_guard: list[str]
) -> None:
    hook, url = receiver
    hook.status = 503
    hook.hold = True
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)

    response = await forgot(client)
    assert response.status == 200
    assert await response.json() == {}
    _, body, _ = await hook.next()
    assert hook.answered == 0  # answered before the receiver's first failure
    hook.release.set()
    await client.app[BACKGROUND].wait()
    assert hook.answered == webhook.ATTEMPTS  # every attempt made, then given up

    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert failed["reason"] == "status_503"
    assert failed["attempts"] == webhook.ATTEMPTS
    assert failed["url"] == url.split("?")[0]
    # mixauth's lines; the test receiver's own access log shows the URL it was called at.
    ours = [line for line in log_guard if '"logger":"aiohttp.access"' not in line]
    assert not any(body["code"] in line or "receiver-credential" in line for line in ours)
    assert not any(EMAIL in line for line in log_guard if "webhook" in line or "password_reset" in line)


async def test_shutdown_waits_for_deliveries_then_cancels_them(
    make_client: ClientFactory,
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
    log_guard: list[str],
) -> None:
    hook, url = receiver
    hook.hold = True
    monkeypatch.setattr(webhook, "DRAIN_SECONDS", 0.05)
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)
    assert (await forgot(client)).status == 200
    await hook.next()
    await client.server.close()  # the app's cleanup: the store is still open while the drain runs
    assert len(client.app[BACKGROUND]) == 0
    assert len(events(log_guard, "background.cancelled")) == 1
    assert not events(log_guard, "background.failed")
    hook.release.set()


async def test_without_a_webhook_nothing_is_sent_and_start_up_warns(
    make_client: ClientFactory, log_guard: list[str]
) -> None:
    client = await make_client()
    await sign_up(client, username="known", email=EMAIL)
    response = await forgot(client)
    assert response.status == 200
    assert await response.json() == {}
    await client.app[BACKGROUND].wait()
    assert len(events(log_guard, "webhook.not_configured")) == 1
    assert not events(log_guard, "webhook.delivered")
    assert not events(log_guard, "webhook.delivery_failed")


async def test_an_unknown_email_sends_nothing(make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)
    assert (await forgot(client, "nobody@example.com")).status == 200
    await client.app[BACKGROUND].wait()
    assert hook.requests.empty()
    assert (await forgot(client, " KNOWN@Example.COM ")).status == 200  # the address's key, as sign-in
    _, body, _ = await hook.next()
    assert body["email"] == EMAIL


# Known and unknown emails: one answer


async def test_known_and_unknown_emails_get_the_same_answer(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)

    async def answer(email: str) -> tuple[int, dict[str, str], bytes]:
        response = await forgot(client, email)
        # The request id differs by design, and Date with the clock.
        varying = {"x-request-id", "date"}
        headers = {name.lower(): value for name, value in response.headers.items() if name.lower() not in varying}
        return response.status, headers, await response.read()

    known, unknown = await answer(EMAIL), await answer("nobody@example.com")
    assert known == unknown
    assert known[0] == 200
    assert known[2] == b"{}"


async def test_the_rate_limit_answer_is_the_same_for_known_and_unknown_emails(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    client = await make_client()
    await sign_up(client, username="known", email=EMAIL)
    for _ in range(5):
        assert (await forgot(client, EMAIL)).status == 200
        assert (await forgot(client, "nobody@example.com")).status == 200
    known, unknown = await forgot(client, EMAIL), await forgot(client, "nobody@example.com")
    body = await error(known, 429, "forgot_password_email_rate_limited")
    assert body == await unknown.json()
    assert known.headers["Retry-After"] == unknown.headers["Retry-After"] == "720"  # 3600 s / 5
    clock.advance(720)
    assert (await forgot(client, EMAIL)).status == 200


async def test_forgot_password_is_limited_per_client_ip(make_client: ClientFactory) -> None:
    client = await make_client()
    for n in range(50):
        assert (await forgot(client, f"user{n}@example.com")).status == 200
    refused = await forgot(client, "one-more@example.com")
    await error(refused, 429, "forgot_password_ip_rate_limited")
    assert refused.headers["Retry-After"] == "72"


async def test_forgot_password_limits_come_from_settings(make_client: ClientFactory) -> None:
    client = await make_client(
        user_forgot_password_rate_limit_email=1,
        user_forgot_password_rate_limit_email_window_ms=10_000,
        user_forgot_password_rate_limit_ip=2,
        user_forgot_password_rate_limit_ip_window_ms=60_000,
    )
    assert (await forgot(client, "a@example.com")).status == 200
    by_email = await forgot(client, "a@example.com")
    await error(by_email, 429, "forgot_password_email_rate_limited")
    assert by_email.headers["Retry-After"] == "10"
    assert (await forgot(client, "b@example.com")).status == 200
    by_ip = await forgot(client, "c@example.com")
    await error(by_ip, 429, "forgot_password_ip_rate_limited")
    assert by_ip.headers["Retry-After"] == "30"


# Codes: once, within their lifetime, the newest only


async def test_a_code_works_once(make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    client, code = await known_user_code(make_client, receiver)
    assert (await reset(client, code)).status == 200
    await error(await reset(client, code, "another-pw-1"), 400, "invalid_reset_code")
    assert await sign_in(client, NEW_PASSWORD) == 200


async def test_a_code_expires_after_its_lifetime(
    make_client: ClientFactory, receiver: tuple[Receiver, str], wall_clock: FakeClock
) -> None:
    client, code = await known_user_code(make_client, receiver, forgot_password_code_ttl=600)
    wall_clock.advance(600)
    await error(await reset(client, code), 400, "invalid_reset_code")
    assert await sign_in(client, PASSWORD) == 200


async def test_a_code_works_until_its_lifetime_ends(
    make_client: ClientFactory, receiver: tuple[Receiver, str], wall_clock: FakeClock
) -> None:
    client, code = await known_user_code(make_client, receiver, forgot_password_code_ttl=600)
    wall_clock.advance(599.9)
    assert (await reset(client, code)).status == 200


async def test_a_newer_code_replaces_the_older(make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    client = await with_webhook(make_client, url)
    await sign_up(client, username="known", email=EMAIL)
    older = await code_for(client, hook)
    await client.app[BACKGROUND].wait()
    newer = await code_for(client, hook)
    await client.app[BACKGROUND].wait()
    assert older != newer
    await error(await reset(client, older), 400, "invalid_reset_code")
    assert (await reset(client, newer)).status == 200


async def test_two_concurrent_resets_with_one_code_give_one_200(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    client, code = await known_user_code(make_client, receiver)
    first, second = await asyncio.gather(reset(client, code, "first-pw-1"), reset(client, code, "second-pw-2"))
    assert sorted([first.status, second.status]) == [200, 400]
    loser = first if first.status == 400 else second
    await error(loser, 400, "invalid_reset_code")
    winner = "first-pw-1" if first.status == 200 else "second-pw-2"
    assert await sign_in(client, winner) == 200


async def test_a_bad_new_password_leaves_the_code_usable(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    client, code = await known_user_code(make_client, receiver)
    await error(await reset(client, code, "short"), 400, "password_too_short")
    await error(await reset(client, code, "p" * 73), 400, "password_too_long")
    assert (await reset(client, code)).status == 200


async def test_a_reset_refused_for_a_busy_hashing_pool_leaves_the_code_usable(
    make_client: ClientFactory, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new password is hashed before the code is consumed: a 503 from a saturated pool costs no code."""
    client, code = await known_user_code(make_client, receiver)
    real_hash = PasswordHasher.hash

    async def saturated(self: PasswordHasher, password: bytes) -> str:
        raise Overloaded()

    monkeypatch.setattr(PasswordHasher, "hash", saturated)
    busy = await reset(client, code)
    await error(busy, 503, "overloaded")
    assert busy.headers["Retry-After"] == "1"
    monkeypatch.setattr(PasswordHasher, "hash", real_hash)
    assert (await reset(client, code)).status == 200


async def test_a_deleted_users_code_is_invalid(make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    client, code = await known_user_code(make_client, receiver)
    user = await client.app[STORE].get_by_email(EMAIL)
    assert user is not None
    assert await client.app[STORE].delete(user.id)
    await error(await reset(client, code), 400, "invalid_reset_code")


async def test_a_reset_refills_the_accounts_sign_in_throttle(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    client = await with_webhook(make_client, url, user_signin_rate_limit_account=2)
    await sign_up(client, username="known", email=EMAIL)
    assert await sign_in(client, "wrong-password") == 403
    assert await sign_in(client, "wrong-password") == 403
    assert await sign_in(client, PASSWORD) == 429  # the account's bucket is empty
    code = await code_for(client, hook)
    await client.app[BACKGROUND].wait()
    assert (await reset(client, code)).status == 200
    assert await sign_in(client, NEW_PASSWORD) == 200


async def test_reset_attempts_are_limited_per_client_ip(make_client: ClientFactory, clock: FakeClock) -> None:
    client = await make_client()
    for n in range(20):
        await error(await reset(client, f"guess-{n}"), 400, "invalid_reset_code")
    refused = await reset(client, "guess-20")
    await error(refused, 429, "password_reset_ip_rate_limited")
    assert refused.headers["Retry-After"] == "180"  # 3600 s / 20
    clock.advance(180)
    await error(await reset(client, "guess-21"), 400, "invalid_reset_code")


async def test_reset_limit_comes_from_settings(make_client: ClientFactory) -> None:
    client = await make_client(
        user_forgot_password_reset_rate_limit_ip=1, user_forgot_password_reset_rate_limit_ip_window_ms=5000
    )
    await error(await reset(client, "guess"), 400, "invalid_reset_code")
    refused = await reset(client, "guess")
    await error(refused, 429, "password_reset_ip_rate_limited")
    assert refused.headers["Retry-After"] == "5"


# 400s


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing_field"),
        ({"email": None}, "missing_field"),
        ({"email": 5}, "invalid_field"),
        ({"email": ["a@example.com"]}, "invalid_field"),
        ({"email": "   "}, "invalid_email"),
        ({"email": "a" * 1100 + "@example.com"}, "invalid_email"),
    ],
)
async def test_forgot_password_refuses_a_bad_body(client: TestClient[Any, Any], body: Any, code: str) -> None:
    await error(await client.post("/user/forgot-password", json=body), 400, code)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"password": NEW_PASSWORD}, "missing_field"),
        ({"code": "x"}, "missing_field"),
        ({"code": 1, "password": NEW_PASSWORD}, "invalid_field"),
        ({"code": "x", "password": 123456}, "invalid_field"),
        ({"code": "", "password": NEW_PASSWORD}, "invalid_reset_code"),
        ({"code": "x" * 300, "password": NEW_PASSWORD}, "invalid_reset_code"),
        ({"code": "not-a-code", "password": NEW_PASSWORD}, "invalid_reset_code"),
        ({"code": "x", "password": "short"}, "password_too_short"),
    ],
)
async def test_reset_refuses_a_bad_body(client: TestClient[Any, Any], body: Any, code: str) -> None:
    await error(await client.post("/user/forgot-password/reset", json=body), 400, code)


@pytest.mark.parametrize("path", ["/user/forgot-password", "/user/forgot-password/reset"])
async def test_malformed_and_non_object_bodies_are_400(client: TestClient[Any, Any], path: str) -> None:
    await error(await client.post(path, data=b"{", headers={"Content-Type": "application/json"}), 400, "malformed_body")
    await error(await client.post(path, json=["x"]), 400, "invalid_body")


# Settings


def test_the_settings_come_from_the_environment_and_the_secret_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {
        "WEBHOOK_USER_FORGOT_PASSWORD": "https://hooks.example/forgot?key=receiver-credential",
        "WEBHOOK_SECRET": SECRET,
        "FORGOT_PASSWORD_LINK": "https://app.example/reset/{{code}}",
        "FORGOT_PASSWORD_CODE_TTL": "15m",
        "USER_FORGOT_PASSWORD_RATE_LIMIT_EMAIL": "3",
        "USER_FORGOT_PASSWORD_RESET_RATE_LIMIT_IP_WINDOW_MS": "60000",
    }
    loaded = load_settings(None, environ)
    assert loaded.webhook_user_forgot_password == environ["WEBHOOK_USER_FORGOT_PASSWORD"]
    assert loaded.webhook_secret == SECRET
    assert loaded.forgot_password_code_ttl == 900
    assert loaded.user_forgot_password_rate_limit_email == 3
    assert loaded.user_forgot_password_reset_rate_limit_ip_window_ms == 60_000
    assert SECRET not in repr(loaded)
    assert main(["check-config", "--json"], environ=environ) == 0
    out, _ = capsys.readouterr()
    shown = json.loads(out)["settings"]
    assert SECRET not in out
    assert "receiver-credential" not in out  # the URL's key ends in "password": shown redacted too
    assert shown["webhook_secret"]["source"] == "env"
    assert shown["forgot_password_link"]["value"] == "https://app.example/reset/{{code}}"
    assert shown["forgot_password_code_ttl"]["value"] == 900


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("WEBHOOK_USER_FORGOT_PASSWORD", "ftp://hooks.example/x", "http:// or https:// URL"),
        ("WEBHOOK_USER_FORGOT_PASSWORD", "https:///no-host", "http:// or https:// URL"),
        ("WEBHOOK_SECRET", "short", "at least 16 bytes"),
        ("FORGOT_PASSWORD_LINK", "https://app.example/reset", "{{code}}"),
        ("FORGOT_PASSWORD_CODE_TTL", "0", "longer than zero"),
        ("USER_FORGOT_PASSWORD_RATE_LIMIT_IP", "0", "between 1 and"),
    ],
)
def test_bad_recovery_settings_stop_start_up_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {name: value})
    assert str(caught.value).startswith(f"{name}: ")
    assert says in str(caught.value)


def test_empty_webhook_settings_mean_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_settings(None, {"WEBHOOK_USER_FORGOT_PASSWORD": " ", "WEBHOOK_SECRET": ""})
    assert loaded.webhook_user_forgot_password is None
    assert loaded.webhook_secret is None


# The OpenAPI document


async def test_real_answers_match_the_document(make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    client = await with_webhook(
        make_client, url, user_forgot_password_rate_limit_email=1, user_forgot_password_reset_rate_limit_ip=3
    )
    conformance = Conformance(await fetch_document(client))
    await sign_up(client, username="known", email=EMAIL)

    async def call(path: str, **kwargs: Any) -> Any:
        response = await client.post(path, **kwargs)
        await conformance.check("POST", path, response)
        return response

    forgot_path, reset_path = "/user/forgot-password", "/user/forgot-password/reset"
    await call(forgot_path, json={"email": EMAIL})  # 200
    _, body, _ = await hook.next()
    await client.app[BACKGROUND].wait()
    await call(forgot_path, json={"email": EMAIL})  # 429
    await call(forgot_path, json={})  # 400
    await call(forgot_path, json={"email": "a@example.com"}, headers={"Authorization": "Bearer x"})  # 401
    await call(forgot_path, data=b"x" * 20000, headers={"Content-Type": "application/json"})  # 413
    await call(forgot_path, data=b"{}", headers={"Content-Type": "text/plain"})  # 415
    await call(reset_path, json={"code": "wrong", "password": NEW_PASSWORD})  # 400
    await call(reset_path, json={"code": body["code"], "password": NEW_PASSWORD})  # 200
    await call(reset_path, json={"code": body["code"], "password": NEW_PASSWORD})  # 400 again
    await call(reset_path, json={"code": body["code"], "password": NEW_PASSWORD})  # 429
    expected = {("post", forgot_path, status) for status in ("200", "400", "401", "413", "415", "429")}
    expected |= {("post", reset_path, status) for status in ("200", "400", "429")}
    assert expected <= conformance.seen


# Timing


# Rounds enough that the medians hold when the shared machine is busy for part of the test (101 rounds, about a
# second, once gave 0.61 against 0.49 ms in CI where the same code measures within 6 %).
ROUNDS = 301
TOLERANCE = 0.25


async def test_known_and_unknown_emails_take_the_same_time(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """The answer for a known and for an unknown email takes the same time, seen from another process.

    A real server (``start_server``), so that what is timed is when the answer reaches the client, as an
    attacker would time it: in one process with the client, the server's background work after the answer
    (the code's store write, the delivery) would run on the client's own event loop and be counted. The two
    kinds are interleaved round robin, each round in a rotated order, and their medians compared, as in
    test_timing.py. Each known request's delivery is awaited before the next request, so that no request
    shares the server with another's background work.
    """
    hook, url = receiver
    server = await start_server(
        tmp_path,
        JWT_SECRET="timing-test-secret-0123456789abcdef-0123456789",
        LOG_LEVEL="warning",
        WEBHOOK_USER_FORGOT_PASSWORD=url,
        WEBHOOK_SECRET=SECRET,
        USER_FORGOT_PASSWORD_RATE_LIMIT_EMAIL="100000",
        USER_FORGOT_PASSWORD_RATE_LIMIT_IP="100000",
    )
    emails = {"known": EMAIL, "unknown": "nobody@example.com"}
    names = list(emails)
    try:
        async with aiohttp.ClientSession(server.url) as session:
            signup = {"username": "known", "email": EMAIL, "password": PASSWORD}
            assert (await session.post("/user", json=signup)).status == 200

            async def timed(name: str) -> float:
                started = time.perf_counter()
                async with session.post("/user/forgot-password", json={"email": emails[name]}) as response:
                    raw = await response.read()
                elapsed = time.perf_counter() - started
                assert (response.status, raw) == (200, b"{}")
                if name == "known":
                    await hook.next()
                    await asyncio.wait_for(hook.answers.get(), 10)  # and the receiver's answer is on its way
                return elapsed

            for name in names:  # a warm-up round, not counted
                await timed(name)
            durations: dict[str, list[float]] = {name: [] for name in names}
            for round_number in range(ROUNDS):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    durations[name].append(await timed(name))
    finally:
        server.stop()
    assert hook.requests.empty()  # every known request's delivery arrived, and no unknown one's
    medians = {name: statistics.median(values) for name, values in durations.items()}
    report = ", ".join(f"{name}: {median * 1000:.2f} ms" for name, median in medians.items())
    low, high = sorted(medians.values())
    assert (high - low) / low < TOLERANCE, report
    print(f"median forgot-password answer times over {ROUNDS} rounds: {report}")  # shown by pytest -rP
