"""The raw bcrypt ceiling: how many ``bcrypt.checkpw`` calls per second this machine does at a given cost
on N threads, in this process (bcrypt releases the GIL, so N threads use up to N cores).

This is the most sign-ins per second any server could do here with N hashing threads; a signup costs one
``hashpw`` at the same cost, which takes the same time as one check.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import bcrypt

PASSWORD = b"bench-ceiling-Pa55word"


@dataclass(frozen=True, slots=True)
class BcryptRun:
    rounds: int
    threads: int
    checks: int
    elapsed_s: float
    checks_per_s: float
    seconds_per_check: float  # wall time of one check on one thread (median of this run)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(rounds: int, threads: int, duration_s: float) -> BcryptRun:
    """Every thread checks the same hash until ``duration_s`` has passed; a check in progress at the
    deadline finishes and counts, and the elapsed time runs until the last thread stops."""
    password_hash = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds))
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    deadline = 0.0

    def work(timings: list[float]) -> None:
        start.wait()
        while True:
            begun = time.perf_counter()
            if begun >= deadline:
                return
            if not bcrypt.checkpw(PASSWORD, password_hash):
                raise AssertionError("bcrypt check failed")
            timings.append(time.perf_counter() - begun)

    workers = [threading.Thread(target=work, args=(timings,), daemon=True) for timings in per_thread]
    for worker in workers:
        worker.start()
    begun = time.perf_counter()
    deadline = begun + duration_s
    start.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - begun
    timings = sorted(t for thread_timings in per_thread for t in thread_timings)
    checks = len(timings)
    return BcryptRun(
        rounds=rounds,
        threads=threads,
        checks=checks,
        elapsed_s=elapsed,
        checks_per_s=checks / elapsed,
        seconds_per_check=timings[len(timings) // 2] if timings else 0.0,
    )
