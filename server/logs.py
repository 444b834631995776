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


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib (aiohttp's loggers included) to one JSON stream at ``level``."""
    numeric_level = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.INFO))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so reconfiguring (tests' capture_logs) reaches loggers that were already used.
        cache_logger_on_first_use=False,
    )


def bind_request(**fields: Any) -> None:
    """Start a fresh log context for one request (each request runs in its own task and context copy)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**fields)
