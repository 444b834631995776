"""Bad input of every kind gets the contract's JSON error and a 4xx, never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from server.web.connection import MAX_REMEMBERED_ROUTES, routed
from server.web.keys import SERVICE
from server.web.middleware import request_middleware
from tests.conftest import sign_up
from tests.process import start_server

ERROR_KEYS = {"error", "message", "statusCode", "code"}


async def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == ERROR_KEYS
    assert body["statusCode"] == status
    assert body["code"] == code
    assert body["error"] == body["message"]
    assert body["error"].endswith(".")
    return body


@pytest.mark.parametrize("path", ["/user", "/user/auth"])
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "malformed_body"),
        (b"{", "malformed_body"),
        (b"{'single': 'quotes'}", "malformed_body"),
        (b"\xff\xfe{}", "malformed_body"),
        (b'{"password": NaN}', "malformed_body"),
        (b'{"password": Infinity}', "malformed_body"),
        (b'{"metadata": {"n": 1e999}}', "malformed_body"),
        (b'{"username": "\\ud800", "password": "x"}', "malformed_body"),
        (b"[" * 5000 + b"]" * 5000, "malformed_body"),
        (b"[]", "invalid_body"),
        (b'"a string"', "invalid_body"),
        (b"42", "invalid_body"),
        (b"null", "invalid_body"),
    ],
)
async def test_malformed_bodies_give_400(client: TestClient[Any, Any], path: str, raw: bytes, code: str) -> None:
    response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    await assert_error(response, 400, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_non_json_content_type_gives_415(client: TestClient[Any, Any], content_type: str) -> None:
    response = await client.post("/user/auth", data=b"{}", headers={"Content-Type": content_type})
    await assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json", None])
async def test_json_content_types_and_a_missing_one_are_read_as_json(
    client: TestClient[Any, Any], content_type: str | None
) -> None:
    body = json.dumps({"username": "a", "email": "a@example.com", "password": "abc321"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/user", data=body, headers=headers, skip_auto_headers=["Content-Type"])
    assert response.status == 200, await response.text()


async def test_body_over_16_kib_gives_413(client: TestClient[Any, Any]) -> None:
    big = {"username": "a", "email": "a@example.com", "password": "abc321", "metadata": {"x": "y" * 17000}}
    response = await client.post("/user", json=big)
    await assert_error(response, 413, "body_too_large")


async def test_body_just_under_16_kib_is_accepted(client: TestClient[Any, Any]) -> None:
    body = {"username": "a", "email": "a@example.com", "password": "abc321", "metadata": {"x": ""}}
    filler = 16 * 1024 - len(json.dumps(body))
    body["metadata"] = {"x": "y" * filler}
    assert len(json.dumps(body)) == 16 * 1024
    response = await client.post("/user", json=body)
    assert response.status == 200


async def test_unknown_route_gives_404(client: TestClient[Any, Any]) -> None:
    response = await client.get("/no/such/route")
    await assert_error(response, 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [("PUT", "/user"), ("DELETE", "/user"), ("GET", "/user/auth")])
async def test_wrong_method_gives_405_with_allow(client: TestClient[Any, Any], method: str, path: str) -> None:
    response = await client.request(method, path)
    await assert_error(response, 405, "method_not_allowed")
    assert "Allow" in response.headers


async def test_every_response_carries_a_request_id(client: TestClient[Any, Any]) -> None:
    ok = await client.get("/openapi.json")
    missing = await client.get("/nope")
    assert len(ok.headers["X-Request-Id"]) == 32
    assert ok.headers["X-Request-Id"] != missing.headers["X-Request-Id"]
    kept = await client.get("/nope", headers={"X-Request-Id": "caller-chosen-id.1"})
    assert kept.headers["X-Request-Id"] == "caller-chosen-id.1"
    replaced = await client.get("/nope", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["X-Request-Id"] != "bad id\twith spaces"


async def test_an_unexpected_fault_gives_a_bare_500(client: TestClient[Any, Any], monkeypatch: Any) -> None:
    service = client.app[SERVICE]

    async def explode(body: Any) -> Any:
        raise RuntimeError("SELECT secret FROM users -- internal detail")

    monkeypatch.setattr(service, "sign_in", explode)
    response = await client.post("/user/auth", json={"username": "a", "password": "abc321"})
    body = await assert_error(response, 500, "internal_error")
    text = json.dumps(body)
    assert "SELECT" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text


async def test_success_bodies_never_contain_an_error_key(client: TestClient[Any, Any]) -> None:
    create = await client.post("/user", json={"username": "a", "email": "a@example.com", "password": "abc321"})
    token = (await create.json())["token"]
    sign_in = await client.post("/user/auth", json={"username": "a", "password": "abc321"})
    me = await client.get("/user", headers={"Authorization": f"Bearer {token}"})
    for response in (create, sign_in, me):
        assert response.status == 200
        assert "error" not in await response.json()


# Compressed and broken bodies, and answers made outside the middlewares (issue 11, sections 3 and 5).


async def raw_exchange(client: TestClient[Any, Any], data: bytes, *, then: bytes | None = None) -> bytes:
    """Send ``data`` on a fresh connection to the test server (and ``then``, if given, once it has answered
    ``100 Continue``), and read until its final answer is complete or it closes the connection."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        received = b""
        if then is not None:
            received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert received.startswith(b"HTTP/1.1 100 "), received
            writer.write(then)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5) if length else b""
        return received + head + body
    finally:
        writer.close()


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The last response in ``raw``: status, headers (lower-case names) and JSON body."""
    head, _, body = raw.rpartition(b"HTTP/1.")[2].partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, json.loads(body)


def assert_json_error(raw: bytes, status: int, code: str) -> dict[str, str]:
    got_status, headers, body = parse_answer(raw)
    assert (got_status, body.get("code")) == (status, code), raw[:300]
    assert set(body) == ERROR_KEYS
    assert body["statusCode"] == status
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["server"] == "mixauth"  # never aiohttp's own, which names Python's and aiohttp's versions
    assert len(headers["x-request-id"]) == 32
    return headers


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("gzip", gzip.compress(b'{"username": "a", "password": "abc321"}')),
        ("gzip", b"\x1f\x8b\x08\x00 not really gzip"),
        ("deflate", b"not deflate at all"),
        ("br", b"\x0b\x02\x80{}\x03"),
        ("x-gzip", gzip.compress(b"{}")),
        ("identity, gzip", gzip.compress(b"{}")),
        ("GZIP", gzip.compress(b"{}")),
    ],
)
async def test_compressed_bodies_are_refused_with_415(client: TestClient[Any, Any], encoding: str, raw: bytes) -> None:
    response = await client.post(
        "/user/auth", data=raw, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    await assert_error(response, 415, "unsupported_content_encoding")


async def test_identity_is_no_compression(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/user/auth", json={"username": "a", "password": "abc321"}, headers={"Content-Encoding": "identity"}
    )
    await assert_error(response, 403, "invalid_credentials")


async def test_no_request_body_is_ever_inflated(client: TestClient[Any, Any]) -> None:
    # Every connection's parser is built with auto_decompress off: a body drained unread after an answer, or
    # read by any handler, stays as small as it was sent.
    runner = client.server.runner
    assert runner is not None
    assert runner.server is not None
    assert runner.server._kwargs["auto_decompress"] is False


async def test_a_body_announced_over_the_limit_is_answered_at_once(client: TestClient[Any, Any]) -> None:
    # Nothing of the gigabyte follows the headers: the answer must not wait for it.
    raw = await raw_exchange(client, b"POST /user/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert_json_error(raw, 413, "body_too_large")


async def test_a_client_that_aborts_mid_body_is_one_quiet_line(tmp_path: Path) -> None:
    # A real server process: the test server cancels a handler whose client left (handler_cancellation),
    # ``python -m server`` lets it run on, as run_app does, and so meets the hang-up inside the body's read.
    server = await start_server(tmp_path)
    try:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /user HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
        # Once the server says continue, its handler is reading the body.
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 ")
        writer.write(b'{"username": ')
        await writer.drain()
        writer.transport.abort()
        for _ in range(500):  # bounded: until the server has seen the connection go
            if '"request.aborted"' in server.log_path.read_text():
                break
            await asyncio.sleep(0.01)
    finally:
        _, events, stderr = server.stop()
    aborted = [event for event in events if event["event"] == "request.aborted"]
    assert [event["level"] for event in aborted] == ["info"], events
    assert not [event for event in events if "exception" in event or event["level"] in {"error", "critical"}]
    assert stderr == ""


async def test_a_broken_chunked_body_is_a_400(client: TestClient[Any, Any], log_guard: list[str]) -> None:
    raw = await raw_exchange(
        client,
        b"POST /user/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        then=b"2\r\n{}\r\nzz\r\n",
    )
    assert_json_error(raw, 400, "bad_request")
    assert not [line for line in log_guard if '"exception"' in line or '"level": "error"' in line]


@pytest.mark.parametrize("path", ["/user", "/user/auth", "/nope", "/health/live"])
async def test_a_request_with_100_continue_is_answered_as_one_without(client: TestClient[Any, Any], path: str) -> None:
    """Requests without an Expect header take the shorter road to the middleware (``routed``), the others
    aiohttp's own (``Application._handle``): both answer alike, with the JSON error body and headers."""
    token = await sign_up(client)
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n".encode()
    answers = [parse_answer(await raw_exchange(client, head + b"\r\n"))]
    # aiohttp says "100 Continue" first (for a GET, too): the final answer follows.
    answers.append(parse_answer(await raw_exchange(client, head + EXPECT + b"\r\n", then=b"")))
    for _, headers, _ in answers:
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["server"] == "mixauth"
        assert len(headers["x-request-id"]) == 32
    assert [(status, body) for status, _, body in answers[1:]] == [(status, body) for status, _, body in answers[:1]]


EXPECT = b"Expect: 100-continue\r\n"


def test_only_an_application_with_one_middleware_and_no_sub_application_is_routed_directly() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    def application(middlewares: int, sub_application: bool = False) -> web.Application:
        app = web.Application(middlewares=[request_middleware(())] * middlewares)
        app.router.add_get("/", handler)
        if sub_application:
            app.add_subapp("/sub", web.Application())
        return app

    assert routed(application(1)) is not None
    assert routed(application(0)) is None
    assert routed(application(2)) is None
    assert routed(application(1, sub_application=True)) is None


async def test_the_router_s_answer_is_remembered_for_routes_without_variables_only() -> None:
    async def handler(request: web.Request) -> web.Response:
        resource = request.match_info.route.resource
        assert resource is not None
        return web.Response(text=f"{resource.canonical} {dict(request.match_info)}")

    app = web.Application(middlewares=[request_middleware(())])
    app.router.add_get("/", handler)
    app.router.add_get("/item/{id}", handler)
    handle = routed(app)
    assert handle is not None

    async def answer(method: str, path: str) -> tuple[int, str, object]:
        request = make_mocked_request(method, path, app=app)
        response = await handle(request)
        assert isinstance(response, web.Response)
        return response.status, response.text or "", request.match_info

    first, again = await answer("GET", "/"), await answer("GET", "/")
    assert first[:2] == again[:2] == (200, "/ {}")
    assert first[2] is again[2]  # remembered
    # Not remembered: each request's own variables, and the router's 405 and 404.
    assert [(await answer("GET", f"/item/{n}"))[:2] for n in (1, 2, 1)] == [
        (200, "/item/{id} {'id': '1'}"),
        (200, "/item/{id} {'id': '2'}"),
        (200, "/item/{id} {'id': '1'}"),
    ]
    refused = [("POST", "/"), ("GET", "/nope"), ("POST", "/")]
    assert [(await answer(*request))[0] for request in refused] == [405, 404, 405]
    # Request targets beyond what is remembered (a query string each) still resolve, and alike.
    for n in range(3 * MAX_REMEMBERED_ROUTES):
        assert (await answer("GET", f"/?n={n}"))[:2] == (200, "/ {}")
    assert (await answer("GET", "/item/3"))[:2] == (200, "/item/{id} {'id': '3'}")


async def test_the_middleware_lets_a_cancellation_through() -> None:
    async def cancelled(request: web.Request) -> web.StreamResponse:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await request_middleware(())(make_mocked_request("GET", "/user"), cancelled)


PARSER_ERRORS = {
    "bad_method": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_method"),
    "not_http": (b"GARBAGE\r\n\r\n", "bad_method"),
    "header_too_long": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "header_too_large"),
    "path_too_long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "header_too_large"),
    "space_in_header_name": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", "bad_request"),
    "nul_in_header_value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "bad_request"),
    "two_lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "bad_request"),
    "bad_chunk_size": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_request"),
    "http_2_preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad_request"),
}


@pytest.mark.parametrize("case", sorted(PARSER_ERRORS))
async def test_the_http_parsers_own_errors_are_the_json_error_body(
    client: TestClient[Any, Any], log_guard: list[str], case: str
) -> None:
    request_bytes, code = PARSER_ERRORS[case]
    headers = assert_json_error(await raw_exchange(client, request_bytes), 400, code)
    assert headers.get("connection", "close").lower() == "close"
    # One line, without the request's bytes (they may hold a token or a password) and without a traceback.
    malformed = [json.loads(line) for line in log_guard if '"http.request_malformed"' in line]
    assert len(malformed) == 1
    assert set(malformed[0]) >= {"error", "status", "request_id", "client_ip"}
    assert not [line for line in log_guard if '"exception"' in line or '"level": "error"' in line]


@pytest.mark.parametrize("path", ["/user", "/user/auth", "/nope"])
@pytest.mark.parametrize(
    "expect",
    [b"200-ok", b"100-continu\xe9", b"\xff\xfe", b"100-continue, foo", b"100-continue\r\nExpect: 100-continue"],
)
async def test_any_expectation_but_100_continue_is_a_json_417(
    client: TestClient[Any, Any], path: str, expect: bytes
) -> None:
    raw = await raw_exchange(
        client,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\nExpect: ".encode()
        + expect
        + b"\r\n\r\n{}",
    )
    assert not raw.startswith(b"HTTP/1.1 100"), raw[:100]
    assert_json_error(raw, 417, "expectation_failed")


async def test_100_continue_still_continues(client: TestClient[Any, Any]) -> None:
    raw = await raw_exchange(
        client,
        b"POST /user/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n",
        then=b"{}",
    )
    assert_json_error(raw, 400, "missing_field")


async def test_http_1_0_expectations_are_ignored(client: TestClient[Any, Any]) -> None:
    raw = await raw_exchange(client, b"POST /user/auth HTTP/1.0\r\nContent-Length: 2\r\nExpect: 200-ok\r\n\r\n{}")
    assert_json_error(raw, 400, "missing_field")


@pytest.mark.parametrize(("method", "path"), [("GET", "/health/live"), ("GET", "/user"), ("GET", "/nope")])
async def test_answers_name_the_product_but_no_version(client: TestClient[Any, Any], method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.headers["Server"] == "mixauth"
