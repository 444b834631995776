"""The few plain HTTP calls the benchmark makes itself (not load): probing for the first answer, creating
the benchmark's user and reading its token and GET /user body. Loopback only, stdlib only, short timeouts.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

HOST = "127.0.0.1"


class ClientError(RuntimeError):
    """A setup call got an answer other than the one the benchmark needs."""


def call(
    port: int,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    form: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:``port`` with a JSON ``body`` or a urlencoded ``form``; the status and the raw
    body. Connection errors propagate."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        all_headers = dict(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            payload = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def answers(port: int, timeout: float = 0.5) -> bool:
    """True once anything answers HTTP on the port (any status); False while nothing listens."""
    try:
        call(port, "GET", "/", timeout=timeout)
    except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
        return False
    return True


def expect_json(port: int, method: str, path: str, body: dict[str, Any] | None = None, token: str = "") -> Any:
    """A call that must answer 200 with JSON; the decoded body."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    status, raw = call(port, method, path, body, headers)
    if status != 200:
        raise ClientError(f"{method} {path} answered {status}: {raw[:300]!r}")
    return json.loads(raw)
