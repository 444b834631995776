"""Starting, probing, measuring and stopping the two servers under test, each in its own subprocess.

- mixauth exactly as a user starts it: ``python3 -m server`` with ``PYTHONPATH`` at the repository root, a
  temporary ``DATA_DIR``, a free loopback ``PORT`` and settings only through the environment.
- the ceiling server: ``python3 -m bench.ceiling``.
- the peer (``--peer``): fastapi-users' full example (``bench.peer_fastapi_users``) on uvicorn, with uvloop
  and httptools, in its own interpreter (the one with the ``bench-peer`` extra).

Each server's stdout and stderr go to files in the run's ``logs`` directory: mixauth's access lines (one per
request at ``LOG_LEVEL=info``) are really written, a ``write`` per flush into the page cache, as to a log file
or a pipe a collector drains; /dev/null would make them free. The event loop is chosen per server: mixauth's
own choice is uvloop when it is importable, so for the standard loop it runs with uvloop hidden from imports.

Start-up time is from just before the spawn to the first HTTP answer of any status, with the servers' bytecode
compiled first (``compile_bytecode``), as an installed package has it. Memory is the process's ``VmRSS`` (and
its peak, ``VmHWM``) from ``/proc/<pid>/status``, CPU time from ``/proc/<pid>/stat``; the event loop in use is
read from ``/proc/<pid>/maps`` (uvloop's extension module is mapped only when the process imported uvloop).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import client
from server.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
HIGH_LIMIT = "1000000000"
START_DEADLINE_S = 30.0
LOOPS = ("uvloop", "asyncio")
# `python -m server`, with uvloop made unimportable first (a None entry in sys.modules fails the import).
WITHOUT_UVLOOP = "import runpy, sys; sys.modules['uvloop'] = None; runpy.run_module('server', run_name='__main__')"


def compile_bytecode(python: str = sys.executable) -> None:
    """Write the bytecode of mixauth's modules and the ceiling's, as pip does when it installs a package.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this benchmark's environment may have it, as many containers
    do) and nothing compiled them, every start would compile mixauth's modules from source (about 40 ms),
    which no installed server does; the libraries in site-packages were compiled when they were installed.
    The files go to ``__pycache__`` beside the sources, which git ignores.
    """
    sources = [ROOT / "server", ROOT / "bench" / "__init__.py", ROOT / "bench" / "ceiling.py"]
    command = [python, "-m", "compileall", "-q", *map(str, sources)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    if result.returncode != 0:
        raise ServerError(f"compiling the servers' bytecode failed: {(result.stdout + result.stderr).strip()[-300:]}")


class ServerError(RuntimeError):
    """A server did not start, or stopped while it was being measured."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((client.HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class MixauthOptions:
    """What the benchmark sets on mixauth; ``bcrypt_rounds=None`` keeps the server's default cost; ``env``
    adds settings (name, value) after the benchmark's own, for instance ``DATABASE_URL`` for a backend."""

    hash_workers: int
    python: str = sys.executable
    bcrypt_rounds: int | None = None
    log_level: str = "info"
    metrics: bool = True
    loop: str = "uvloop"
    env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """How the report names these settings: ``defaults``, ``warning`` or ``warning, no metrics``."""
        parts = [] if self.log_level == "info" else [self.log_level]
        if not self.metrics:
            parts.append("no metrics")
        return ", ".join(parts) or "defaults"


def mixauth_settings(options: MixauthOptions) -> dict[str, str]:
    """The settings the benchmark gives mixauth (environment variables), besides its address and data."""
    settings = {
        "HOST": client.HOST,
        "LOG_LEVEL": options.log_level,
        "METRICS_ENABLED": "true" if options.metrics else "false",
        "USER_SIGNUP_RATE_LIMIT_EMAIL": HIGH_LIMIT,
        "USER_SIGNUP_RATE_LIMIT_IP": HIGH_LIMIT,
        # Sign-in throttling settings: ignored by a server that does not have them.
        "USER_SIGNIN_RATE_LIMIT_ACCOUNT": HIGH_LIMIT,
        "USER_SIGNIN_RATE_LIMIT_IP": HIGH_LIMIT,
        "HASH_WORKERS": str(options.hash_workers),
    }
    if options.bcrypt_rounds is not None:
        settings["BCRYPT_ROUNDS"] = str(options.bcrypt_rounds)
    settings.update(options.env)
    return settings


def mixauth_env(data_dir: Path, port: int, options: MixauthOptions) -> dict[str, str]:
    """The environment for one mixauth process: this one's minus every mixauth setting, plus the bench's."""
    settings = mixauth_settings(options) | {"PYTHONPATH": str(ROOT), "PORT": str(port), "DATA_DIR": str(data_dir)}
    # The metrics listener on a free port too: its fixed default would clash with any other server running.
    settings["METRICS_PORT"] = str(free_port())
    inherited = {option.env for option in OPTIONS} | set(settings) | {"BCRYPT_ROUNDS", "HASH_WORKERS"}
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env.update(settings)
    return env


def ceiling_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class ServerProcess:
    """A running server: its process, port, logs and the seconds from spawn to its first answer."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    startup_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://{client.HOST}:{self.port}{path}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(f"{self.name} exited with {self.process.returncode}: {self._stderr_tail()}")

    def memory_kib(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak RSS) in KiB, from /proc/<pid>/status."""
        self.check_alive()
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in {"VmRSS", "VmHWM"}:
                fields[name] = int(value.split()[0])
        return fields

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, user and system, from /proc/<pid>/stat."""
        self.check_alive()
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime in clock ticks

    def event_loop(self) -> str:
        """``uvloop`` when uvloop's extension module is mapped into the process, else ``asyncio``."""
        self.check_alive()
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return "uvloop" if "/uvloop/loop." in maps else "asyncio"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        return self.process.returncode

    def _stderr_tail(self) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no stderr)"
        return " | ".join(lines[-5:]) or "(no stderr)"


def _spawn(name: str, command: list[str], env: Mapping[str, str], cwd: Path, log_dir: Path, port: int) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / f"{name}.stdout.log", log_dir / f"{name}.stderr.log"
    with stdout_path.open("ab") as stdout, stderr_path.open("ab") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr)  # noqa: S603
    server = ServerProcess(name, process, port, stderr_path)
    try:
        server.startup_s = _wait_for_first_answer(server, started)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_first_answer(server: ServerProcess, started: float) -> float:
    while time.perf_counter() - started < START_DEADLINE_S:
        server.check_alive()
        if client.answers(server.port):
            return time.perf_counter() - started
        time.sleep(0.005)
    raise ServerError(f"{server.name} did not answer within {START_DEADLINE_S:.0f} s")


def start_mixauth(
    work_dir: Path, options: MixauthOptions, name: str = "mixauth", extra_env: Mapping[str, str] | None = None
) -> ServerProcess:
    """mixauth on a free port with its data in ``work_dir/<name>-data`` (run from ``work_dir``, so no
    config.toml is picked up); ``extra_env`` adds or overrides settings."""
    port = free_port()
    env = mixauth_env(work_dir / f"{name}-data", port, options) | dict(extra_env or {})
    # For asyncio's loop: `python -m server` with `import uvloop` failing, so the server falls back to it.
    command = [options.python, "-m", "server"] if options.loop == "uvloop" else [options.python, "-c", WITHOUT_UVLOOP]
    return _spawn(name, command, env, work_dir, work_dir / "logs", port)


def start_ceiling(
    work_dir: Path, python: str = sys.executable, body: str | None = None, name: str = "ceiling", loop: str = "uvloop"
) -> ServerProcess:
    port = free_port()
    command = [python, "-m", "bench.ceiling", "--port", str(port), "--loop", loop]
    if body is not None:
        command += ["--body", body]
    return _spawn(name, command, ceiling_env(), work_dir, work_dir / "logs", port)


def start_peer(work_dir: Path, python: str, name: str = "peer") -> ServerProcess:
    """fastapi-users' full example on uvicorn (uvloop, httptools, access log at info), its database in
    ``work_dir/<name>-data/test.db``; ``python`` must have the ``bench-peer`` extra."""
    port = free_port()
    data_dir = work_dir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "uvicorn", "bench.peer_fastapi_users:app", "--host", client.HOST, "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "httptools", "--log-level", "info"]
    return _spawn(name, command, ceiling_env(), data_dir, work_dir / "logs", port)
