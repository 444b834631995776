"""The logging's direct paths (``emit``, and ``emit_text`` for fields put together as text, rendered when the
line is written), which write the access line: the same line structlog's chain writes.

Same fields in the same order, the request context merged the same way, the same redaction, the same
writer; and it is only taken where ``configure_logging``'s chain would run (not under ``capture_logs``).
"""

from __future__ import annotations

import contextvars
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.contextvars import _CONTEXT_VARS
from structlog.testing import capture_logs

from server import logs
from server.logs import LineText, bind_request, configure_logging, context_field, line_logger_of

pytestmark = pytest.mark.usefixtures("restore_logging")

FIELDS = {"method": "GET", "route": "/user", "status": 200, "duration_ms": 0.25, "bytes": 138}


# FIELDS as the access log renders them for the direct path's text: its own words and numbers, as a "%" template
# of the duration's text and the size.
MEMBERS = ('"method":"GET","route":"/user","status":200,"duration_ms":%s,"bytes":%d', (0.25, 138))


def both_lines(
    request_id: Any,
    *,
    members: tuple[str, tuple[Any, ...]] | None = None,
    fields: dict[str, Any] | None = None,
    rendered: list[str] | None = None,
    unbound: tuple[str, ...] = (),
    **extra: Any,
) -> tuple[str, str]:
    """One line through structlog's chain and one through the direct path, with the same context; the direct
    path's calls of the renderer, if any, go to ``rendered``."""
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    log = structlog.get_logger("mixauth.access")

    def log_both() -> None:
        bind_request(request_id=request_id, client_ip="127.0.0.1", **extra)
        for name in unbound:
            context_field(name)
        log.info("http.request", **(fields or FIELDS))
        direct = line_logger_of(log)
        assert direct is not None
        renderer = direct.chain.renderer

        def counted(*args: Any) -> Any:
            (rendered if rendered is not None else []).append("rendered")
            return renderer(*args)

        direct.chain.renderer = counted
        given = fields or FIELDS
        if members is None:
            direct.emit("info", "http.request", dict(given))
        else:  # as the access log does
            fixed = tuple((name, given[name]) for name in ("method", "route", "status"))
            text = LineText(members[0], fixed, ("duration_ms", "bytes"))
            direct.emit_text("info", "http.request", text, members[1])

    contextvars.copy_context().run(log_both)  # a context of its own: nothing bound leaks into other tests
    chain, direct = stream.getvalue().splitlines()
    return chain, direct


def without_timestamp(line: str) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in json.loads(line).items() if key != "timestamp"]


def test_the_direct_line_is_the_chains_line_key_for_key_in_order() -> None:
    chain, direct = both_lines("de0fc050de4f4e2efa9c9947dc54a8d2", user_id="6b0a7249ecdc3bd70541b10a")
    assert without_timestamp(direct) == without_timestamp(chain)
    assert [key for key, _ in without_timestamp(direct)] == [
        *FIELDS,
        "event",
        "request_id",
        "client_ip",
        "user_id",
        "level",
        "logger",
    ]
    assert list(json.loads(direct))[-2:] == ["timestamp", "logger"]


def test_the_direct_line_is_redacted_as_every_line_is() -> None:
    token_like = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ.c2lnbmF0dXJl"  # a request id a client may send
    chain, direct = both_lines(token_like, api_token="s3cr3t-value")
    assert token_like not in direct
    assert "s3cr3t-value" not in direct
    assert without_timestamp(direct) == without_timestamp(chain)


@pytest.fixture
def only_these_context_fields() -> Iterator[None]:
    """structlog's context variables made during the test only: the fields bound before (by other tests, in
    this process) are neither bound nor present meanwhile, as in a server that binds only its own.

    structlog only ever adds variables, so the logging module notices new ones by their count: it is told
    here, where they are taken away.
    """
    saved = dict(_CONTEXT_VARS)
    _CONTEXT_VARS.clear()
    logs._context = logs._build_context()
    try:
        yield
    finally:
        _CONTEXT_VARS.clear()
        _CONTEXT_VARS.update(saved)
        logs._context = logs._build_context()


@pytest.mark.usefixtures("only_these_context_fields")
@pytest.mark.parametrize(
    ("request_id", "extra", "unbound", "as_text"),
    [
        # Every field plain, all bound (the server's authenticated request) or one made but not bound.
        ("de0fc050de4f4e2efa9c9947dc54a8d2", {"user_id": "6b0a7249ecdc3bd70541b10a"}, (), True),
        ("de0fc050de4f4e2efa9c9947dc54a8d2", {}, ("user_id",), True),
        ("unknown", {"user_id": "::1"}, (), True),
        # Not plain: the renderer sees the line (and redacts a token-like request id).
        ("eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ.c2lnbmF0dXJl", {}, (), False),
        ("eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ.c2lnbmF0dXJl", {}, ("user_id",), False),
        ("abc\x1fdef", {"user_id": "6b0a"}, (), False),  # holds the separator the values are checked with
        ("abc\x1fdef", {}, ("user_id",), False),
        ('abc"def', {}, (), False),  # would end the JSON string
        (12345, {"user_id": "6b0a"}, (), False),  # not a string
        (None, {}, ("user_id",), False),
        ("de0fc050", {"status": "made-up"}, (), False),  # a context field the line's own fields hold: the field wins
        ("de0fc050", {"status": "made-up"}, ("user_id",), False),
        ("de0fc050", {"api_token": "abc123"}, (), False),  # a name like a secret's
        ("de0fc050", {"api_token": "abc123"}, ("user_id",), False),
        ("de0fc050", {"Odd-Name": "abc"}, (), False),  # a name the text path does not vouch for
        ("de0fc050", {}, ("Odd-Name", "api_token"), True),  # such names, made but not bound, are not written
    ],
)
def test_the_line_put_together_as_text_is_the_chains_line(
    request_id: Any, extra: dict[str, Any], unbound: tuple[str, ...], as_text: bool
) -> None:
    rendered: list[str] = []
    chain, direct = both_lines(request_id, members=MEMBERS, rendered=rendered, unbound=unbound, **extra)
    assert without_timestamp(direct) == without_timestamp(chain)
    assert list(json.loads(direct)) == list(json.loads(chain))  # the same keys in the same order
    assert bool(rendered) is not as_text  # the renderer saw the line (the log guard renders it too), or never
    assert "eyJ" not in direct
    assert "abc123" not in direct


def test_a_percent_sign_in_the_fields_text_is_written_as_it_is() -> None:
    fields = {**FIELDS, "route": "/100%s"}
    members = ('"method":"GET","route":"/100%%s","status":200,"duration_ms":%s,"bytes":%d', (0.25, 138))
    rendered: list[str] = []
    chain, direct = both_lines("de0fc050", members=members, fields=fields, rendered=rendered)
    assert rendered == []
    assert without_timestamp(direct) == without_timestamp(chain)
    assert json.loads(direct)["route"] == "/100%s"


def test_no_direct_path_where_the_chain_is_not_configure_loggings() -> None:
    configure_logging("info", stream=io.StringIO())
    log = structlog.get_logger("mixauth.access")
    assert line_logger_of(log) is not None
    with capture_logs() as captured:
        assert line_logger_of(log) is None  # capture_logs replaces the processors: the chain must run
        log.info("http.request", **FIELDS)
    assert [entry["event"] for entry in captured] == ["http.request"]
    structlog.reset_defaults()
    assert line_logger_of(structlog.get_logger("mixauth.access")) is None


def test_values_json_cannot_carry_are_made_safe_as_on_the_chain() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    direct = line_logger_of(structlog.get_logger("mixauth.access"))
    assert direct is not None

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    direct.emit("info", "http.request", {"route": {1j: Broken()}, "bytes": 2**70})
    (line,) = stream.getvalue().splitlines()
    written = json.loads(line)
    assert (written["event"], written["route"], written["bytes"]) == (
        "http.request",
        {"1j": "<unprintable Broken>"},
        str(2**70),
    )


@pytest.mark.parametrize(
    ("ns", "timestamp"),
    [
        (1_796_000_000 * 10**9, "2026-11-30T00:53:20Z"),  # a whole second: no fraction, as isoformat writes it
        (1_796_000_000 * 10**9 + 1_000, "2026-11-30T00:53:20.000001Z"),
        (1_796_000_000 * 10**9 + 999_999_999, "2026-11-30T00:53:20.999999Z"),
    ],
)
def test_the_text_path_s_timestamp_is_the_chain_s(monkeypatch: pytest.MonkeyPatch, ns: int, timestamp: str) -> None:
    seconds = datetime.fromtimestamp(ns // 10**9, UTC).isoformat().replace("+00:00", "")
    assert timestamp.startswith(seconds)
    monkeypatch.setattr(logs, "time_ns", lambda: ns)  # the time emit_text takes
    rendered: list[str] = []
    chain, direct = both_lines("de0fc050", members=MEMBERS, rendered=rendered)
    assert json.loads(direct)["timestamp"] == timestamp
    assert without_timestamp(direct) == without_timestamp(chain)
    assert bool(rendered) is (ns % 10**9 == 0)  # a whole second takes the renderer's path


def test_values_the_template_cannot_take_are_written_by_the_renderer() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    direct = line_logger_of(structlog.get_logger("mixauth.access"))
    assert direct is not None
    text = LineText('"route":"/user","duration_ms":%s,"bytes":%d', (("route", "/user"),), ("duration_ms", "bytes"))
    contextvars.copy_context().run(direct.emit_text, "info", "http.request", text, (0.25, "many"))
    (line,) = stream.getvalue().splitlines()
    written = json.loads(line)
    assert (written["route"], written["duration_ms"], written["bytes"], written["event"]) == (
        "/user",
        0.25,
        "many",
        "http.request",
    )
