"""Request ids and the canonical access line: one per request, tying together every line of that request."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.logs import configure_logging
from tests.conftest import PASSWORD, ClientFactory, bearer, sign_up
from tests.test_metrics import parse, value

pytestmark = pytest.mark.usefixtures("restore_logging")


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_one_canonical_line_per_request_with_the_ids_of_its_other_lines(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client = await make_client()
    token = await sign_up(client)
    stream.truncate(0)
    stream.seek(0)
    response = await client.post("/user/auth", json={"username": "abc@example.com", "password": PASSWORD})
    assert response.status == 200
    body = await response.read()
    request_id = response.headers["X-Request-Id"]
    lines = log_lines(stream)
    assert {line["request_id"] for line in lines} == {request_id}
    assert [line["event"] for line in lines] == ["user.signin.succeeded", "http.request"]
    access = lines[-1]
    user_id = (await (await client.get("/user", headers=bearer(token))).json())["id"]
    assert access["method"] == "POST"
    assert access["route"] == "/user/auth"
    assert access["status"] == 200
    assert access["duration_ms"] > 0
    assert access["bytes"] == len(body)
    assert access["client_ip"] == "127.0.0.1"
    assert access["user_id"] == user_id
    assert access["logger"] == "mixauth.access"


async def test_an_anonymous_request_has_no_user_id_and_an_unknown_path_no_route(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client = await make_client()
    await client.get("/user")
    await client.get("/no/such/page?token=secret-looking")
    first, second = [line for line in log_lines(stream) if line["event"] == "http.request"]
    assert (first["route"], first["status"]) == ("/user", 401)
    assert "user_id" not in first
    assert (second["route"], second["status"]) == (None, 404)
    assert "secret-looking" not in stream.getvalue()  # query strings are never logged


async def test_a_wrong_method_logs_the_route_its_path_matched(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)  # at INFO: a wrong method on a probe's path is not a probe
    client = await make_client()
    await client.delete("/user")
    await client.request("PURGE", "/user/auth")
    await client.post("/health/live")
    await client.put("/no/such/page")
    lines = [line for line in log_lines(stream) if line["event"] == "http.request"]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("DELETE", "/user", 405),
        ("PURGE", "/user/auth", 405),
        ("POST", "/health/live", 405),
        ("PUT", None, 404),  # no resource has the path: null here, "unmatched" in the metrics
    ]
    counted = parse(await (await client.get("/metrics")).text())["mixauth_http_requests"]
    for route, method, status in [
        ("/user", "DELETE", "405"),
        ("/user/auth", "other", "405"),
        ("unmatched", "PUT", "404"),
    ]:
        assert value(counted, "mixauth_http_requests_total", route=route, method=method, status=status) == 1


async def test_a_valid_incoming_request_id_is_kept_and_a_bad_one_replaced(make_client: ClientFactory) -> None:
    client = await make_client()
    kept = await client.get("/health/live", headers={"X-Request-Id": "edge-proxy:1234.abc_DEF-9"})
    assert kept.headers["X-Request-Id"] == "edge-proxy:1234.abc_DEF-9"
    for bad in ("has space", "x" * 129, "new\\nline", ""):
        replaced = await client.get("/health/live", headers={"X-Request-Id": bad})
        assert replaced.headers["X-Request-Id"] != bad
        assert len(replaced.headers["X-Request-Id"]) == 32
    assert (await client.get("/health/live")).headers["X-Request-Id"] != (await client.get("/health/live")).headers[
        "X-Request-Id"
    ]


async def test_a_request_the_http_parser_refuses_is_logged_as_one_access_line(make_client: ClientFactory) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client = await make_client()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"FOO /user HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"400"
    await client.get("/health/live")  # the refused request's line is written before this one's
    lines = log_lines(stream)
    assert [line["level"] for line in lines if line["level"] in {"error", "critical"}] == []
    refused = [line for line in lines if line["event"] == "http.request" and line["status"] == 400]
    assert len(refused) == 1
    assert refused[0]["route"] is None


async def test_nothing_bound_for_one_request_reaches_the_next_on_the_same_connection(
    make_client: ClientFactory,
) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    client = await make_client()
    token = await sign_up(client)  # the test client keeps its connection alive between requests
    await client.get("/user", headers=bearer(token))
    await client.get("/user")
    lines = [line for line in log_lines(stream) if line["event"] == "http.request"]
    assert [("user_id" in line) for line in lines] == [True, True, False]
    assert len({line["request_id"] for line in lines}) == 3


async def test_a_kept_alive_connection_follows_a_new_logging_configuration(make_client: ClientFactory) -> None:
    """The access log remembers its line logger per connection; configuring logging anew, or capture_logs,
    between two requests on one connection is seen by the second."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", stream=first)
    client = await make_client()
    token = await sign_up(client)
    assert (await client.get("/user", headers=bearer(token))).status == 200
    configure_logging("info", stream=second)
    assert (await client.get("/user", headers=bearer(token))).status == 200
    with capture_logs() as captured:
        assert (await client.get("/user", headers=bearer(token))).status == 200
    assert (await client.get("/user", headers=bearer(token))).status == 200
    assert [line["event"] for line in log_lines(first)][-1] == "http.request"
    assert [line["route"] for line in log_lines(second) if line["event"] == "http.request"] == ["/user", "/user"]
    assert [entry["route"] for entry in captured if entry["event"] == "http.request"] == ["/user"]
    assert client.session.connector is not None
    assert len(client.session.connector._conns) == 1  # one connection, kept alive
