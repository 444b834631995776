"""Schemathesis against the real server and the OpenAPI document it serves itself, with every check.

The server runs as users run it (``python3 -m server`` in a subprocess, its own data directory), with the rate
limits raised so that 429s do not hide the rest of the API. Schemathesis then generates valid and invalid
requests from ``GET /openapi.json`` and checks every answer: no 5xx, only documented statuses, content types and
headers, response bodies that match their schemas, schema-violating requests refused, schema-valid ones
accepted, unsupported methods answered 405 with ``Allow``, and authentication not ignored. The run is seeded, so
a failure reproduces; on failure the test shows schemathesis' report and the server's log.

One allowance, for ``POST /user`` (and the forgot-password calls, below): a schema-valid signup may get 400.
The signup rules include some that JSON Schema cannot state (at most 72 bytes of UTF-8 after NFKC, the email
grammar with its special-use domains, unassigned code points in usernames); the document states them in words
and its schemas are the widest true statement, so schemathesis can generate requests the server rightly
refuses. Everything else holds in full,
including the reverse check: any request the document forbids must be refused.

The same allowance holds for ``POST /user/forgot-password/reset``, whose schema-valid requests carry codes no
one was sent (400 ``invalid_reset_code``, so schemathesis warns that it "mostly rejected generated data"), and
``POST /user/forgot-password``, whose address may grow past every bound under NFKC.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "fuzz-test-secret-0123456789abcdef-0123456789abcdef"
NO_LIMIT = "1000000000"
SEED = 20260601
MAX_EXAMPLES = 150
PASSWORD = "fuzz-Pa55word"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def server_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("USER_", "API_USER_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        HOST="127.0.0.1",
        PORT=str(port),
        METRICS_PORT=str(free_port()),
        DATA_DIR=str(tmp_path / "data"),
        JWT_SECRET=JWT_SECRET,
        BCRYPT_ROUNDS="4",
        LOG_LEVEL="warning",
        USER_SIGNUP_RATE_LIMIT_EMAIL=NO_LIMIT,
        USER_SIGNUP_RATE_LIMIT_IP=NO_LIMIT,
        USER_SIGNIN_RATE_LIMIT_ACCOUNT=NO_LIMIT,
        USER_SIGNIN_RATE_LIMIT_IP=NO_LIMIT,
        USER_FORGOT_PASSWORD_RATE_LIMIT_EMAIL=NO_LIMIT,
        USER_FORGOT_PASSWORD_RATE_LIMIT_IP=NO_LIMIT,
        USER_FORGOT_PASSWORD_RESET_RATE_LIMIT_IP=NO_LIMIT,
    )
    env.update(extra)
    return env


def start(tmp_path: Path, **extra: str) -> Served:
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=tmp_path,
            env=server_env(tmp_path, port, **extra),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, port, tmp_path / "data", log_path)
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{served.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        except OSError:
            time.sleep(0.05)
            continue
        return served
    stop(served)
    raise AssertionError(f"the server did not start listening in time:\n{served.log_tail()}")


def stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.terminate()
        try:
            served.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


def post_json(served: Served, path: str, body: dict[str, str], token: str | None = None) -> dict[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status == 200, payload
    answer: dict[str, str] = json.loads(payload)
    return answer


def user_status(served: Served, token: str) -> int:
    """The status of GET /user with ``token``: 200 while it is valid, 401 once revoked."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        connection.request("GET", "/user", headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return response.status


def create_admin(tmp_path: Path) -> None:
    """An admin made with the command line against the data directory, before the server starts."""
    command = ["create-user", "--username", "fuzz-admin", "--email", "admin@example.com", "--scope", "admin,user"]
    result = subprocess.run(
        [sys.executable, "-m", "server", *command, "--password-stdin"],
        cwd=tmp_path,
        env=server_env(tmp_path, free_port()),
        input=f"{PASSWORD}\n".encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


def config(token: str, own_tokens: dict[str, str]) -> str:
    """schemathesis.toml: seeded, no example database, the bearer token for operations that take one; the
    operations that revoke their caller's tokens (log out, change the password) each get a user of their own
    (``own_tokens`` by operation id), so that the others keep a valid token."""
    own = "".join(
        f'\n[[operations]]\ninclude-operation-id = "{operation}"\n'
        f'headers = {{ Authorization = "Bearer {own_token}" }}\n'
        for operation, own_token in own_tokens.items()
    )
    return f"""\
seed = {SEED}
color = false

[generation]
database = "none"
max-examples = {MAX_EXAMPLES}

[auth.openapi.bearerAuth]
bearer = "{token}"

# Fuzzing would otherwise reuse names seen in earlier answers for most signups, and nearly all would be 409s.
[phases.fuzzing.extra-data-sources]
responses = false

[[operations]]
include-operation-id = "createUser"
# Rules JSON Schema cannot state (see the module docstring): a schema-valid signup may be refused with 400.
checks.positive_data_acceptance.expected-statuses = ["200", "400", "409"]

[[operations]]
include-operation-id = "forgotPassword"
# An address whose NFKC form is far longer than any real one (a 400) is schema-valid.
checks.positive_data_acceptance.expected-statuses = ["200", "400"]

[[operations]]
include-operation-id = "resetForgottenPassword"
# No generated code is a live one (400 invalid_reset_code), and the password rules are the signup's.
checks.positive_data_acceptance.expected-statuses = ["200", "400"]
{own}"""


def own_token(served: Served, name: str, token: str | None = None) -> str:
    """A token of a new user, for an operation that revokes its caller's tokens (see ``config``)."""
    body = {"username": f"fuzz-{name}", "email": f"fuzz-{name}@example.com", "password": PASSWORD}
    return post_json(served, "/user", body, token)["token"]


def run_schemathesis(served: Served, tmp_path: Path, token: str) -> None:
    config_path = tmp_path / "schemathesis.toml"
    own_tokens = {operation: own_token(served, operation.lower(), token) for operation in ("logOut", "changePassword")}
    config_path.write_text(config(token, own_tokens))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_path),
        "run",
        f"{served.url}/openapi.json",
        "--checks",
        "all",
        "--workers",
        "1",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=180, check=False)
    report = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, (
        f"{' '.join(command)}\n{config_path.read_text()}\n{report}\n\nserver log (tail):\n{served.log_tail()}"
    )
    print("\n".join(report.strip().splitlines()[-12:]))  # schemathesis' summary, shown by pytest -rP
    # Logging out was exercised with its own user's token, and left every other operation's token valid.
    assert (user_status(served, own_tokens["logOut"]), user_status(served, token)) == (401, 200)


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[Served]:
    served = start(tmp_path)
    try:
        yield served
    finally:
        stop(served)


@pytest.fixture
def restricted_server(tmp_path: Path) -> Iterator[Served]:
    create_admin(tmp_path)
    served = start(tmp_path, API_USER_CREATE_SCOPE="admin")
    try:
        yield served
    finally:
        stop(served)


def test_schemathesis_finds_nothing_with_open_signup(open_server: Served, tmp_path: Path) -> None:
    signup = {"username": "fuzz-user", "email": "fuzz-user@example.com", "password": PASSWORD}
    token = post_json(open_server, "/user", signup)["token"]
    run_schemathesis(open_server, tmp_path, token)


def test_schemathesis_finds_nothing_with_signup_restricted_to_admins(restricted_server: Served, tmp_path: Path) -> None:
    token = post_json(restricted_server, "/user/auth", {"username": "fuzz-admin", "password": PASSWORD})["token"]
    run_schemathesis(restricted_server, tmp_path, token)
