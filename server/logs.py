"""Structured JSON logging: every line, whichever library emits it, redacted and rendered as one JSON object.

Every line is one JSON object on stdout with ``timestamp``, ``level``, ``event`` and whatever the request
context bound (``request_id``, ``client_ip``, ``user_id``). mixauth's own events take structlog's path;
the stdlib's records (aiohttp, asyncio, aiosqlite, anything through the root logger) are rendered the same
way by one handler. Both paths end in the same redaction step, ``render_line``:

- structured: a field whose name suggests a secret (``password``, ``token``, ``api_key``, at any depth)
  is replaced with ``[redacted]``;
- text: in every string that reaches the line (the message, a foreign record's formatted arguments, an
  exception's text inside a rendered traceback), JWTs, bcrypt hashes, ``Authorization``/``Cookie`` values,
  ``Bearer`` credentials and password/secret/token fields in JSON, form or query syntax are replaced.

aiohttp's protocol errors (``BadHttpMessage`` and its kin) carry the raw request bytes in their message, so
a record about one becomes one concise ``http.request_malformed`` line (error class and status) and their
messages never appear in a traceback. Tracebacks are rendered as data without local variables.

Logging never fails and never writes anything but JSON lines: text that JSON cannot carry (lone
surrogates from bytes decoded with ``surrogateescape``) is escaped, a line that cannot be rendered at all
becomes a ``log.unrenderable`` line naming the error, and a stream that cannot be written to drops the
line rather than raising into the request that logged it. On the server (stdout), the lines logged in one
turn of the event loop are written together when it ends, in order; see ``_LineWriter``.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import functools
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from threading import get_ident
from time import time_ns
from typing import Any, NamedTuple, TextIO

import orjson


def _import_structlog() -> None:
    """Import structlog without the optional libraries of its console renderer, which mixauth never uses.

    ``structlog.dev`` looks for rich, better-exceptions and colorama at import; with rich installed, its
    traceback module (and pygments under it) took about 40 ms of the server's start-up. They are hidden
    from that one import only (and only when nothing imported them already): later imports find them.
    """
    hidden = [name for name in ("rich", "better_exceptions", "colorama") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable" mark
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


_import_structlog()

import structlog  # noqa: E402
from structlog.contextvars import _CONTEXT_VARS as _STRUCTLOG_VARS  # noqa: E402
from structlog.contextvars import STRUCTLOG_KEY_PREFIX  # noqa: E402
from structlog.tracebacks import ExceptionDictTransformer  # noqa: E402
from structlog.typing import EventDict, ExcInfo, Processor  # noqa: E402

SENSITIVE_KEYS = frozenset(
    {"password", "password_hash", "hash", "token", "access_token", "authorization", "secret", "jwt_secret"}
)
REDACTED = "[redacted]"
# Libraries whose debug output carries data that must not be logged: aiosqlite logs every statement with
# its parameters (password hashes included). They log at INFO at most, whatever LOG_LEVEL says.
QUIET_LIBRARIES = ("aiosqlite",)
MALFORMED_REQUEST_EVENT = "http.request_malformed"

# Parts of a field name that mark its value as a secret, in structured keys and in text alike.
SECRET_KEY_STEMS: tuple[str, ...] = ("passw", "pwd", "secret", "token", "apikey", "api_key", "api-key")
SECRET_KEY_STEMS += ("credential", "hash", "authoriz", "cookie")
_SECRET_NAME_PATTERN = "|".join(re.escape(stem) for stem in SECRET_KEY_STEMS)
_FIELD_HINTS = ("passw", "pwd", "secret", "token", "api", "credential", "hash", "authoriz", "cookie", "code")


class _TextRule(NamedTuple):
    hints: tuple[str, ...]  # lower-case substrings a match cannot do without
    separated: bool  # whether a match needs a ":" or "=" (a name, then its value)
    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]


# Each text pattern with the lower-case substrings it cannot match without: a text holding none of them skips
# the pattern, and a text holding none of any pattern's skips the scan (the access line, the most frequent
# one, does). Plain substring tests on lower-cased text cost a tenth of one regular expression alternation.
# Raw request bytes reach messages as Python reprs (b'...' with \x7f, \r\n escapes) or as escaped JSON, so
# the patterns accept optional backslashes before quotes and stop a value at a backslash escape.
_TEXT_RULES = (
    # A JWT: header, payload and signature, or whatever prefix of them a truncated message kept.
    _TextRule(("eyj",), False, re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # A bcrypt hash ($2a$, $2b$, $2y$, $2x$, $2$), whole or truncated.
    _TextRule(("$2",), False, re.compile(r"\$2[abxy]?\$\d{1,2}\$[./A-Za-z0-9]*"), REDACTED),
    # A credential-bearing header's whole value, up to the end of the line or the quote that closes it.
    _TextRule(
        ("authoriz", "cookie", "api"),
        True,
        re.compile(
            r"""((?:proxy-)?authorization|(?:set-)?cookie|x-api-key)(\\*["']?\s*[:=]\s*\\*["']?)[^\r\n"'\\]*""",
            re.IGNORECASE,
        ),
        rf"\1\2{REDACTED}",
    ),
    _TextRule(
        ("bearer",),
        False,
        re.compile(r"""\b(bearer)(\s+)(?!\[redacted\])(?:\\x[0-9a-f]{2}|[^\s"'\\,;])+""", re.IGNORECASE),
        rf"\1\2{REDACTED}",
    ),
    # A field named like a secret in JSON ("password": "..."), a Python repr ('token': '...'), a form or a
    # query (password=...), or free text (password: ...). A quoted value is redacted up to its closing quote:
    # the opening one, with as many backslashes before it (none in JSON, one in JSON inside a JSON string)
    # and not escaped itself, so an escaped quote inside the value (\", or \\" in a repr of JSON) does not
    # end it. Cut off before its closing quote, it is redacted to the end of the line. An unquoted value ends
    # at white space or "&" (the next form field): over-redacting a closing bracket costs nothing.
    _TextRule(
        _FIELD_HINTS,
        True,
        re.compile(
            rf"""((?:(?:{_SECRET_NAME_PATTERN})[\w-]*|(?<![\w-])code)\\*["']?\s*[:=]\s*)"""
            r"""(?!\[redacted\])(?:((\\*)(["']))(?:(?!(?<!\\)\3\4)[^\r\n])*|[^\s&]+)""",
            re.IGNORECASE,
        ),
        lambda match: f"{match[1]}{match[2] or ''}{REDACTED}",
    ),
)
_HINTS = tuple(dict.fromkeys(hint for rule in _TEXT_RULES for hint in rule.hints))
_MAX_DEPTH = 32
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson serialises as a number
_PREFIX_LENGTH = len(STRUCTLOG_KEY_PREFIX)


def hints_in(text: str, hints: tuple[str, ...] = _HINTS) -> tuple[str, ...]:
    """Which of ``hints`` the lower-cased ``text`` holds: none means no text pattern can match in it, and (for a
    rendered line) no field is named like a secret."""
    lowered = text.lower()
    for hint in hints:
        if hint in lowered:
            return tuple([hint for hint in hints if hint in lowered])
    return ()  # the common case, a clean line: each hint searched for once, no tuple built


def redact_text(text: str, hints: tuple[str, ...] = _HINTS) -> str:
    """``text`` with every JWT, bcrypt hash, credential header and secret-named field value replaced.

    ``hints``: the only hints worth looking for (those the whole line holds), to scan its strings faster.
    """
    found = hints_in(text, hints)
    if not found:
        return text
    separated = ":" in text or "=" in text
    for rule in _TEXT_RULES:
        if any(hint in found for hint in rule.hints) and (separated or not rule.separated):
            text = rule.pattern.sub(rule.replacement, text)
    return text


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret: ``SENSITIVE_KEYS`` and any name built on their stems."""
    # Cached: field names are few and come back on every line.
    lowered = key.lower()
    return any(stem in lowered for stem in SECRET_KEY_STEMS)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _clean_text(text: str, hints: tuple[str, ...], check_encoding: bool) -> str:
    text = redact_text(text, hints)
    if check_encoding:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, from bytes decoded with surrogateescape
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _clean(value: Any, hints: tuple[str, ...], check_encoding: bool, depth: int = 0) -> Any:
    """``value`` as plain JSON data, every secret-named field and every string redacted."""
    if isinstance(value, str):
        return _clean_text(value, hints, check_encoding)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else str(value)
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            # Names are the code's, not data: made safe to encode, and checked for a secret's name.
            name = _clean_text(key if isinstance(key, str) else _safe_str(key), (), check_encoding)
            secret = item is not None and is_secret_key(name)
            cleaned[name] = REDACTED if secret else _clean(item, hints, check_encoding, depth + 1)
        return cleaned
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, hints, check_encoding, depth + 1) for item in value]
    return _clean_text(_safe_str(value), hints, check_encoding)


def render_line(event_dict: EventDict, **_options: Any) -> str:
    """The one redaction step and JSON rendering every line goes through; it never raises.

    A line is rendered once and searched for the hints; only a line that holds one (or that orjson refuses)
    is walked, its strings searched for the hints the line holds, redacted and rendered again. A clean line
    costs one render and one search.
    """
    try:
        line = orjson.dumps(event_dict, default=_safe_str).decode()
    except (TypeError, orjson.JSONEncodeError):  # surrogates, huge integers, non-string keys, deep nesting
        hints, rendered = _HINTS, False
    else:
        hints, rendered = hints_in(line), True
        if not hints:
            return line
    try:
        # A line orjson rendered holds no text it cannot encode: no string needs checking for surrogates.
        return orjson.dumps(_clean(event_dict, hints, check_encoding=not rendered)).decode()
    except Exception as exc:
        return unrenderable_line(event_dict.get("logger"), event_dict.get("level"), exc)


def unrenderable_line(logger: Any, level: Any, error: BaseException | None) -> str:
    """The line written in place of one that could not be rendered: which logger, and why, nothing else."""
    return json.dumps(
        {
            "event": "log.unrenderable",
            "source_logger": logger if isinstance(logger, str) else None,
            "source_level": level if isinstance(level, str) else None,
            "error": type(error).__name__ if error is not None else None,
            "level": "error",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "logger": "mixauth.logs",
        },
        ensure_ascii=True,
    )


def _protocol_error(error: BaseException | None) -> int | None:
    """The HTTP status of one of aiohttp's protocol errors, None for any other exception.

    Known by the class's module and name, so that logging, which every command configures, does not import
    the web stack.
    """
    if error is None:
        return None
    for cls in type(error).__mro__:
        if cls.__name__ == "HttpProcessingError" and cls.__module__ == "aiohttp.http_exceptions":
            code = getattr(error, "code", 400)
            return code if isinstance(code, int) else 400
    return None


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [error]
    while pending and len(seen) < 64:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += list(getattr(current, "exceptions", ()))


class _TracebackTransformer:
    """structlog's traceback data, without local variables and without protocol errors' raw request bytes.

    Any other exception's text is redacted with the rest of the line by ``render_line``.
    """

    def __init__(self) -> None:
        self._transform = ExceptionDictTransformer(show_locals=False)

    def __call__(self, exc_info: ExcInfo) -> list[dict[str, Any]]:
        stack = self._transform(exc_info)
        protocol = {type(e).__name__ for e in _exception_chain(exc_info[1]) if _protocol_error(e) is not None}
        if protocol:
            self._scrub(stack, protocol)
        return stack

    def _scrub(self, stack: Any, names: set[str]) -> None:
        # An exception group's members are stacks of their own, nested under "exceptions".
        for entry in stack:
            if isinstance(entry, list):
                self._scrub(entry, names)
            elif isinstance(entry, dict):
                if entry.get("exc_type") in names:
                    entry["exc_value"] = REDACTED
                self._scrub(entry.get("exceptions") or [], names)


class _ProtocolErrorSummary(logging.Filter):
    """Turns a record about an aiohttp protocol error into one concise line: its class and status.

    aiohttp logs "Error handling request" at ERROR with the exception, whose message quotes the raw request
    (headers, body, a bearer token). The client sent a malformed request: that is worth an INFO line, not a
    traceback (a scanner's first garbage line, which aiohttp logs at DEBUG, stays at DEBUG).
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _protocol_error(error)
        if status is None:
            return True
        # aiohttp's "Error handling request from %s" names the peer, the one argument.
        args = record.args if record.name == "aiohttp.server" and isinstance(record.args, tuple) else ()
        record.msg, record.args, record.exc_info, record.exc_text = MALFORMED_REQUEST_EVENT, (), None, None
        record.levelno = min(record.levelno, logging.INFO)
        record.levelname = logging.getLevelName(record.levelno)
        # Extra attributes, which the formatter's ExtraAdder turns into fields.
        record.__dict__.update(error=type(error).__name__, status=status)
        if len(args) == 1 and isinstance(args[0], str):
            record.__dict__["peer"] = args[0]
        return record.levelno >= self.level


class _LineWriter:
    """Writes whole lines to one stream, for both paths, in the order they were logged, and never raises.

    Unbuffered, each line is written (and the stream flushed) at once. Buffered (the server's stdout), a line
    logged on a running event loop waits for the end of the loop's turn: the first line of a turn schedules
    one flush with ``call_soon``, which runs first in the loop's next iteration, so every line of the turn
    goes out in one write (one system call for a turn that answered many requests), and no line waits past
    the next iteration, busy or idle. A line logged anywhere else (another thread, before the loop starts,
    after it stops) writes everything pending, then itself, at once; so does the process's exit. Lines go
    into one queue in the order they were logged, by every path and thread (the loop's own thread, once its
    turn's flush is scheduled, without taking the lock), and one lock orders the writes. A ``kill -9`` loses
    at most the lines of the loop turn it interrupts.
    """

    def __init__(self, stream: TextIO, *, buffered: bool = False) -> None:
        self.stream = stream
        self.buffered = buffered
        self._lock = threading.Lock()
        # A deque: the loop's own thread appends to it without the lock (see write), and a drain takes lines
        # from its left one at a time, so a line appended meanwhile is either taken or left for the next one.
        # A line is a string, or one that emit_text took, put together when it is written.
        self._pending: collections.deque[str | _TextLine] = collections.deque()
        # The loop a flush is scheduled on, if any (one per turn), and the thread that was running it.
        self._flush_on: asyncio.AbstractEventLoop | None = None
        self._flush_thread = 0

    def write(self, line: str | _TextLine) -> None:
        if self.buffered:
            # After a turn's first line, the others need not look up the running loop (asyncio's lookup costs a
            # getpid() system call on every line, Python 3.11) nor take the lock: the thread that scheduled the
            # flush, while its loop runs, is on that loop, and the flush will run on it after this line. Once
            # the loop stops, the lookup decides again.
            flush_on = self._flush_on
            if flush_on is not None and self._flush_thread == get_ident() and flush_on.is_running():
                self._pending.append(line)
                return
        loop = _running_loop() if self.buffered else None
        with self._lock:
            self._pending.append(line)
            if loop is None:
                self._write_pending()
            elif self._flush_on is not loop:
                self._flush_on, self._flush_thread = loop, get_ident()
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every pending line now."""
        with self._lock:
            self._flush_on = None
            self._write_pending()

    def _write_pending(self) -> None:
        pending = self._pending
        if not pending:
            return
        take = pending.popleft
        lines = []
        for _ in range(len(pending)):
            line = take()
            lines.append(line if isinstance(line, str) else line[0].render(line))
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except UnicodeEncodeError:  # a stream whose encoding is not UTF-8: JSON's own \u escapes
            for line in lines:
                self._write_ascii(line)
        except (OSError, ValueError):  # closed or broken (a reader that went away): the lines are lost
            pass

    def _write_ascii(self, line: str) -> None:
        try:
            self.stream.write(json.dumps(json.loads(line), ensure_ascii=True) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class _Chain:
    """The processors of one configuration that the direct path uses too, and the one processor (all of them,
    in turn) that structlog runs. ``retired`` once ``configure_logging`` has configured anew."""

    __slots__ = ("renderer", "retired", "run", "timestamper")

    def __init__(self, timestamper: _Timestamper, renderer: Processor, run: Processor) -> None:
        self.timestamper = timestamper
        self.renderer = renderer
        self.run = run
        self.retired = False


class _NamedLineLogger:
    """structlog's wrapped logger: writes each rendered line, carrying the name a module asked for.

    ``emit`` is the direct path for a line logged once per request (the access line): the same fields in the
    same order, the same renderer and the same writer as structlog's chain, without the chain's per-call
    work (a bound logger's context copy, the level method, one call per processor).
    """

    def __init__(self, writer: _LineWriter, name: str, chain: _Chain) -> None:
        self._writer = writer
        self.name = name
        self._name_json = _json_text(name)
        self.chain = chain
        # render's templates, by members, level, event and which context fields are bound; made for the
        # request context's fields as _templates_of has them.
        self._templates: dict[_TemplateKey, str] = {}
        self._templates_of: _Context | None = None
        self._stamped: tuple[int, str] = (-1, "")  # a second since the epoch, and its date and time of day

    def msg(self, message: str) -> None:
        self._writer.write(message)

    def emit(self, level: str, event: str, fields: EventDict) -> None:
        """Write ``fields`` as one line with ``event``, the request context, ``level``, ``timestamp`` and
        ``logger``, exactly as ``structlog.get_logger(name).<level>(event, **fields)`` writes it; never raises.

        The caller checks the level first, and passes no ``exc_info``: such a line takes structlog's path.
        """
        try:
            fields["event"] = event
            _merge_request_context(None, level, fields)
            fields["level"] = level
            self.chain.timestamper(None, level, fields)
            fields["logger"] = self.name
            rendered = self.chain.renderer(self, level, fields)
            line = rendered if isinstance(rendered, str) else str(rendered)
        except Exception as exc:
            line = unrenderable_line(self.name, level, exc)
        self._writer.write(line)

    def emit_text(self, level: str, event: str, text: LineText, values: tuple[Any, ...]) -> None:
        """``emit`` for a line whose fields the caller has put together as text (``text``), ``values`` filling
        it: the same line, and it never raises. Only what will have changed by the time the line is written is
        read now, the request context and the time; the line itself is put together with the other lines of
        the loop's turn, when the writer writes them (``render``).
        """
        context = _context
        if context.made != len(_STRUCTLOG_VARS):
            context = _current_context()
        line = (self, level, event, text, values, context, tuple(map(_get_value, context.variables)), time_ns())
        # The writer's common case, as _LineWriter.write has it: a turn's flush is scheduled on this loop.
        writer = self._writer
        flush_on = writer._flush_on
        if flush_on is not None and writer._flush_thread == get_ident() and flush_on.is_running():
            writer._pending.append(line)
        else:
            writer.write(line)

    def render(self, line: _TextLine) -> str:
        """An ``emit_text`` line as it is written; never raises.

        As text, in one "%" formatting of a template made once, without a dictionary, a serialiser or the
        redaction's scan, when the request context bound then held plain identifiers (``_PLAIN_IDENTIFIER``)
        only, under plain names that the line's own fields do not have; otherwise (and in the rare whole
        second, which has no fraction) as ``emit`` writes it, through the renderer.
        """
        _, level, event, text, values, context, captured, ns = line
        bound = captured
        try:
            try:
                joined = _SEPARATOR.join(bound)  # every field bound, to a string (the authenticated request)
                layout = context.all_bound
            except TypeError:  # a field made but not bound (structlog's Ellipsis), or a value that is no string
                layout = tuple([value is not Ellipsis for value in bound])
                bound = tuple([value for value in bound if value is not Ellipsis])
                joined = _SEPARATOR.join(bound)
            if self._templates_of is not context:  # made for other fields
                self._templates, self._templates_of = {}, context
            key = (text.members, level, event, layout)
            template = self._templates.get(key)
            if template is None:
                template = self._template(key, context, text.names())
            second, micro = divmod(ns // 1000, 1_000_000)
            # One check of every value at once: bytes of plain identifiers' characters only, and as many
            # separators as the values need (a value holding one makes one too many); else the exact check.
            count = len(bound)
            unchecked = joined.encode("ascii", "replace").translate(None, _PLAIN_BYTES)
            fast = not unchecked and joined.count(_SEPARATOR) == count - 1
            plain = not count or fast or _PLAIN_JOINED[count](joined)
            if template and plain and micro:
                stamped = self._stamped
                if stamped[0] != second:
                    stamped = self._stamped = (second, _second_text(second))
                return template % (*values, *bound, stamped[1], micro)
        except Exception:  # a context value that is no string, or a value the template cannot take
            template = ""  # the renderer's path
        try:
            fields = dict(text.fixed)
            fields.update(zip(text.variable, values, strict=True))
            fields["event"] = event
            for name, value in zip(context.names, captured, strict=True):
                if value is not Ellipsis:
                    fields.setdefault(name, value)  # as _merge_request_context
            fields["level"] = level
            fields["timestamp"] = _Timestamper.text(ns)
            fields["logger"] = self.name
            rendered = self.chain.renderer(self, level, fields)
            return rendered if isinstance(rendered, str) else str(rendered)
        except Exception as exc:
            return unrenderable_line(self.name, level, exc)

    def _template(self, key: _TemplateKey, context: _Context, names: frozenset[str]) -> str:
        """The whole line's "%" template for ``render`` (remembered), or "" where the text path cannot vouch
        for the context's names: one like a secret's, one not plain, or one the fields (``names``) hold."""
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        members, level, event, layout = key
        bound = [(name, plain) for name, plain, on in zip(context.names, context.plain, layout, strict=True) if on]
        template = ""
        event, level, logger = (_json_text(text).replace("%", "%%") for text in (event, level, self.name))
        if all(plain for _, plain in bound) and names.isdisjoint(name for name, _ in bound):
            fields = "".join(f'"{name}":"%s",' for name, _ in bound)
            template = f'{{{members},"event":{event},{fields}"level":{level},"timestamp":"%s.%06dZ","logger":{logger}}}'
        self._templates[key] = template
        return template

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _JsonLinesHandler(logging.Handler):
    """The stdlib's handler: each record as one JSON line; a record that cannot be formatted as one
    ``log.unrenderable`` line, never the stdlib's multi-line "--- Logging error ---" on stderr."""

    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._writer.write(line)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (the stdlib's name)
        self._writer.write(unrenderable_line(record.name, record.levelname.lower(), sys.exc_info()[1]))


# asyncio's own fast lookup of the loop running in this thread (None outside one): get_running_loop() raises.
_running_loop = asyncio._get_running_loop


def _merge_request_context(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog's ``merge_contextvars``, reading only structlog's own context variables.

    The original walks every variable of the context (aiohttp's, asyncio's and the rest) on every line.
    """
    context = _current_context()
    for name, value in zip(context.names, map(_get_value, context.variables), strict=True):
        if value is not Ellipsis:
            event_dict.setdefault(name, value)
    return event_dict


# Whether a context value is what the direct path writes as it is: what request ids, client IPs and user ids
# are made of (or "unknown", for a peer with no address). JSON needs no escape in it, and no text pattern of
# the redaction can match in it (every hint holds a letter beyond "f", or a "$").
_PLAIN_IDENTIFIER = r"(?:[0-9A-Fa-f.:]*|unknown)"
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_get_value = contextvars.ContextVar.get
# A separator that no plain identifier holds: the values of all variables, joined by it, are checked at once.
_SEPARATOR = "\x1f"


class _Context(NamedTuple):
    """structlog's context variables, as the direct path reads them: rebuilt when structlog makes a new one (a
    field bound for the first time), which happens for a few names, once each."""

    made: int  # how many variables structlog had made when this was built
    variables: tuple[contextvars.ContextVar[Any], ...]
    names: tuple[str, ...]  # the fields' names, in the order of the variables (the order they were made)
    plain: tuple[bool, ...]  # whether each name is a plain one, named like no secret
    all_bound: tuple[bool, ...]  # every field bound: the layout of the server's authenticated request


def _build_context() -> _Context:
    named = [(name[_PREFIX_LENGTH:], variable) for name, variable in tuple(_STRUCTLOG_VARS.items())]
    names = tuple(name for name, _ in named)
    plain = tuple(_PLAIN_NAME.fullmatch(name) is not None and not hints_in(name) for name in names)
    return _Context(len(named), tuple(variable for _, variable in named), names, plain, (True,) * len(names))


_context = _build_context()


def _current_context() -> _Context:
    global _context
    if _context.made != len(_STRUCTLOG_VARS):
        _context = _build_context()
    return _context


class _PlainJoined(dict[int, Callable[[str], Any]]):
    """By a count n: whether a text is n plain identifiers (``_PLAIN_IDENTIFIER``) joined by _SEPARATOR."""

    def __missing__(self, count: int) -> Callable[[str], Any]:
        check = self[count] = re.compile(_SEPARATOR.join([_PLAIN_IDENTIFIER] * count)).fullmatch
        return check


_PLAIN_JOINED = _PlainJoined()
# The characters of plain identifiers but "unknown", and the separator, as bytes.translate deletes them.
_PLAIN_BYTES = b"0123456789ABCDEFabcdef.:" + _SEPARATOR.encode()
# What render remembers a line's template by: its members, level, event and which context fields are bound.
_TemplateKey = tuple[str, str, str, tuple[bool, ...]]
_MAX_TEMPLATES = 256


class LineText(NamedTuple):
    """What every line of one kind has in common, for ``emit_text``: ``members``, its fields as JSON object
    members in order, a "%" template that the values fill (a literal "%" doubled), vouched for by the
    caller: its own code's words and numbers, no client text, nothing named like a secret; ``fixed``, the
    fields the template holds as they are (first in the line); ``variable``, the names of the values' fields,
    in order, after them. The renderer's path, where the line takes it, gets ``fixed`` and the values."""

    members: str
    fixed: tuple[tuple[str, Any], ...]
    variable: tuple[str, ...]

    def names(self) -> frozenset[str]:
        return frozenset([name for name, _ in self.fixed] + list(self.variable))


# A line emit_text has taken, until it is written: the logger, level, event, text and values, the request
# context's variables and their values then, and the time (ns since the epoch).
_TextLine = tuple["_NamedLineLogger", str, str, LineText, tuple[Any, ...], "_Context", tuple[Any, ...], int]


@functools.lru_cache(maxsize=256)
def _json_text(text: str) -> str:
    """A string of the code's (an event, a level, a logger's name) as JSON."""
    return orjson.dumps(text).decode()


class _Timestamper:
    """``timestamp``: the time in UTC as ISO 8601 with microseconds and a ``Z`` (structlog's ``TimeStamper(
    fmt="iso", utc=True)``), the date and time of day formatted once per second rather than on every line."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def now(self) -> str:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        cached = self._second  # one read: another thread may replace it meanwhile
        if cached[0] != second:
            cached = self._second = (second, _second_text(second))
        return _timestamp(cached[1], micro)

    @staticmethod
    def text(ns: int) -> str:
        """The timestamp of ``ns`` nanoseconds since the epoch, as ``now`` writes it."""
        second, micro = divmod(ns // 1000, 1_000_000)
        return _timestamp(_second_text(second), micro)

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.now()
        return event_dict


def _timestamp(date_and_time: str, micro: int) -> str:
    # As datetime.isoformat: no fraction in a whole second. Six digits with leading zeros, without a format
    # spec's parsing (about twice the cost).
    return f"{date_and_time}.{str(micro + 1_000_000)[1:]}Z" if micro else f"{date_and_time}Z"


def _second_text(second: int) -> str:
    """The date and time of day, in UTC, of a second since the epoch, as ISO 8601 writes them."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _add_logger_name(logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = getattr(logger, "name", None)
    return event_dict


def _never_failing(processors: list[Processor]) -> Processor:
    """One processor that runs ``processors`` in turn; if any raises, the line says so instead of the
    exception reaching the code that logged (a request would answer 500)."""

    def run(logger: Any, method: str, event_dict: EventDict) -> Any:
        try:
            result: Any = event_dict
            for processor in processors:
                result = processor(logger, method, result)
            return result
        except Exception as exc:
            return unrenderable_line(getattr(logger, "name", None), method, exc)

    return run


def configure_logging(
    level: str = "info", stream: TextIO | None = None, *, cache: bool = False, buffered: bool | None = None
) -> None:
    """Send mixauth's events and the stdlib's (aiohttp's loggers included) to one JSON stream at ``level``.

    mixauth's own events take structlog's direct path: a level filter that costs nothing below ``level``,
    then the processors, the redacting renderer and one write. The stdlib's records go through
    ``ProcessorFormatter`` into the same shape and the same renderer. ``cache`` keeps each logger once built
    (the server's choice: about a third faster); it is off by default so that reconfiguring, as tests do,
    reaches loggers already in use. ``buffered`` (by default: when writing to stdout) holds the lines logged on
    a running event loop until the end of its turn, see ``_LineWriter``; a test's own stream is written at once.
    """
    numeric_level = logging.getLevelName(level.upper())
    writer = _LineWriter(stream or sys.stdout, buffered=stream is None if buffered is None else buffered)
    if writer.buffered:
        atexit.register(writer.flush)  # lines of a loop that stopped before its next turn
    timestamper = _Timestamper()
    renderer = structlog.processors.JSONRenderer(serializer=render_line)
    shared: list[Processor] = [_merge_request_context, structlog.processors.add_log_level, timestamper]
    render: list[Processor] = [structlog.processors.ExceptionRenderer(_TracebackTransformer()), renderer]
    handler = _JsonLinesHandler(writer)
    handler.addFilter(_ProtocolErrorSummary(numeric_level))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[_never_failing([structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render])],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.INFO))
    chain = _Chain(timestamper, renderer, _never_failing([*shared, _add_logger_name, *render]))
    global _current_chain
    if _current_chain is not None:
        _current_chain.retired = True
    _current_chain = chain
    structlog.configure(
        processors=[chain.run],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *args: _NamedLineLogger(writer, args[0] if args else "mixauth", chain),
        cache_logger_on_first_use=cache,
    )


def bind_request(**fields: Any) -> None:
    """Bind a request's fields into its log context.

    aiohttp runs each request in a task of its own, which starts from a copy of the connection's context,
    so nothing bound for one request reaches the next one on the same keep-alive connection, and there is
    nothing to clear first (clearing copies the whole context, on every request).
    """
    for name, value in fields.items():
        # structlog's own variable for the field, set directly once it exists: half the cost of
        # bind_contextvars, which also builds the tokens to reset them, and nothing here resets.
        variable = _STRUCTLOG_VARS.get(STRUCTLOG_KEY_PREFIX + name)
        if variable is None:
            structlog.contextvars.bind_contextvars(**{name: value})
        else:
            variable.set(value)


def context_field(name: str) -> contextvars.ContextVar[Any]:
    """structlog's context variable for the log context's field ``name``, made if it is new.

    Setting it binds the field for the rest of the request, as ``bind_request`` does, and costs no call of
    Python code: for the fields bound on every request. Fields appear in lines in the order their variables
    were made.
    """
    variable = _STRUCTLOG_VARS.get(STRUCTLOG_KEY_PREFIX + name)
    if variable is None:
        structlog.contextvars.bind_contextvars(**{name: Ellipsis})  # structlog's "not bound": made, not bound
        variable = _STRUCTLOG_VARS[STRUCTLOG_KEY_PREFIX + name]
    return variable


# The chain configure_logging set last.
_current_chain: _Chain | None = None


class LineLoggerMemo:
    """``line_logger_of(logger)`` for one user of it that asks on every request (the access log keeps one per
    connection), remembered while it stays right: until ``configure_logging`` configures anew, or
    ``capture_logs`` takes the processors over (in place, so the list remembered tells)."""

    __slots__ = ("_line", "_logger", "_processors")

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._line: _NamedLineLogger | None = None
        self._processors: list[Any] = []

    def get(self) -> _NamedLineLogger | None:
        line = self._line
        if line is not None and not line.chain.retired:
            processors = self._processors
            if len(processors) == 1 and processors[0] is line.chain.run:
                return line
        bound = self._logger.bind()
        line = self._line = line_logger_of(bound)
        remembered = getattr(bound, "_processors", None)
        self._processors = remembered if isinstance(remembered, list) else []
        return line


def line_logger_of(logger: Any) -> _NamedLineLogger | None:
    """The line logger under a structlog logger, for its direct path (``emit``); None unless that logger runs
    the processors ``configure_logging`` set (not under structlog's defaults or a test's ``capture_logs``).

    ``bind()`` returns the logger built for the current configuration: the same one every time once cached
    (the server's choice), a new one on every call otherwise, so a reconfiguration is always seen.
    """
    bound = logger.bind()
    # structlog documents both attributes as readable by wrapper classes. capture_logs changes the processors'
    # list in place (loggers already built hold it): its contents are what tells.
    wrapped = getattr(bound, "_logger", None)
    if not isinstance(wrapped, _NamedLineLogger):
        return None
    processors = getattr(bound, "_processors", None)
    if isinstance(processors, list) and len(processors) == 1 and processors[0] is wrapped.chain.run:
        return wrapped
    return None
