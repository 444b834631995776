"""WebhookNotifier and BackgroundTasks against a real HTTP receiver: signature, retries, timeouts, redirects,
what the log shows of a failure, and the drain at shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.domain import ResetCodeMessage
from server.web.webhook import (
    SIGNATURE_HEADER,
    BackgroundTasks,
    WebhookNotifier,
    loggable_url,
    message_body,
    signature,
)
from tests.conftest import free_port

SECRET = b"webhook-secret-0123456789abcdef"
CODE = "c0de-" + "x" * 40
MESSAGE = ResetCodeMessage(
    code=CODE,
    email="known@example.com",
    user_id="6b0a7249ecdc3bd70541b10a",
    created=1_796_000_000_123,
    link=f"https://app.example/reset?code={CODE}",
)


class Receiver:
    """Answers each request with the next of ``statuses`` (the last one repeated); ``hang`` never answers."""

    def __init__(self, *statuses: int, hang: bool = False) -> None:
        self.statuses = list(statuses) or [200]
        self.hang = hang
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, dict(request.headers), await request.read()))
        if self.hang:
            await asyncio.Event().wait()
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if 300 <= status < 400:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def serve(aiohttp_server: Any, receiver: Receiver) -> str:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    app.router.add_post("/elsewhere", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")) + "?token=receiver-credential"


def notifier(session: aiohttp.ClientSession, url: str, secret: bytes | None = SECRET, **kwargs: Any) -> WebhookNotifier:
    return WebhookNotifier(session, url, secret, backoff=0.001, **kwargs)


def events(lines: list[str], name: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    return [line for line in parsed if line.get("event") == name]


def ours(lines: list[str]) -> list[str]:
    """mixauth's log lines (the test receiver's own access log shows the URL it was called at)."""
    return [line for line in lines if '"logger":"aiohttp.access"' not in line]


async def test_the_body_is_the_documented_json_and_signed(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver()
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url).deliver(MESSAGE)
    ((path, headers, raw),) = receiver.requests
    assert path == "/hook?token=receiver-credential"
    assert json.loads(raw) == {
        "code": CODE,
        "email": "known@example.com",
        "userId": "6b0a7249ecdc3bd70541b10a",
        "created": "2026-11-30T00:53:20.123Z",
        "link": f"https://app.example/reset?code={CODE}",
    }
    assert raw == message_body(MESSAGE)
    assert headers["Content-Type"] == "application/json"
    assert headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    assert signature(raw, SECRET) == headers[SIGNATURE_HEADER]
    (delivered,) = events(log_guard, "webhook.delivered")
    assert delivered["attempts"] == 1
    assert not any(CODE in line or "receiver-credential" in line for line in ours(log_guard))


async def test_without_a_secret_there_is_no_signature(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    receiver = Receiver()
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, secret=None).deliver(MESSAGE)
    ((_, headers, _),) = receiver.requests
    assert SIGNATURE_HEADER not in headers


async def test_a_failing_receiver_is_retried_until_it_answers(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver(500, 503, 200)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=3).deliver(MESSAGE)
    assert len(receiver.requests) == 3
    assert len({raw for _, _, raw in receiver.requests}) == 1  # the same body, and so signature, each time
    (delivered,) = events(log_guard, "webhook.delivered")
    assert delivered["attempts"] == 3
    assert not events(log_guard, "webhook.delivery_failed")


async def test_attempts_are_bounded_and_the_failure_logged_without_the_code(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver(500)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=3).deliver(MESSAGE)
    assert len(receiver.requests) == 3
    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert failed["level"] == "warning"
    assert failed["reason"] == "status_500"
    assert failed["attempts"] == 3
    assert failed["url"] == url.split("?")[0]
    assert failed["user_id"] == MESSAGE.user_id
    mine = "\n".join(ours(log_guard))
    assert CODE not in mine
    assert "receiver-credential" not in mine
    assert MESSAGE.email not in mine


async def test_a_client_error_is_not_retried(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver(400)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=3).deliver(MESSAGE)
    assert len(receiver.requests) == 1
    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert (failed["reason"], failed["attempts"]) == ("status_400", 1)


async def test_too_many_requests_is_retried(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    receiver = Receiver(429, 200)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=3).deliver(MESSAGE)
    assert len(receiver.requests) == 2


async def test_a_redirect_is_not_followed(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver(302)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=1).deliver(MESSAGE)
    assert [path for path, _, _ in receiver.requests] == ["/hook?token=receiver-credential"]
    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert failed["reason"] == "status_302"


async def test_a_hanging_receiver_times_out(
    aiohttp_server: Any, session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    receiver = Receiver(hang=True)
    url = await serve(aiohttp_server, receiver)
    await notifier(session, url, attempts=2, timeout=0.05).deliver(MESSAGE)
    assert len(receiver.requests) == 2
    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert (failed["reason"], failed["attempts"]) == ("timeout", 2)


async def test_an_unreachable_receiver_is_a_logged_failure(
    session: aiohttp.ClientSession, log_guard: list[str]
) -> None:
    url = f"http://user:pass@127.0.0.1:{free_port()}/hook?token=receiver-credential#frag"
    await notifier(session, url, attempts=2).deliver(MESSAGE)
    (failed,) = events(log_guard, "webhook.delivery_failed")
    assert failed["reason"] == "ClientConnectorError"
    assert failed["attempts"] == 2
    assert failed["url"].startswith("http://127.0.0.1:")
    assert failed["url"].endswith("/hook")
    assert "pass" not in json.dumps(failed)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/forgot?key=s3cret", "https://hooks.example/forgot"),
        ("https://user:pw@hooks.example:8443/a/b?x=1#y", "https://hooks.example:8443/a/b"),
        ("http://[::1]:9000/h", "http://[::1]:9000/h"),
    ],
)
def test_loggable_url_keeps_scheme_host_and_path(url: str, shown: str) -> None:
    assert loggable_url(url) == shown


def test_the_code_is_not_in_the_repr() -> None:
    assert CODE not in repr(MESSAGE)


# BackgroundTasks


async def test_spawned_work_runs_without_the_caller_waiting() -> None:
    tasks = BackgroundTasks()
    started, release = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        await release.wait()

    tasks.spawn(work())
    assert len(tasks) == 1  # spawn returned while the work has not even started
    await started.wait()
    release.set()
    await tasks.wait()
    assert len(tasks) == 0


async def test_a_failing_task_is_logged_not_raised(log_guard: list[str]) -> None:
    tasks = BackgroundTasks()

    async def work() -> None:
        raise RuntimeError("boom")

    tasks.spawn(work())
    await tasks.wait()
    (failed,) = events(log_guard, "background.failed")
    assert failed["error"] == "RuntimeError"


async def test_the_drain_finishes_quick_work_and_cancels_the_rest(log_guard: list[str]) -> None:
    tasks = BackgroundTasks()
    finished: list[str] = []
    cancelled = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        finished.append("quick")

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.spawn(quick())
    tasks.spawn(stuck())
    await tasks.drain(grace=0.05)
    assert finished == ["quick"]
    assert cancelled.is_set()
    assert len(tasks) == 0
    assert len(events(log_guard, "background.cancelled")) == 1

    async def late() -> None:
        finished.append("late")

    tasks.spawn(late())  # after the drain: dropped, not run
    await asyncio.sleep(0)
    assert finished == ["quick"]
    assert len(events(log_guard, "background.dropped")) == 1
