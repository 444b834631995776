"""The log guard that runs around every test: it sees every rendered line and recognises every secret."""

from __future__ import annotations

import asyncio
import json
import logging

import bcrypt

from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, bearer, secrets_in, sign_up


def test_each_kind_of_secret_is_recognised() -> None:
    token_like = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ.c2lnbmF0dXJl"
    password_hash = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    assert secrets_in(f'{{"event": "x", "note": "{PASSWORD}"}}') == ["password"]
    assert secrets_in(f"secret={JWT_SECRET}") == ["jwt secret"]
    assert len(secrets_in(f"Authorization: Bearer {token_like}")) == 1
    assert len(secrets_in(f"hash {password_hash}")) == 1
    assert secrets_in('{"event": "user.created", "user_id": "6b0a64fb57b68c2d85506028"}') == []


async def test_the_guard_sees_every_line_a_request_renders(make_client: ClientFactory, log_guard: list[str]) -> None:
    client = await make_client()
    token = await sign_up(client)
    assert (await client.get("/user", headers=bearer(token))).status == 200
    events = [json.loads(line)["event"] for line in log_guard]
    assert "user.created" in events
    assert events.count("http.request") == 2


async def test_debug_logging_keeps_the_database_drivers_statements_out(
    make_client: ClientFactory, log_guard: list[str]
) -> None:
    """aiosqlite logs each statement with its parameters at debug level: a password hash in every INSERT."""
    assert logging.getLogger().isEnabledFor(logging.DEBUG)  # the guard logs everything
    client = await make_client()
    await sign_up(client)
    loggers = {json.loads(line)["logger"] for line in log_guard}
    assert "mixauth.auth" in loggers
    assert "aiosqlite" not in loggers


async def test_the_guard_sees_the_http_parsers_own_lines(make_client: ClientFactory, log_guard: list[str]) -> None:
    """aiohttp's parser logs malformed requests itself, through the stdlib: those lines reach the guard too,
    as one concise line without the request's bytes."""
    client = await make_client()
    token = await sign_up(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET /user HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x7f\r\n\r\n".encode())
    await writer.drain()
    assert b" 400 " in (await reader.readline())
    writer.close()
    await writer.wait_closed()
    malformed = [json.loads(line) for line in log_guard if "http.request_malformed" in line]
    assert [line["error"] for line in malformed] == ["BadHttpMessage"]
