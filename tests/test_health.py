"""GET /health/live and /health/ready: cheap, open, never rate limited, quiet in the access log at INFO."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server import healthcheck
from server.logs import configure_logging
from server.web import handlers
from server.web.keys import READINESS
from tests.conftest import ClientFactory
from tests.process import base_env


async def test_live_answers_while_the_process_runs(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.get("/health/live")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_answers_when_the_database_does(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.get("/health/ready")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "database": "ok", "rate_limiter": "memory"}


async def test_ready_is_503_with_a_json_reason_when_the_database_fails(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()

    async def broken() -> int:
        raise OSError("disk I/O error")

    monkeypatch.setitem(client.app[READINESS].probes, "database", broken)
    response = await client.get("/health/ready")
    assert response.status == 503
    body = await response.json()
    assert body["code"] == "not_ready"
    assert body["statusCode"] == 503
    assert body["error"] == "The database does not answer."
    assert (await client.get("/health/live")).status == 200  # the process itself is fine


async def test_ready_is_503_when_the_database_hangs(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "READINESS_TIMEOUT", 0.01)
    client = await make_client()

    async def hanging() -> int:
        await asyncio.Event().wait()
        return 0

    monkeypatch.setitem(client.app[READINESS].probes, "database", hanging)
    assert (await client.get("/health/ready")).status == 503


async def test_probes_are_never_rate_limited_nor_need_a_token(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_ip=1, user_signin_rate_limit_ip=1)
    for _ in range(20):
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 200


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("level", "logged"), [("info", False), ("debug", True)])
async def test_probes_are_left_out_of_the_access_log_at_info(
    make_client: ClientFactory, level: str, logged: bool
) -> None:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    client = await make_client()
    await client.get("/health/live")
    await client.get("/health/ready")
    await client.get("/user")  # a real request is logged either way
    lines: list[dict[str, Any]] = [json.loads(line) for line in stream.getvalue().splitlines()]
    routes = [line["route"] for line in lines if line["event"] == "http.request"]
    expected = ["/health/live", "/health/ready", "/user"] if logged else ["/user"]
    assert routes == expected


# python3 -m server.healthcheck, the image's HEALTHCHECK (run against a real server in test_serve).


def test_healthcheck_help_describes_it_without_running_the_check(tmp_path: Path) -> None:
    # PORT 1: were the check run, it would fail with "Connection refused" and exit 1.
    done = subprocess.run(
        [sys.executable, "-m", "server.healthcheck", "--help"],
        env=base_env(PORT="1"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == b""
    out = done.stdout.decode()
    assert out.startswith("usage: python3 -m server.healthcheck")
    assert "--url" in out
    assert "--timeout" in out
    assert "http://127.0.0.1:1/health/ready" in out  # the default, from the environment


async def test_healthcheck_asks_the_url_given_and_fails_on_a_non_200(
    make_client: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await make_client()
    url = str(client.make_url("/health/ready"))
    # The check blocks (it is the whole process in the image): here it runs on a thread beside the server.
    assert await asyncio.to_thread(healthcheck.main, ["--url", url, "--timeout", "5"], {"PORT": "1"}) == 0
    missing = str(client.make_url("/health/nowhere"))
    assert await asyncio.to_thread(healthcheck.main, ["--url", missing], {}) == 1
    assert capsys.readouterr().err == f"mixauth healthcheck: {missing}: status 404\n"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--timeout", "0"], "argument --timeout: expected seconds above 0"),
        (["--timeout", "soon"], "argument --timeout: expected seconds above 0"),
        (["--url", "file:///etc/passwd"], "argument --url: expected an http:// or https:// URL"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_healthcheck_misuse_is_one_line_and_unhealthy(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        healthcheck.main(argv, {})
    assert exited.value.code == 1  # Docker reserves exit code 2
    err = capsys.readouterr().err
    assert err.startswith("mixauth healthcheck: ")
    assert fragment in err
    assert err.count("\n") == 1


def test_healthcheck_defaults_come_from_host_and_port() -> None:
    wildcard = {"HOST": "0.0.0.0", "PORT": "8080"}  # noqa: S104 - what the image sets, not a bind
    assert healthcheck.readiness_url(wildcard) == "http://127.0.0.1:8080/health/ready"
    assert healthcheck.readiness_url({"HOST": "::1"}) == "http://[::1]:2200/health/ready"
