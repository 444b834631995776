"""How long an idle mixauth takes to exit on SIGTERM: ``python3 -m bench.exit_time [--runs N]``.

Each run starts ``python3 -m server`` as ``bench.servers`` does, lets it settle, sends SIGTERM and waits for
the exit. Printed: the median wall time from the signal to the exit, and the median CPU time the process
spent in between (less sensitive to a busy machine), with every run's wall time.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.servers import MixauthOptions, start_mixauth


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_once(work_dir: Path, name: str, settle_s: float) -> tuple[float, float]:
    server = start_mixauth(work_dir, MixauthOptions(hash_workers=1, bcrypt_rounds=4), name=name)
    time.sleep(settle_s)  # idle: start-up's last steps done, no request in flight
    cpu_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(server.pid, 0)
    wall = time.perf_counter() - started
    server.process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--settle", type=float, default=0.3, help="seconds idle before the signal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mixauth-exit-") as work:
        runs = [measure_once(Path(work), f"exit{n}", args.settle) for n in range(args.runs)]
    walls = sorted(wall for wall, _ in runs)
    cpu = statistics.median(cpu for _, cpu in runs)
    print(f"SIGTERM to exit, idle, {args.runs} runs: median {statistics.median(walls):.3f} s wall, {cpu:.3f} s CPU")
    print("wall, sorted: " + " ".join(f"{wall:.2f}" for wall in walls))


if __name__ == "__main__":
    main()
