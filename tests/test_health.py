"""GET /health/live and /health/ready: cheap, open, never rate limited, quiet in the access log at INFO."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from server.logs import configure_logging
from server.web import handlers
from server.web.keys import READINESS
from tests.conftest import ClientFactory


async def test_live_answers_while_the_process_runs(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.get("/health/live")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_answers_when_the_database_does(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.get("/health/ready")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_is_503_with_a_json_reason_when_the_database_fails(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()

    async def broken() -> int:
        raise OSError("disk I/O error")

    monkeypatch.setattr(client.app[READINESS], "data_version", broken)
    response = await client.get("/health/ready")
    assert response.status == 503
    body = await response.json()
    assert body["code"] == "not_ready"
    assert body["statusCode"] == 503
    assert body["error"] == "The database does not answer."
    assert (await client.get("/health/live")).status == 200  # the process itself is fine


async def test_ready_is_503_when_the_database_hangs(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "READINESS_TIMEOUT", 0.01)
    client = await make_client()

    async def hanging() -> int:
        await asyncio.Event().wait()
        return 0

    monkeypatch.setattr(client.app[READINESS], "data_version", hanging)
    assert (await client.get("/health/ready")).status == 503


async def test_probes_are_never_rate_limited_nor_need_a_token(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_ip=1, user_signin_rate_limit_ip=1)
    for _ in range(20):
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 200


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("level", "logged"), [("info", False), ("debug", True)])
async def test_probes_are_left_out_of_the_access_log_at_info(
    make_client: ClientFactory, level: str, logged: bool
) -> None:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    client = await make_client()
    await client.get("/health/live")
    await client.get("/health/ready")
    await client.get("/user")  # a real request is logged either way
    lines: list[dict[str, Any]] = [json.loads(line) for line in stream.getvalue().splitlines()]
    routes = [line["route"] for line in lines if line["event"] == "http.request"]
    expected = ["/health/live", "/health/ready", "/user"] if logged else ["/user"]
    assert routes == expected
