"""The real server as a user runs it: the Dockerfile's start command in a subprocess, its logs and its exits."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.web.serving import GC_YOUNG_THRESHOLD
from tests.conftest import free_port
from tests.process import (
    CONFIGURATION_WARNINGS,
    ROOT,
    Server,
    base_env,
    dockerfile_start,
    runtime_stage,
    start_server,
)

CANARY_PASSWORD = "canary-Pa55word-7f3a9c"
JWT_SECRET = "serve-test-secret-0123456789abcdef-0123456789abcdef"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def test_dockerfile_runs_as_non_root_with_data_in_a_volume() -> None:
    text = runtime_stage()
    _, env = dockerfile_start()
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == "2200"
    assert env["DATA_DIR"] == "/data"
    assert env["METRICS_HOST"] == "0.0.0.0"  # reachable only where the operator publishes port 2201
    assert not any(name.startswith("PIP_") for name in env), "build settings stay in the build stage"
    assert re.search(r"^VOLUME \[\"/data\"\]$", text, re.MULTILINE)
    assert re.search(r"^USER (?!root\b|0\b)[\w:]+$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 2200 2201$", text, re.MULTILINE)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)


def dockerfile_healthcheck() -> list[str]:
    text = runtime_stage()
    match = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "the Dockerfile has no HEALTHCHECK ... CMD [...]"
    command: list[str] = json.loads(match.group(1))
    return command


async def test_the_dockerfile_health_check_passes_against_a_live_server(server: Server, tmp_path: Path) -> None:
    command = dockerfile_healthcheck()
    assert command[0] == "python3"
    port = server.url.rsplit(":", 1)[1]
    env = base_env(PORT=port, HOST="0.0.0.0")  # as in the image: the check asks 127.0.0.1
    healthy = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False)
    assert healthy.returncode == 0, healthy.stderr
    server.stop()
    sick = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False)
    assert sick.returncode == 1
    assert sick.stderr.decode().startswith("mixauth healthcheck: http://127.0.0.1:")


async def test_seed_examples_against_the_image_start_command(server: Server, tmp_path: Path) -> None:
    signup = {"username": "abc@example.com", "email": "abc@example.com", "password": CANARY_PASSWORD}
    async with aiohttp.ClientSession(server.url) as http:
        created = await http.post("/user", json=signup)
        assert created.status == 200
        token = (await created.json())["token"]
        signed_in = await http.post("/user/auth", json={"username": "abc@example.com", "password": CANARY_PASSWORD})
        assert signed_in.status == 200
        body = await signed_in.json()
        assert body["user"]["username"] == "abc@example.com"
        failed = await http.post("/user/auth", json={"username": "abc@example.com", "password": "wrong-password"})
        assert failed.status == 403
        me = await http.get("/user", headers={"Authorization": f"Bearer {body['token']}"})
        assert me.status == 200
        assert (await me.json())["scope"] == ["user"]
        rejected = await http.get("/user", headers={"Authorization": "Bearer forged.token.value"})
        assert rejected.status == 401
        weird = await http.post(
            "/user", json={"username": "evil\nname", "email": "e@example.com", "password": CANARY_PASSWORD}
        )
        assert weird.status == 400

    code, lines, err = server.stop()
    assert code == 0, err
    events = [line["event"] for line in lines]
    for expected in ("user.created", "user.signin.succeeded", "user.signin.failed", "token.rejected", "http.request"):
        assert expected in events
    for line in lines:
        assert {"timestamp", "level", "event"} <= set(line)
        if line["event"].startswith(("user.", "token.")):
            assert line["client_ip"] == "127.0.0.1"
            assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    failed_line = next(line for line in lines if line["event"] == "user.signin.failed")
    assert failed_line["reason"] == "wrong_password"

    secret = (tmp_path / "data" / "jwt-secret").read_text().strip()
    everything = json.dumps(lines) + err
    for forbidden in (CANARY_PASSWORD, token, body["token"], secret, "$2b$"):
        assert forbidden not in everything


async def test_sigterm_closes_the_database_cleanly(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession(server.url) as http:
        response = await http.post("/user", json={"username": "u", "email": "u@example.com", "password": "abc321"})
        assert response.status == 200
    code, lines, err = server.stop()
    assert code == 0, err
    assert lifecycle(lines) == ["server.starting", "server.started", "server.stopped"]
    assert lines[-1]["event"] == "server.stopped"
    wal = tmp_path / "data" / "mixauth.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0


async def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    """A signup whose bcrypt hash is still running when SIGTERM arrives is answered and kept."""
    server = await start_server(tmp_path, BCRYPT_ROUNDS="14")  # about a second a hash here
    try:
        async with aiohttp.ClientSession(server.url) as http:
            body = {"username": "late", "email": "late@example.com", "password": CANARY_PASSWORD}
            in_flight = asyncio.create_task(http.post("/user", json=body))
            await asyncio.sleep(0.5)  # the request has been read and is hashing (a separate process: no clock to fake)
            server.process.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status == 200
            token = (await response.json())["token"]
        code, lines, err = server.stop(signalled=True)
        assert code == 0, err
        assert [line["event"] for line in lines if line["event"] == "user.created"] == ["user.created"]
    finally:
        server.kill()
    wal = tmp_path / "data" / "mixauth.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    restarted = await start_server(tmp_path, "restarted")
    try:
        async with aiohttp.ClientSession(restarted.url) as http:
            assert (await http.get("/user", headers={"Authorization": f"Bearer {token}"})).status == 200
    finally:
        restarted.kill()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "not-a-port"}, "PORT"),
        ({"JWT_SECRET": "too-short"}, "JWT_SECRET"),
        ({"USER_SIGNUP_RATE_LIMIT_EMAIL": "-3"}, "USER_SIGNUP_RATE_LIMIT_EMAIL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path, env: dict[str, str], names: str) -> None:
    flags = [] if "PORT" in env else ["--port", str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "server", *flags],
        cwd=tmp_path,
        env=base_env(DATA_DIR=str(tmp_path / "data"), **env),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert names in lines[0]
    assert not (tmp_path / "data").exists()


def test_unknown_key_in_config_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("prot = 2200\n")
    result = subprocess.run(
        [sys.executable, "-m", "server"], cwd=tmp_path, env=base_env(), capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "unknown setting 'prot'" in result.stderr.decode()


def lifecycle(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines if line["event"].startswith("server.")]


def stdout_lines(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize("which", ["PORT", "METRICS_PORT"])
def test_a_taken_port_is_one_clear_line(tmp_path: Path, which: str) -> None:
    """A start-up that fails logs server.failed after server.starting, and nothing else: every server.starting
    has its end line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"PORT": str(port)} if which == "PORT" else {"PORT": str(free_port()), "METRICS_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "server"],
            cwd=tmp_path,
            env=base_env(DATA_DIR=str(tmp_path / "data"), JWT_SECRET=JWT_SECRET, **ports),
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    err_lines = [line for line in result.stderr.decode().splitlines() if line.startswith("mixauth:")]
    assert len(err_lines) == 1
    assert str(port) in err_lines[0]
    lines = [line for line in stdout_lines(result.stdout) if line["event"] not in CONFIGURATION_WARNINGS]
    assert [line["event"] for line in lines] == ["server.starting", "server.failed"]
    assert lines[-1]["error"] == err_lines[0].removeprefix("mixauth: ")


@pytest.mark.parametrize("problem", ["data_dir_is_a_file", "corrupt_secret", "not_a_database"])
def test_an_unusable_data_directory_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    data_dir = tmp_path / "data"
    if problem == "data_dir_is_a_file":
        data_dir.write_text("a file where the data directory should be")
    else:
        data_dir.mkdir()
        if problem == "corrupt_secret":
            (data_dir / "jwt-secret").write_text("short")
        else:
            (data_dir / "mixauth.sqlite3").write_text("not a database " * 100)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", str(free_port()), "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mixauth: ")
    assert str(data_dir) in lines[0]
    assert lifecycle(stdout_lines(result.stdout)) == ["server.starting", "server.failed"]


async def test_acknowledged_signups_survive_kill_9(tmp_path: Path) -> None:
    # The hashing queue is raised so that all 40 concurrent signups are admitted rather than some refused with 503.
    first = await start_server(tmp_path, "first", HASH_QUEUE_LIMIT="100")
    try:
        async with aiohttp.ClientSession(first.url) as http:

            async def signup(n: int) -> tuple[int, str, str]:
                body = {"username": f"user{n}", "email": f"user{n}@example.com", "password": f"password-{n}"}
                response = await http.post("/user", json=body)
                token = (await response.json()).get("token", "") if response.status == 200 else ""
                return response.status, body["username"], token

            results = await asyncio.gather(*(signup(n) for n in range(40)))
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.kill()
    acknowledged = [(username, token) for status, username, token in results if status == 200]
    assert len(acknowledged) == 40

    second = await start_server(tmp_path, "second")
    try:
        async with aiohttp.ClientSession(second.url) as http:
            for username, token in acknowledged:
                password = "password-" + username.removeprefix("user")
                signed_in = await http.post("/user/auth", json={"username": username, "password": password})
                assert signed_in.status == 200, username
                me = await http.get("/user", headers={"Authorization": f"Bearer {token}"})
                assert me.status == 200
                assert (await me.json())["username"] == username
    finally:
        second.stop()
    with sqlite3.connect(tmp_path / "data" / "mixauth.sqlite3") as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# Run as `python -m server` runs, in a child that reports the garbage collector's state: once serving (from a
# thread, after the first answer), or once a command has run.
GC_PROBE = """
import gc, os, runpy, signal, socket, sys, threading, time

def report_once_serving():
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    print("serving", gc.isenabled(), gc.get_freeze_count() > 0, gc.get_threshold()[0], file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

if not sys.argv[1:]:
    threading.Thread(target=report_once_serving, daemon=True).start()
sys.argv[0] = "server"
try:
    runpy.run_module("server", run_name="__main__")
except SystemExit:
    print("command", gc.isenabled(), file=sys.stderr, flush=True)
"""


def test_python_m_server_collects_garbage_once_serving_or_running_a_command(tmp_path: Path) -> None:
    """Collection is off while ``python -m server`` loads and starts; on once it listens (what start-up made
    frozen, the young generation's threshold raised), and for a command from its start."""
    env = base_env(DATA_DIR=str(tmp_path / "data"), PORT=str(free_port()), HOST="127.0.0.1", JWT_SECRET=JWT_SECRET)
    served = subprocess.run(
        [sys.executable, "-c", GC_PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert served.returncode == 0, served.stderr
    assert f"serving True True {GC_YOUNG_THRESHOLD}" in served.stderr.splitlines(), served.stderr
    command = subprocess.run(
        [sys.executable, "-c", GC_PROBE, "check-config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert command.stderr.splitlines()[-1] == "command True", command.stderr
