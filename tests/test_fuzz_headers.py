"""Every byte in every header, over raw sockets, against a real server process: the body fuzzer's other half.

The server runs as users run it (``tests/process.py``), with ``TRUSTED_PROXIES=127.0.0.1`` so that it reads
X-Forwarded-For. Hypothesis builds requests whose headers (each one the server reads, and some it does not)
carry arbitrary bytes, lengths, repeats, name cases and text encodings, and sends each on its own connection.
Every answer, the HTTP parser's own included, must be below 500, carry ``X-Request-Id`` and ``nosniff``, and
be JSON: the contract's error body for an error. Afterwards the server's whole output must be JSON lines with
no traceback and no error. The run is seeded and bounded, so it takes seconds and a failure reproduces.

The framings a proxy may read differently from aiohttp are pinned one by one at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.process import Server, start_server

ERROR_KEYS = {"error", "message", "statusCode", "code"}
SEED = 20261129
MAX_EXAMPLES = 600
ANSWER_DEADLINE = 10.0

BODIES = [
    b"",
    b"{}",
    b'{"username":"fuzz","password":"fuzz-Pa55word"}',
    b'{"username":"fuzz","email":"fuzz@example.com","password":"fuzz-Pa55word"}',
]
TARGETS = [("GET", "/user"), ("POST", "/user"), ("POST", "/user/auth"), ("GET", "/health/live"), ("GET", "/nope")]

# What each header the server reads usually holds, and its near misses; the fuzzer mutates and mixes them.
TYPICAL: dict[str, list[bytes]] = {
    "Authorization": [
        b"Bearer ",
        b"Bearer a.b.c",
        b"Basic dXNlcjpwYXNz",
        b"Bearer eyJhbGciOiJub25lIn0.e30.",
        b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjAifQ.c2ln",
    ],
    "Content-Type": [b"application/json", b"application/json; charset=latin-1", b"text/plain", b"a/b+json; x="],
    "Content-Length": [b"0", b"-1", b"1e3", b"+2", b"0x10", b"99999999999999999999999", b" 2"],
    "Content-Encoding": [b"gzip", b"deflate", b"br", b"identity", b"identity, gzip", b"x-gzip", b"zstd"],
    "Transfer-Encoding": [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"CHUNKED", b"chunked;x"],
    "Expect": [b"100-continue", b"100-CONTINUE", b"200-ok", b"100-continue, x", b""],
    "X-Request-Id": [b"abc", b"a" * 129, b"../../etc", b"\xe9t\xe9"],
    "X-Forwarded-For": [b"198.51.100.1", b"fe80::1%eth0", b"::ffff:1.2.3.4", b"1.2.3.4, unknown", b"[::1]:80"],
    "Connection": [b"close", b"keep-alive", b"upgrade", b"Upgrade, close", b"te"],
    "Host": [b"example.com", b"", b"a b", b"[::1]:2200", b"\xff\xfe"],
    # Headers the server does not read.
    "Upgrade": [b"websocket", b"h2c", b"HTTP/2.0"],
    "Accept": [b"text/html", b"*/*"],
    "Cookie": [b"session=abc"],
    "X-Unknown": [b"?"],
}


def spellings(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper()])


def encodings(text: str) -> st.SearchStrategy[bytes]:
    return st.sampled_from(["utf-8", "latin-1", "utf-16-le", "cp1252"]).map(
        lambda codec: text.encode(codec, errors="replace")
    )


# Bytes that are not text, or that mean something inside a header value.
ODD_BYTES = st.sampled_from([b"\xe9", b"\xff", b"\x80", b"\xc3\xa9", b"\xed\xa0\x80", b"%", b",", b";", b" ", b"\t"])


def inserted(value: bytes) -> st.SearchStrategy[bytes]:
    """``value`` with a few arbitrary bytes put in at any place."""
    return st.tuples(st.integers(0, len(value)), st.one_of(st.binary(min_size=1, max_size=3), ODD_BYTES)).map(
        lambda cut: value[: cut[0]] + cut[1] + value[cut[0] :]
    )


# Bytes a header value may hold on the wire (RFC 9110's field-vchar, obs-text, space and tab): the parser
# takes these, so the server's own reading of the header is what is tested.
WIRE_BYTES = st.lists(st.integers(0x20, 0xFF).filter(lambda byte: byte != 0x7F) | st.just(0x09), max_size=48).map(bytes)


def values_for(name: str) -> st.SearchStrategy[bytes]:
    typical = st.sampled_from(TYPICAL[name])
    return st.one_of(
        typical,
        typical.flatmap(inserted),
        typical.flatmap(inserted).flatmap(inserted),
        WIRE_BYTES,
        st.binary(max_size=48),
        st.text(max_size=24).flatmap(encodings),
        st.integers(min_value=1, max_value=10_000).map(lambda n: b"A" * n),
    )


def fields_for(name: str) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """One header, sent once or repeated, each time with its own spelling and value."""
    one = st.tuples(spellings(name), values_for(name))
    return st.lists(one, min_size=1, max_size=3)


# Headers beside the one under the lens, with values that pass, so that the request gets as far as the
# server's reading of the fuzzed one.
BESIDE = st.sampled_from(
    [
        ("Accept", b"*/*"),
        ("User-Agent", b"fuzz"),
        ("Cookie", b"a=b"),
        ("Host", b"example.com"),
        ("X-Request-Id", b"fuzz-1"),
        ("Content-Type", b"application/json"),
        ("X-Forwarded-For", b"198.51.100.1"),
    ]
)

# Each example puts one header under the lens (so every header gets its share of the examples), sent once
# or repeated, among a few ordinary ones, in any order.
headers = st.tuples(
    st.sampled_from(sorted(TYPICAL)).flatmap(fields_for),
    st.lists(BESIDE, max_size=3),
).flatmap(lambda drawn: st.permutations(drawn[0] + drawn[1]))


def request_bytes(method: str, path: str, version: bytes, fields: list[tuple[str, bytes]], body: bytes) -> bytes:
    """The request, with what the fuzzed headers leave out filled in: a Host (HTTP/1.1 requires one), the
    body's length or last chunk, and ``Connection: close`` last, so that the server ends the connection once
    it answered."""
    named = {name.lower() for name, _ in fields}
    if "transfer-encoding" in named and not body:
        body = b"0\r\n\r\n"  # a chunked request with no chunk at all is still being sent: the server waits
    lines = [f"{method} {path} ".encode() + version]
    if "host" not in named:
        lines.append(b"Host: example.com")
    if body and not named & {"content-length", "transfer-encoding"}:
        lines.append(b"Content-Length: %d" % len(body))
    for name, value in fields:
        if name.lower() == "content-length":
            # A length beyond what is sent makes the server wait for the rest, as it should: not a finding.
            text = value.strip(b" \t")
            if text.isdigit() and len(body) < int(text) <= 16 * 1024:
                value = str(len(body)).encode()
        lines.append(name.encode() + b": " + value)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection.

    A connection the request asked to keep open (HTTP/1.0 with ``keep-alive``) is ended from this side,
    once what was read so far is one or more whole answers.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE) as connection:
        with contextlib.suppress(ConnectionError):  # refused mid-send: what it answered is still to be read
            connection.sendall(data)
        received = b""
        deadline = time.monotonic() + ANSWER_DEADLINE
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                return received
            except TimeoutError:
                break
            if not chunk:
                return received
            received += chunk
            if whole_answers(received):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_WR)
        raise AssertionError(f"no end of answer within {ANSWER_DEADLINE}s to {data[:300]!r}: {received[:300]!r}")


def whole_answers(stream: bytes) -> bool:
    """Whether ``stream`` is one or more complete responses and nothing more."""
    final = False
    while stream:
        head, separator, rest = stream.partition(b"\r\n\r\n")
        if not separator:
            return False
        status = head[9:12]
        if status.startswith(b"1"):
            stream = rest
            continue
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        if length is None or len(rest) < int(length.group(1)):
            return False
        stream, final = rest[int(length.group(1)) :], True
    return final


def responses(stream: bytes) -> Iterator[tuple[int, dict[str, str], bytes]]:
    """The final responses in ``stream`` (1xx interim answers skipped), each as status, headers and body."""
    while stream:
        head, separator, rest = stream.partition(b"\r\n\r\n")
        assert separator, f"an incomplete response: {stream[:300]!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        protocol, status_text, *_ = status_line.split(" ", 2)
        assert protocol.startswith("HTTP/"), status_line
        fields: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        status = int(status_text)
        if 100 <= status < 200:
            stream = rest
            continue
        length = int(fields["content-length"])
        yield status, fields, rest[:length]
        stream = rest[length:]


def check_answer(stream: bytes, request: bytes) -> None:
    answered = list(responses(stream))
    for status, fields, body in answered:
        assert status < 500, (status, body, request[:500])
        assert fields.get("x-content-type-options") == "nosniff", fields
        assert fields.get("x-request-id"), fields
        assert fields.get("content-type", "").startswith("application/json"), (fields, body)
        document = json.loads(body)
        if status >= 400:
            assert set(document) == ERROR_KEYS, document
            assert document["statusCode"] == status, document
        else:
            assert "error" not in document, document


def check_output(server: Server) -> None:
    code, lines, stderr = server.stop()  # stop() parses every stdout line as JSON
    assert code == 0
    assert stderr.strip() == "", stderr[:2000]
    raw = server.log_path.read_text()
    assert "Traceback" not in raw
    for line in lines:
        assert not {"exception", "exc_info"} & set(line), line
        assert line.get("level") not in {"error", "critical"}, line


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = asyncio.run(start_server(tmp_path, TRUSTED_PROXIES="127.0.0.1", USER_SIGNIN_RATE_LIMIT_IP="1000000"))
    try:
        yield served
    finally:
        served.kill()


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_every_header_with_any_bytes_gets_a_json_answer_below_500(server: Server) -> None:
    port = port_of(server)

    @seed(SEED)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        target=st.sampled_from(TARGETS),
        version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
        fields=headers,
        body=st.sampled_from(BODIES),
    )
    def one_request(target: tuple[str, str], version: bytes, fields: list[tuple[str, bytes]], body: bytes) -> None:
        method, path = target
        request = request_bytes(method, path, version, fields, body)
        check_answer(exchange(port, request), request)

    one_request()
    check_output(server)


# Framings aiohttp's parser accepts or may accept, which a proxy in front can read otherwise (request smuggling):
# each is refused with the JSON 400, and the connection is closed (the server's answer is the last thing sent).
POST = b"POST /user/auth HTTP/1.1\r\nHost: x\r\n"
AMBIGUOUS = {
    "transfer_coding_before_chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "two_transfer_encoding_fields": POST + b"Transfer-Encoding: gzip\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked_on_http_1_0": b"POST /user/auth HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "content_length_and_chunked": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "duplicate_content_length": POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "conflicting_content_length": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "http_0_9_request_line": b"GET /health/live\r\n\r\n",
    "http_0_9_version": b"GET /health/live HTTP/0.9\r\n\r\n",
    "http_2_0_version": b"GET /health/live HTTP/2.0\r\nHost: x\r\n\r\n",
}


def test_ambiguous_framings_are_refused_and_the_connection_closed(server: Server) -> None:
    # What follows the refused request on the same connection is never answered: it is not read as a request.
    smuggled = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    wrong: dict[str, Any] = {}
    for name, request in AMBIGUOUS.items():
        answered = list(responses(exchange(port_of(server), request + smuggled)))
        if len(answered) != 1 or answered[0][0] != 400:
            wrong[name] = [(status, body[:120]) for status, _, body in answered]
            continue
        _, fields, body = answered[0]
        document: dict[str, Any] = json.loads(body)
        assert set(document) == ERROR_KEYS, (name, document)
        assert document["statusCode"] == 400, (name, document)
        assert fields["x-content-type-options"] == "nosniff", (name, fields)
        assert fields["x-request-id"], (name, fields)
        assert "keep-alive" not in fields.get("connection", "").lower(), (name, fields)  # and the server closed
    assert wrong == {}, wrong
    check_output(server)
