"""Running ``wrk`` against a loopback URL with one of the Lua scripts in ``bench/lua``, and parsing its report.

Every run uses one wrk thread (``-t1``: the benchmark shares a small machine with the server), a fixed
duration and ``--latency`` for the percentiles. Only the text wrk prints is read; nothing is estimated.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LUA_DIR = Path(__file__).resolve().parent / "lua"
INSTALL_HINT = "wrk is not installed: install it with `apt-get install wrk` (or build it from github.com/wg/wrk)"

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"
_LATENCY_LINE = re.compile(rf"^\s*Latency\s+{_TIME}\s+\S+\s+{_TIME}", re.MULTILINE)
_PERCENTILE = re.compile(rf"^\s*([0-9.]+)%\s+{_TIME}\s*$", re.MULTILINE)
_TOTAL = re.compile(rf"^\s*([0-9]+) requests in {_TIME}", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: ([0-9]+)")


class WrkError(RuntimeError):
    """wrk failed, or printed something this parser does not understand."""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "not installed"
    # `wrk --version` prints its banner and usage, then exits 1.
    result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    banner = re.search(r"wrk \S+", result.stdout or result.stderr)
    return banner.group(0) if banner else "unknown"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. ``ok_per_s`` counts only 2xx/3xx answers; ``requests_per_s`` is wrk's own figure."""

    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    ok_per_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    latency_avg_ms: float
    latency_max_ms: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # "p50", "p75", "p90", "p99"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(output: str, connections: int) -> WrkResult:
    """The figures of one ``wrk --latency`` report."""
    total, rate = _TOTAL.search(output), _RATE.search(output)
    if total is None or rate is None:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    requests = int(total.group(1))
    duration_s = _ms(total.group(2), total.group(3)) / 1000.0
    non_2xx_match = _NON_2XX.search(output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    errors_match = _SOCKET_ERRORS.search(output)
    counts = [int(value) for value in errors_match.groups()] if errors_match else [0, 0, 0, 0]
    latency = _LATENCY_LINE.search(output)
    percentiles = {
        f"p{float(match.group(1)):g}": _ms(match.group(2), match.group(3)) for match in _PERCENTILE.finditer(output)
    }
    return WrkResult(
        connections=connections,
        duration_s=duration_s,
        requests=requests,
        requests_per_s=float(rate.group(1)),
        ok_per_s=(requests - non_2xx) / duration_s if duration_s > 0 else 0.0,
        non_2xx=non_2xx,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts, strict=True)),
        latency_avg_ms=_ms(latency.group(1), latency.group(2)) if latency else 0.0,
        latency_max_ms=_ms(latency.group(3), latency.group(4)) if latency else 0.0,
        latency_ms=percentiles,
    )


@dataclass(frozen=True, slots=True)
class WrkJob:
    """One wrk invocation: ``url`` must be on 127.0.0.1; ``args`` are handed to the Lua script's ``init``."""

    url: str
    script: str
    connections: int
    duration_s: int
    timeout_s: int = 10
    args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        path = wrk_path()
        if path is None:
            raise WrkError(INSTALL_HINT)
        if urlsplit(self.url).hostname != "127.0.0.1":
            raise WrkError(f"refusing to send load anywhere but 127.0.0.1: {self.url}")
        return [
            path,
            "-t1",
            f"-c{self.connections}",
            f"-d{self.duration_s}s",
            f"--timeout={self.timeout_s}s",
            "--latency",
            "-s",
            str(LUA_DIR / self.script),
            self.url,
            *(["--", *self.args] if self.args else []),
        ]

    def start(self) -> subprocess.Popen[str]:
        """Start wrk in the background (for runs that overlap); finish it with ``finish``."""
        return subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603

    def finish(self, process: subprocess.Popen[str]) -> WrkResult:
        """Wait for a started run (bounded: its duration plus a margin), then parse it; kill it on overrun."""
        try:
            out, err = process.communicate(timeout=self.duration_s + self.timeout_s + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise WrkError(f"wrk did not finish in time: {' '.join(self.command())}") from None
        except BaseException:  # interrupted: never leave a wrk running
            process.kill()
            process.communicate()
            raise
        if process.returncode != 0:
            raise WrkError(f"wrk exited with {process.returncode}: {err.strip() or out.strip()}")
        return parse(out, self.connections)

    def run(self) -> WrkResult:
        return self.finish(self.start())
