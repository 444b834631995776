"""A real server process for tests: the Dockerfile's start command in a subprocess on free loopback ports.

Every test that needs ``python -m server`` as a user runs it (process tests, fuzzers over raw sockets, log
checks over the whole output) starts it with ``start_server`` and stops it with ``Server.stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def runtime_stage() -> str:
    """The Dockerfile's last stage, the image that runs: from its last FROM line on."""
    text = (ROOT / "Dockerfile").read_text()
    return text[[match.start() for match in re.finditer(r"^FROM ", text, re.MULTILINE)][-1] :]


def dockerfile_start() -> tuple[list[str], dict[str, str]]:
    """The image's CMD and the environment its ENV lines set, read from the Dockerfile's runtime stage."""
    text = runtime_stage()
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", text, re.MULTILINE):
        for name, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
            env[name] = value
    return command, env


# What start-up logs about settings left unset (with base_env, every server leaves them so): the lines a test
# of the server's own lifecycle sets aside.
CONFIGURATION_WARNINGS = frozenset({"webhook.not_configured"})
SERVER_ADDRESS = {"JWT_SECRET", "DATA_DIR", "PORT", "HOST", "METRICS_HOST", "METRICS_PORT", "METRICS_TOKEN"}


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without the server's address and secrets; the metrics listener on a free
    loopback port (never the fixed default, which parallel runs would share)."""
    env = {key: value for key, value in os.environ.items() if key not in SERVER_ADDRESS}
    env.update(PYTHONPATH=str(ROOT), METRICS_HOST="127.0.0.1", METRICS_PORT=str(free_port()))
    env.update(extra)
    return env


async def wait_until_serving(port: int, process: subprocess.Popen[bytes], deadline: float = 15.0) -> None:
    """Until ``process`` answers ``GET /health/live`` with 200 on ``port``: the server's own listener, not
    whatever else may have taken the port (then the process exits, and this says so)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status_line = await asyncio.wait_for(reader.readline(), 5)
        except (TimeoutError, OSError):
            status_line = b""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if status_line.startswith(b"HTTP/1.1 200 "):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("server did not start listening in time")


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path, metrics_url: str) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # The metrics listener's address; the API's own URL when METRICS_PORT is empty.
        self.metrics_url = metrics_url

    def stop(self, signalled: bool = False) -> tuple[int, list[dict[str, Any]], str]:
        """SIGTERM (unless ``signalled`` already), then the exit code, the parsed stdout log lines and stderr."""
        if not signalled:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=15)
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        return self.process.returncode, lines, err.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


async def start_server(
    tmp_path: Path, name: str = "server", *, open_files: tuple[int, int] | None = None, **extra_env: str
) -> Server:
    """Run the image's own command; only the address, port and data directory are moved onto this machine's
    loopback and a temporary directory, and the interpreter is the one running the tests.

    ``open_files`` (soft, hard) starts it with that RLIMIT_NOFILE, as ``ulimit -n`` would.
    """
    command, image_env = dockerfile_start()
    assert command[0] == "python3"
    port = free_port()
    env = base_env(**image_env)
    env.update(HOST="127.0.0.1", PORT=str(port), DATA_DIR=str(tmp_path / "data"), BCRYPT_ROUNDS="4")
    env.update(METRICS_HOST="127.0.0.1", METRICS_PORT=str(free_port()))
    env.update(extra_env)
    metrics_port = env["METRICS_PORT"].strip()
    metrics_url = f"http://127.0.0.1:{metrics_port}" if metrics_port not in {"", "0"} else f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, *command[1:]],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.PIPE,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files),
        )
    server = Server(process, port, log_path, metrics_url)
    try:
        await wait_until_serving(port, process)
    except BaseException:
        server.kill()
        raise
    return server
