"""Reading request bodies as JSON objects, and writing JSON responses and the contract's error body."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict

from server.domain import BodyNotAnObject, MalformedBody, UnsupportedContentEncoding, UnsupportedMediaType
from server.jsontext import TooDeep, loads_strict

MAX_BODY_BYTES = 16 * 1024
# No body the API takes nests beyond a few levels (metadata: 16 inside the body); deeper ones are refused at
# parse time, so no handler, encoder or store ever recurses through one.
MAX_JSON_DEPTH = 32
_TOO_DEEP = f"The request body must be nested at most {MAX_JSON_DEPTH} levels deep."
# On every answer: they are all JSON, and no browser may sniff one into something it would render or run. And
# "Server" names the product only: aiohttp's own ("Python/3.11 aiohttp/3.14.5") tells a scanner which
# versions' known bugs to try.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Server": "mixauth"}
_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json; charset=utf-8"})


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _refuse_encoded(request: web.Request) -> None:
    """Refuse a compressed body: inflating it would let a few bytes on the wire cost gigabytes of work.

    aiohttp never inflates one here (the application turns ``auto_decompress`` off), so the 16 KiB limit
    applies to the bytes as sent.
    """
    for value in request.headers.getall("Content-Encoding", ()):
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "identity"):
                raise UnsupportedContentEncoding()


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; a missing Content-Type is read as JSON, other non-JSON types give 415."""
    if "Content-Type" in request.headers and not _is_json_type(request.content_type):
        raise UnsupportedMediaType()
    _refuse_encoded(request)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        # Said up front: answered now, not after waiting for bytes a client may never send.
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
    raw = await request.read()  # aiohttp enforces client_max_size and answers 413 beyond it
    try:
        body = loads_strict(raw.decode("utf-8"), MAX_JSON_DEPTH)
    except TooDeep:
        raise MalformedBody(_TOO_DEEP) from None
    except ValueError:  # not UTF-8 (UnicodeError is a ValueError), or not strict JSON
        raise MalformedBody() from None
    if not isinstance(body, dict):
        raise BodyNotAnObject()
    return body


def json_response(
    data: Mapping[str, Any] | list[Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    if headers is None:  # the common case: aiohttp copies these, already a multidict, at C speed
        return web.Response(body=_dumps(data), status=status, headers=_JSON_HEADERS)
    return web.Response(
        body=_dumps(data), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


def _dumps(data: Mapping[str, Any] | list[Any]) -> bytes:
    # orjson is about ten times faster than the standard library, but refuses integers beyond 64 bits,
    # which a user's metadata may hold (the request parser accepts them); those take the slow road.
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


Record = TypeVar("Record")


class JsonMemo(Generic[Record]):
    """JSON answers made from records (by ``render``), each body remembered by the record's identity.

    For records that are replaced, never changed, when what they hold changes: a user as the store hands it
    out (a frozen ``User``, a new one after every change). The body is serialised once per record rather than
    on every request; at most ``size`` are remembered, and the record is held with its body, so that its
    identity cannot pass to another object meanwhile.
    """

    __slots__ = ("_bodies", "_render", "_size")

    def __init__(self, render: Callable[[Record], Mapping[str, Any]], size: int = 1024) -> None:
        self._render = render
        self._size = size
        self._bodies: dict[int, tuple[Record, bytes]] = {}

    def response(self, record: Record) -> web.Response:
        """``json_response(render(record))``."""
        remembered = self._bodies.get(id(record))
        if remembered is None or remembered[0] is not record:
            if len(self._bodies) >= self._size:
                self._bodies.clear()
            remembered = self._bodies[id(record)] = (record, _dumps(self._render(record)))
        return web.Response(body=remembered[1], headers=_JSON_HEADERS)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": message, "message": message, "statusCode": status, "code": code}
    return json_response(body, status=status, headers=headers)
