"""``python -m bench.limiter_memory``: memory per live bucket of ``server.limits.memory.MemoryRateLimiter``.

For each key kind and each size N (by default the limiter's default cap), a new limiter gets one hit for
each of N distinct keys under tracemalloc, and the traced growth divided by N is the cost of one live
bucket: everything the limiter keeps for it, which includes the key string itself if the limiter keeps
that (the limiter alone keeps it alive in the server). Only the limiter's public API is used (``hit_now``,
``len()``); when the constructor takes ``max_buckets``, it is set above N so the cap never evicts.

Key kinds: the ordinary keys signup limiting uses (IPv4 addresses, email addresses), and a hostile one
(``email-nfkc``): the longest email key a client can make the server hand the limiter, an email of the
largest raw length the server normalises (``RAW_SLACK`` times 254 characters) made of U+FDFA, which NFKC
turns into 18 characters each: about 18,000 characters, 36 KB. The limiter must cost the same for it.

Writes ``<out>/<date>-limiter-memory.json`` and ``.md`` and prints the Markdown table. The default run
(three kinds at the default cap, three runs each) takes a minute and a half of CPU, about four minutes on
a busy two-core machine; ``--quick`` takes seconds.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import machine
from server.domain import Rule
from server.limits.memory import MemoryRateLimiter
from server.security import identifier_key
from server.validation import EMAIL_MAX_CHARS, RAW_SLACK

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RULE = Rule("bench", 10, 3600.0)


def ipv4_key(index: int) -> str:
    """A distinct address for every index below 2**32, scattered over the space like real clients."""
    value = (index * 2654435761 + 0x0A000001) & 0xFFFFFFFF
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def email_key(index: int) -> str:
    return f"user.{index:07d}@example.com"


# The raw email is U+FDFA up to the longest raw length the server normalises, then a distinct tail.
_HOSTILE_TAIL = "{index:08d}@example.com"
_HOSTILE_PREFIX = identifier_key("\ufdfa" * (RAW_SLACK * EMAIL_MAX_CHARS - len(_HOSTILE_TAIL.format(index=0))))


def hostile_email_key(index: int) -> str:
    """``identifier_key`` of a maximal NFKC-expanding email (normalised once: the tail is ASCII already)."""
    return _HOSTILE_PREFIX + _HOSTILE_TAIL.format(index=index)


KEY_KINDS: dict[str, Callable[[int], str]] = {"ipv4": ipv4_key, "email": email_key, "email-nfkc": hostile_email_key}
HOSTILE_KINDS = ("email-nfkc",)


def new_limiter(size: int) -> MemoryRateLimiter:
    """A limiter whose clock moves a microsecond per call (a new float every time, as time.monotonic gives,
    and far too slowly for any bucket to refill and be dropped) and whose cap, if any, is above ``size``."""
    ticks = itertools.count()
    kwargs: dict[str, Any] = {"clock": lambda: next(ticks) * 1e-6}
    if "max_buckets" in inspect.signature(MemoryRateLimiter).parameters:
        kwargs["max_buckets"] = size + 1
    return MemoryRateLimiter(**kwargs)


def measure(kind: str, size: int) -> dict[str, float]:
    make_key = KEY_KINDS[kind]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        limiter = new_limiter(size)
        started = time.perf_counter()
        for index in range(size):
            limiter.hit_now(((RULE, make_key(index)),))
        elapsed = time.perf_counter() - started
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if len(limiter) != size:
        raise AssertionError(f"expected {size} live buckets, the limiter holds {len(limiter)}")
    del limiter
    return {
        "bytes_per_bucket": (current - before) / size,
        "peak_bytes_per_bucket": (peak - before) / size,
        "traced_seconds": elapsed,
    }


def default_cap() -> int | None:
    cap = getattr(MemoryRateLimiter(), "max_buckets", None)
    return cap if isinstance(cap, int) else None


def run(sizes: Sequence[int], runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now().astimezone().date().isoformat(),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "rule": {"name": RULE.name, "capacity": RULE.capacity, "window": RULE.window},
        "default_max_buckets": default_cap(),
        "key_examples": {kind: _example(make_key(12345)) for kind, make_key in KEY_KINDS.items()},
        "hostile_kinds": list(HOSTILE_KINDS),
        "mean_key_chars": {
            kind: statistics.fmean(len(make_key(index)) for index in range(0, 1_000_000, 997))
            for kind, make_key in KEY_KINDS.items()
        },
        "kinds": {},
    }
    for kind in KEY_KINDS:
        for size in sizes:
            print(f"[limiter-memory] {kind}: {size:,} keys x {runs}", file=sys.stderr, flush=True)
            samples = [measure(kind, size) for _ in range(runs)]
            results["kinds"].setdefault(kind, {})[str(size)] = {
                "bytes_per_bucket": statistics.median(s["bytes_per_bucket"] for s in samples),
                "peak_bytes_per_bucket": statistics.median(s["peak_bytes_per_bucket"] for s in samples),
                "samples": samples,
            }
    return results


def _example(key: str) -> str:
    return key if len(key) <= 40 else f"{key[:3]}... ({len(key):,} characters)"


def markdown(results: dict[str, Any]) -> str:
    cap = results["default_max_buckets"]
    lines = [
        f"## Rate-limiter memory, {results['date']}",
        "",
        f"`MemoryRateLimiter`, one hit per distinct key, measured with tracemalloc (median of the runs); "
        f"Python {results['machine']['python']}. Bytes include whatever the limiter keeps of the key; "
        f"{', '.join(results.get('hostile_kinds', []))} is hostile: the longest key a client can make.",
        "",
        "| key kind (example) | live buckets | bytes per bucket | peak bytes per bucket | MiB in total |"
        + (f" MiB at the default cap ({cap:,}) |" if cap else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if cap else ""),
    ]
    for kind, by_size in results["kinds"].items():
        for size, figures in by_size.items():
            per_bucket = figures["bytes_per_bucket"]
            row = (
                f"| {kind} (`{results['key_examples'][kind]}`) | {int(size):,} | {per_bucket:.0f} "
                f"| {figures['peak_bytes_per_bucket']:.0f} | {per_bucket * int(size) / 2**20:.1f} |"
            )
            lines.append(row + (f" {per_bucket * cap / 2**20:.1f} |" if cap else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter_memory",
        description="Bytes per live bucket of the in-memory rate limiter, measured with tracemalloc.",
    )
    cap = default_cap() or 200_000
    parser.add_argument("--sizes", default=str(cap), help=f"live bucket counts (default the default cap, {cap})")
    parser.add_argument("--runs", type=int, default=3, help="runs per point, median reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="size 10000 and one run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"output directory (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    try:
        sizes = [int(part) for part in ("10000" if args.quick else args.sizes).split(",") if part.strip()]
    except ValueError:
        parser.error(f"--sizes: expected numbers separated by commas, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.runs < 1:
        parser.error("--sizes and --runs must be 1 or more")
    results = run(sizes, 1 if args.quick else args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{results['date']}-limiter-memory"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
