"""Structured JSON logging: structlog for mixauth's own events, aiohttp's stdlib loggers rendered the same way.

Every line is one JSON object on stdout with ``timestamp``, ``level``, ``event`` and whatever the request
context bound (``request_id``, ``client_ip``, ``user_id``). Tracebacks are rendered as data without local
variables, and fields whose names suggest a secret are replaced before rendering, so a password, token,
hash or secret cannot reach the log even by mistake.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor

SENSITIVE_KEYS = frozenset(
    {"password", "password_hash", "hash", "token", "access_token", "authorization", "secret", "jwt_secret"}
)
REDACTED = "[redacted]"
# Libraries whose debug output carries data that must not be logged: aiosqlite logs every statement with
# its parameters (password hashes included). They log at INFO at most, whatever LOG_LEVEL says.
QUIET_LIBRARIES = ("aiosqlite",)


def redact_secrets(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    for key in SENSITIVE_KEYS.intersection(event_dict):
        event_dict[key] = REDACTED
    return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's plain writer, carrying the name a module asked for (``structlog.get_logger(name)``)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = getattr(logger, "name", None)
    return event_dict


def _json(value: Any, **_options: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None, *, cache: bool = False) -> None:
    """Send mixauth's events and the stdlib's (aiohttp's loggers included) to one JSON stream at ``level``.

    mixauth's own events take structlog's direct path: a level filter that costs nothing below ``level``,
    then the processors, orjson and one write. The stdlib's records go through ``ProcessorFormatter`` into
    the same shape. ``cache`` keeps each logger once built (the server's choice: about a third faster); it
    is off by default so that reconfiguring, as tests do, reaches loggers already in use.
    """
    numeric_level = logging.getLevelName(level.upper())
    stream = stream or sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    render: list[Processor] = [
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        structlog.processors.JSONRenderer(serializer=_json),
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.INFO))
    structlog.configure(
        processors=[*shared, _add_logger_name, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *args: _NamedWriteLogger(stream, args[0] if args else "mixauth"),
        cache_logger_on_first_use=cache,
    )


def bind_request(**fields: Any) -> None:
    """Bind a request's fields into its log context.

    aiohttp runs each request in a task of its own, which starts from a copy of the connection's context,
    so nothing bound for one request reaches the next one on the same keep-alive connection, and there is
    nothing to clear first (clearing copies the whole context, on every request).
    """
    structlog.contextvars.bind_contextvars(**fields)
