"""The log canary: malformed requests carrying a password and a valid token, against a real server process.

aiohttp's own "Error handling request" lines quoted the raw request bytes (a bearer token ending in \\x7f, a
JSON body sent without Content-Length on ``Connection: close``), which no test of mixauth's own events
could see. Here every kind of malformed request the HTTP parser, the middlewares and the handlers can meet
carries the canary password and a token the server would accept, at LOG_LEVEL=debug, and the whole of
what the process wrote, stdout and stderr, is searched afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from tests.conftest import JWT_SECRET, PASSWORD, secrets_in
from tests.process import start_server

BODY = json.dumps({"username": "canary", "password": PASSWORD}).encode()
FORM = f"username=canary&password={PASSWORD}".encode()


def malformed_requests(token: str) -> list[tuple[str, bytes]]:
    """(name, raw bytes) pairs; each is sent on a connection of its own."""
    tok = token.encode()
    pw = PASSWORD.encode()
    auth = b"Authorization: Bearer " + tok
    # Connection: close, so that the server answers what it can parse and then closes.
    get = b"GET /user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    post = b"POST /user/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    return [
        # Request lines the parser refuses.
        ("junk after the version", b"GET /user?password=" + pw + b" HTTP/1.1 junk\r\nHost: x\r\n\r\n"),
        ("unknown version", b"GET /user?token=" + tok + b" HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("control byte in the method", b"G\x7fT /?password=" + pw + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("no version", b"POST /user/auth?password=" + pw + b"\r\n\r\n"),
        ("a JSON body as the request line", BODY + b"\r\n\r\n"),
        ("TLS on the HTTP port", b"\x16\x03\x01\x02\x00\x01\x00" + BODY),
        ("control byte in the target", b"GET /user/\x01" + pw + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("absolute target with credentials", b"GET http://u:" + pw + b"@x/\x00 HTTP/1.1\r\nHost: x\r\n\r\n"),
        # Bodies without a length on a closing connection: the body is read as the next request.
        ("JSON without Content-Length", post + b"\r\n" + BODY),
        ("form without Content-Length", post + b"\r\n" + FORM),
        ("pipelined after close", post + b"Content-Length: 2\r\n\r\n{}" + post + b"\r\n" + BODY),
        ("body longer than its length", post + b"Content-Length: 5\r\n\r\n" + BODY),
        # Header values with odd bytes.
        ("bearer token ending in DEL", get + auth + b"\x7f\r\n\r\n"),
        ("bearer token ending in latin-1", get + auth + b"\xe9\r\n\r\n"),
        ("bearer token with NUL", get + auth + b"\x00x\r\n\r\n"),
        ("password in a header, DEL", get + b"X-Note: " + pw + b"\x7f\r\n\r\n"),
        ("cookie with latin-1", get + b"Cookie: s=" + pw + b"\xff\r\n\r\n"),
        ("header name with a password", get + b"" + pw + b"\x01: 1\r\n\r\n"),
        (
            "latin-1 request id",
            get + b"X-Request-Id: \xe9" + pw + b"\r\n" + auth + b"\r\n\r\n",
        ),
        ("folded header", get + b"Authorization: Bearer\r\n " + tok + b"\r\n\r\n"),
        # Oversized parts.
        ("oversized authorization", get + auth + b"A" * 9000 + b"\r\n\r\n"),
        ("oversized header", get + b"X-Pad: " + pw + b"x" * 9000 + b"\r\n\r\n"),
        ("oversized request line", b"GET /?password=" + pw + b"&p=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("too many headers", get + b"" + b"X-A: 1\r\n" * 200 + auth + b"\r\n\r\n"),
        # Broken chunked framing.
        ("bad chunk size", post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + BODY + b"\r\n0\r\n\r\n"),
        ("chunk extension", post + b"Transfer-Encoding: chunked\r\n\r\n5;password=" + pw + b"\n\r\nabcde\r\n0\r\n\r\n"),
        ("short chunk", post + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (len(BODY) + 9) + BODY + b"\r\n0\r\n\r\n"),
        ("long chunk", post + b"Transfer-Encoding: chunked\r\n\r\n4\r\n" + BODY + b"\r\n0\r\n\r\n"),
        ("oversized chunk line", post + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 9000 + pw + b"\r\n\r\n"),
        (
            "gzip then chunked",
            post + b"Transfer-Encoding: gzip, chunked\r\n\r\n%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
        ),
        ("chunked on HTTP/1.0", post.replace(b"1.1", b"1.0") + b"Transfer-Encoding: chunked\r\n\r\n" + BODY),
        ("chunked and a length", post + b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n" + BODY),
        ("two lengths", post + b"Content-Length: %d\r\nContent-Length: 3\r\n\r\n" % len(BODY) + BODY),
        ("negative length", post + b"Content-Length: -1\r\n\r\n" + BODY),
        # Truncated bodies and JSON.
        ("truncated body", post + b"Content-Length: %d\r\n\r\n" % (len(BODY) + 50) + BODY),
        ("truncated JSON", post + b"Content-Length: %d\r\n\r\n" % (len(BODY) - 2) + BODY[:-2]),
        ("latin-1 in the JSON", post + b"Content-Length: %d\r\n\r\n" % (len(BODY) + 1) + BODY[:-2] + b'\xe9"}'),
        # Expect oddities.
        ("expect with latin-1", post + b"Expect: 100-continue\xe9\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY),
        ("expect naming the password", post + b"Expect: " + pw + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY),
        ("expect without waiting", post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY),
        ("expect, no body", post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY)),
    ]


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it; a server still waiting for
    the rest of a request after a second gets the end of the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 1)
        except TimeoutError:
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_no_secret_reaches_the_output_of_a_real_server(tmp_path: Path) -> None:
    server = await start_server(tmp_path, JWT_SECRET=JWT_SECRET, LOG_LEVEL="debug", TRUSTED_PROXIES="127.0.0.1")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        signup = json.dumps({"username": "canary", "email": "canary@example.com", "password": PASSWORD}).encode()
        answer = await exchange(
            port,
            b"POST /user HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(signup) + signup,
        )
        assert b" 200 " in answer.split(b"\r\n", 1)[0]
        token = json.loads(answer.split(b"\r\n\r\n", 1)[1])["token"]
        for _, data in malformed_requests(token):
            await exchange(port, data)
        # A successful sign-in through a trusted proxy whose X-Forwarded-For holds latin-1 bytes: the text of
        # the header reaches the log context.
        await exchange(
            port,
            b"POST /user/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: fe80::1%\xe9" + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY,
        )
    finally:
        code, _, stderr = server.stop()
    stdout = server.log_path.read_text(encoding="utf-8", errors="surrogateescape")
    assert code == 0
    assert secrets_in(stdout) == []
    assert token not in stdout
    assert secrets_in(stderr) == []
    assert "Logging error" not in stderr
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines()]  # every line is one JSON object
    assert all(isinstance(line, dict) for line in lines)
    events = [line["event"] for line in lines]
    assert events[0] == "server.starting"
    assert events[-1] == "server.stopped"
    assert events.count("http.request_malformed") >= 20
