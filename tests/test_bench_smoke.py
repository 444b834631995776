"""The benchmark (``python -m bench``) runs end to end for about a second per phase and writes its results.

The end-to-end run needs ``wrk`` (``.ci/run`` installs it from Debian; where it cannot, the test is skipped
with that reason). The benchmark itself never runs in CI; these tests only keep the command from rotting.
The other two need no wrk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.wrk import parse

ROOT = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40000/user
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.51ms    2.03ms  48.20ms   91.00%
    Req/Sec     3.05k   210.00     3.40k    70.00%
  Latency Distribution
     50%   10.10ms
     75%   11.00ms
     90%   12.50ms
     99%  850.00us
  30500 requests in 10.00s, 9.87MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 500
Requests/sec:   3049.80
Transfer/sec:      0.99MB
"""


def test_wrk_reports_are_parsed_with_their_units() -> None:
    result = parse(WRK_OUTPUT, connections=32)
    assert result.requests == 30500
    assert result.duration_s == 10.0
    assert result.requests_per_s == 3049.80
    assert result.ok_per_s == 3000.0
    assert result.latency_ms == {"p50": 10.1, "p75": 11.0, "p90": 12.5, "p99": 0.85}
    assert result.latency_max_ms == 48.2
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3}


def test_without_wrk_the_benchmark_says_how_to_install_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "apt-get install wrk" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_one_second_benchmark_run_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [sys.executable, "-m", "bench", "--quick", "--duration", "1", "--connections", "4", "--repeats", "1"]
    command += ["--starts", "1", "--bcrypt-rounds", "4", "--loops", "uvloop,asyncio", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    [json_path] = out.glob("*.json")
    assert json_path.with_suffix(".md").is_file()
    results = json.loads(json_path.read_text())
    assert {
        "plan",
        "machine",
        "servers",
        "startup_s",
        "get_user",
        "get_user_under_signin_flood",
        "sign_in",
        "sign_up",
        "bcrypt_ceiling",
        "memory_kib",
        "ratios",
    } <= set(results)
    assert results["plan"]["bcrypt_rounds"] == 4
    servers = ("mixauth", "mixauth_warning", "mixauth_warning_no_metrics", "ceiling")
    for loop in ("uvloop", "asyncio"):
        for server in servers:
            # The asked-for loop, as read from the process's memory map (uvloop is a dev dependency).
            assert results["servers"][loop][server]["loop"] == loop
            assert results["get_user"][loop][server]["4"]["median"]["ok_per_s"] > 0
        assert results["servers"][loop]["mixauth"]["env"]["LOG_LEVEL"] == "info"
        assert results["servers"][loop]["mixauth_warning_no_metrics"]["env"]["METRICS_ENABLED"] == "false"
        assert set(results["ratios"]["get_user_vs_ceiling"][loop]["mixauth"]) == {"4"}
    for server in ("mixauth", "ceiling"):
        assert results["startup_s"][server]["median"] > 0
    assert results["sign_in"]["median"]["ok_per_s"] > 0
    assert results["sign_up"]["median"]["ok_per_s"] > 0
    assert results["bcrypt_ceiling"]["checks_per_s"] > 0
    assert results["memory_kib"]["loaded"]["VmRSS"] > 0
    assert results["ratios"]["get_user_vs_peer"] is None  # no --peer: fastapi-users is never needed
    assert "### GET /user on asyncio" in result.stdout
    assert "### Summary" in result.stdout
