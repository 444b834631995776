"""The JSON log pipeline: one parseable line per event whatever is logged, secrets redacted in every field and
every string (foreign records and tracebacks included), tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import bcrypt
import jwt
import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, InvalidHeader, LineTooLong, TransferEncodingError
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import server.logs
from server.logs import (
    MALFORMED_REQUEST_EVENT,
    REDACTED,
    SECRET_KEY_STEMS,
    SENSITIVE_KEYS,
    configure_logging,
    hints_in,
    is_secret_key,
    redact_text,
    render_line,
)
from server.web.keys import SERVICE
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, secrets_in

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
    assert events == ["webhook.not_configured", "token.rejected"]  # start-up's warning: no webhook is set


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


# The redaction step: every string in every line, whichever library logged it.

TOKEN = jwt.encode({"id": "6b0a7249ecdc3bd70541b10a", "scope": ["user"], "iat": 1, "exp": 2}, JWT_SECRET)
BCRYPT_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"token {TOKEN} in free text", TOKEN.split(".")[1]),
        (f"truncated {TOKEN[:60]}", TOKEN[20:60]),
        (f"hash {BCRYPT_HASH}.", BCRYPT_HASH[7:]),
        (f"hash {BCRYPT_HASH.replace('$2b$', '$2a$')}", BCRYPT_HASH[7:]),
        (f"hash {BCRYPT_HASH.replace('$2b$', '$2y$')[:30]}", BCRYPT_HASH[7:30]),
        (f"b'Authorization: Bearer {TOKEN}\\x7f'", TOKEN.split(".")[2]),
        ("b'Authorization: Basic dXNlcjpjYW5hcnk=\\r\\n'", "dXNlcjpjYW5hcnk"),
        ("{'authorization': 'Bearer opaque-credential-1'}", "opaque-credential-1"),
        ("header Bearer opaque-credential-1, more", "opaque-credential-1"),
        ("b'Cookie: session=opaque-credential-1; theme=dark\\r\\nHost: x'", "opaque-credential-1"),
        (f'b\'{{"username": "u", "password": "{PASSWORD}"}}\'', PASSWORD),
        (f'{{\\"email\\": \\"e\\", \\"newPassword\\": \\"{PASSWORD}\\"}}', PASSWORD),
        (f"{{'password': '{PASSWORD}'}}", PASSWORD),
        (f'{{"password": "{PASSWORD}', PASSWORD),  # cut off before the closing quote
        (f'{{"password":"ab\\"{PASSWORD}"}}', PASSWORD),  # an escaped quote inside the value
        # An escaped quote inside the value, in JSON inside a JSON string and in the repr of JSON bytes.
        (json.dumps(json.dumps({"a": 1, "password": f'x"{PASSWORD}'})), PASSWORD),
        (repr(json.dumps({"password": f'x"{PASSWORD}'}).encode()), PASSWORD),
        (f"GET /user?PASSWORD={PASSWORD}&x=1 HTTP/1.1", PASSWORD),
        (f"username=u&password={PASSWORD}\\x7f", PASSWORD),
        (f"password: {PASSWORD}", PASSWORD),
        ('{"code": "reset-code-abcdef", "password": "x"}', "reset-code-abcdef"),
        ('{"client_secret": "opaque-credential-1"}', "opaque-credential-1"),
        ("x-api-key=opaque-credential-1", "opaque-credential-1"),
        (f'"access_token": "{TOKEN}"', TOKEN),
    ],
)
def test_each_text_pattern_is_redacted(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert REDACTED in redacted
    assert secrets_in(redacted) == []
    assert redact_text(redacted) == redacted  # redacting twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "Password must be at least 6 characters.",
        "token.rejected",
        "statusCode: 400",
        "/user/change-password",
        '{"event":"http.request","route":"/user","status":200,"request_id":"1c5cd1df935de242d94c577eaf3dbec1"}',
    ],
)
def test_text_without_secrets_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_every_sensitive_key_is_a_secret_key_and_passes_the_pre_check() -> None:
    assert all(is_secret_key(key) for key in SENSITIVE_KEYS)
    # A line whose only secret is a field named like one must not skip the scan.
    assert all(hints_in(stem) and hints_in(stem.upper()) for stem in SECRET_KEY_STEMS)
    assert all(is_secret_key(key) for key in ("newPassword", "apiToken", "X-Api-Key", "client_secret", "Cookie"))
    assert not any(is_secret_key(key) for key in ("user_id", "reason", "event", "route", "status", "request_id"))


def test_secret_fields_are_redacted_at_any_depth_and_strings_everywhere() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    structlog.get_logger().info(
        "user.updated",
        metadata={"profile": {"apiToken": "opaque-credential-1"}, "notes": [f"my password={PASSWORD}"]},
        header=f"Bearer {TOKEN}",
        raw=f'{{"password": "{PASSWORD}"}}'.encode(),
    )
    (line,) = lines_of(stream)
    assert line["metadata"]["profile"]["apiToken"] == REDACTED
    assert line["metadata"]["notes"] == [f"my password={REDACTED}"]
    assert line["header"] == f"Bearer {REDACTED}"
    output = stream.getvalue()
    assert PASSWORD not in output
    assert "opaque-credential-1" not in output
    assert secrets_in(output) == []


def test_a_foreign_records_message_arguments_and_traceback_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        raise ValueError(f"could not parse {{'password': '{PASSWORD}'}}")
    except ValueError:
        logging.getLogger("asyncio").exception("Task failed with %s", f"Authorization: Bearer {TOKEN}")
    logging.getLogger("aiosqlite").info("executing %r", (BCRYPT_HASH, "abc@example.com"))
    failure, driver = lines_of(stream)
    assert failure["event"] == f"Task failed with Authorization: {REDACTED}"
    assert failure["exception"][0]["exc_value"] == f"could not parse {{'password': '{REDACTED}'}}"
    assert driver["event"] == f"executing ('{REDACTED}', 'abc@example.com')"
    assert secrets_in(stream.getvalue()) == []


def test_aiohttps_protocol_errors_are_one_concise_line_without_the_raw_request() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    raw = f"b'POST /x HTTP/1.1\\r\\nX-Note: {PASSWORD}\\x7f'"
    server_log = logging.getLogger("aiohttp.server")
    for error in (BadHttpMessage(f"Invalid header value char:\n\n  {raw}\n  ^"), LineTooLong(raw.encode(), 8190)):
        try:
            raise error
        except BadHttpMessage as exc:
            server_log.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    # A scanner's first line (TLS on the HTTP port) stays at DEBUG, where aiohttp puts it.
    server_log.debug("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMethod(raw))
    lines = lines_of(stream)
    assert lines == [
        {
            "event": MALFORMED_REQUEST_EVENT,
            "level": "info",
            "logger": "aiohttp.server",
            "error": name,
            "status": 400,
            "peer": "127.0.0.1",
            "timestamp": line["timestamp"],
        }
        for name, line in zip(("BadHttpMessage", "LineTooLong"), lines, strict=True)
    ]
    assert PASSWORD not in stream.getvalue()


def test_protocol_errors_are_dropped_below_the_level_and_scrubbed_inside_any_traceback() -> None:
    stream = io.StringIO()
    configure_logging("warning", stream=stream)
    logging.getLogger("aiohttp.server").error("Error handling", exc_info=InvalidHeader(PASSWORD.encode()))
    try:
        try:
            raise TransferEncodingError(f'bad chunk {{"password": "x"}} {PASSWORD}')
        except TransferEncodingError as exc:
            raise RuntimeError("body unreadable") from exc
    except RuntimeError:
        structlog.get_logger().exception("request.failed")
    (line,) = lines_of(stream)
    assert line["event"] == "request.failed"
    assert [entry["exc_value"] for entry in line["exception"]] == ["body unreadable", REDACTED]
    assert PASSWORD not in stream.getvalue()


def test_text_that_json_cannot_carry_is_escaped_on_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """Lone surrogates (bytes decoded with surrogateescape, as aiohttp decodes headers) made orjson raise: into
    the request on structlog's path, as a multi-line "--- Logging error ---" on stderr on the stdlib's."""
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    structlog.get_logger().info("request.rejected", client_ip="fe80::1%\udce9")
    logging.getLogger("aiohttp.web").warning("header %s", "caf\udce9")
    own, foreign = lines_of(stream)
    assert own["client_ip"] == "fe80::1%\\udce9"
    assert foreign["event"] == "header caf\\udce9"
    assert capsys.readouterr().err == ""


def test_a_record_that_cannot_be_rendered_is_one_json_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    logging.getLogger("aiohttp.web").warning("%d requests", "not a number")  # the stdlib's own formatting fails
    # Any step of the chain failing, on either path, the renderer included.
    monkeypatch.setattr(server.logs._Timestamper, "__call__", lambda *args: 1 / 0)
    structlog.get_logger("mixauth.test").info("user.created")
    logging.getLogger("asyncio").error("a foreign record")
    lines = lines_of(stream)
    assert [line["event"] for line in lines] == ["log.unrenderable"] * 3
    assert [(line["source_logger"], line["error"]) for line in lines] == [
        ("aiohttp.web", "TypeError"),
        ("mixauth.test", "ZeroDivisionError"),
        ("asyncio", "ZeroDivisionError"),
    ]
    assert capsys.readouterr().err == ""


def test_values_orjson_refuses_are_rendered_anyway() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    structlog.get_logger().info("odd", big=2**70, keys={1: "one", None: "none"}, deep=deep, obj=Unprintable())
    (line,) = lines_of(stream)
    assert line["big"] == str(2**70)
    assert line["keys"] == {"1": "one", "None": "none"}
    assert line["obj"] == "<unprintable Unprintable>"


def test_a_closed_stream_loses_the_line_instead_of_failing_the_caller() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    stream.close()
    structlog.get_logger().info("user.created")
    logging.getLogger("aiohttp.web").warning("lost too")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=20,
        ),
    )
)
def test_rendering_is_total_one_json_line_for_any_event(event: dict[str, Any]) -> None:
    line = render_line(event)
    assert "\n" not in line
    assert isinstance(json.loads(line), dict)
