"""The JSON log pipeline: one parseable line per event, secrets redacted, tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from server.logs import REDACTED, configure_logging
from server.web.keys import SERVICE
from tests.conftest import PASSWORD, ClientFactory

pytestmark = pytest.mark.usefixtures("restore_logging")


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_and_stdlib_events_are_one_json_line_each() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    structlog.get_logger("mixauth.test").info("user.created", user_id="abc", username="evil\nname\r\n{")
    logging.getLogger("aiohttp.server").warning("stdlib message %s", "with args")
    structlog.get_logger("mixauth.test").debug("hidden.at.info")
    lines = lines_of(stream)
    assert len(lines) == 2
    assert lines[0]["event"] == "user.created"
    assert lines[0]["username"] == "evil\nname\r\n{"
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[1]["event"] == "stdlib message with args"
    assert lines[1]["level"] == "warning"
    assert lines[1]["logger"] == "aiohttp.server"


def test_fields_named_like_secrets_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    structlog.get_logger().info("oops", password=PASSWORD, token="eyJ.abc.def", password_hash="$2b$04$x")
    line = lines_of(stream)[0]
    assert line["password"] == line["token"] == line["password_hash"] == REDACTED
    assert PASSWORD not in stream.getvalue()


def test_tracebacks_are_rendered_without_local_variables() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)

    def fail(password: str) -> None:
        password_copy = password.upper()
        raise RuntimeError("failed " + str(len(password_copy)))

    try:
        fail(PASSWORD)
    except RuntimeError:
        structlog.get_logger().exception("request.failed")
    output = stream.getvalue()
    assert PASSWORD not in output
    assert PASSWORD.upper() not in output
    (line,) = lines_of(stream)
    frames = line["exception"][0]["frames"]
    assert any(frame["name"] == "fail" for frame in frames)
    assert all("locals" not in frame for frame in frames)


async def test_the_log_level_filters(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("warning", stream=stream)
    client: TestClient[Any, Any] = await make_client()
    await client.post("/user/auth", json={"username": "nobody", "password": PASSWORD})  # info: filtered
    await client.get("/user", headers={"Authorization": "Bearer nope"})  # warning: kept
    events = [line["event"] for line in lines_of(stream)]
    assert events == ["token.rejected"]


async def test_an_unexpected_fault_is_logged_with_its_request_id(make_client: ClientFactory, monkeypatch: Any) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client: TestClient[Any, Any] = await make_client()

    async def explode(body: Any, client_ip: str) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app[SERVICE], "sign_in", explode)
    response = await client.post("/user/auth", json={"username": "a", "password": PASSWORD})
    assert response.status == 500
    failure = next(line for line in lines_of(stream) if line["event"] == "request.failed")
    assert failure["request_id"] == response.headers["X-Request-Id"]
    assert failure["level"] == "error"
    assert failure["exception"][0]["exc_type"] == "RuntimeError"
    assert PASSWORD not in stream.getvalue()
