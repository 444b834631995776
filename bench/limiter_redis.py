"""``python -m bench.limiter_redis``: what one rate-limiter ``hit`` costs, in memory and on Redis.

Each case times ``--runs`` rounds (the cases taking turns) of ``--hits`` sequential hits, each over two
buckets as a signup takes them (an email's and an address's), every hit on new keys so each one writes,
and reports the median and tail of one hit in microseconds (``time.perf_counter`` around each awaited
call, on this process's event loop):

- ``memory``: ``MemoryRateLimiter``, the single-instance default;
- ``redis``: ``RedisRateLimiter`` on the Redis at ``--url`` (one EVALSHA round trip per hit);
- ``failover``: ``FailoverRateLimiter`` on that Redis, as the server uses it (the same round trip, and the
  wrapper's bookkeeping);
- ``failover-down``: the same with nothing listening at the address: after the first call's one failure,
  what a hit costs while Redis is down (the local fallback).

Then ``--concurrency`` tasks hit Redis at once, for the throughput one process gets from one connection pool.
Keys go under a prefix of this run's own and are deleted at the end. Prints a Markdown table; writes
nothing unless ``--out`` names a directory (then ``<date>-limiter-redis.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import machine
from server.domain import RateLimiter, Rule
from server.limits.fallback import FailoverRateLimiter
from server.limits.memory import MemoryRateLimiter
from server.limits.redis import RedisRateLimiter, open_redis

EMAIL_RULE = Rule("signup_email", 10, 3600.0)
IP_RULE = Rule("signup_ip", 10, 3600.0)
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def buckets(index: int) -> list[tuple[Rule, str]]:
    address = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    return [(EMAIL_RULE, f"user.{index:07d}@example.com"), (IP_RULE, address)]


async def hit_samples(limiter: RateLimiter, hits: int, offset: int) -> list[float]:
    """Microseconds of each of ``hits`` sequential hits, on keys ``offset`` onwards."""
    samples: list[float] = []
    for index in range(offset, offset + hits):
        names = buckets(index)
        start = time.perf_counter()
        decision = await limiter.hit(names)
        samples.append((time.perf_counter() - start) * 1e6)
        if not decision.allowed:
            raise AssertionError("a hit on new keys was refused")
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
    return {"median_us": statistics.median(samples), "p90_us": cuts[89], "p99_us": cuts[98]}


async def throughput(limiter: RateLimiter, hits: int, concurrency: int, offset: int) -> float:
    """Hits per second with ``concurrency`` tasks hitting at once."""
    queue = iter(range(offset, offset + hits))

    async def worker() -> None:
        for index in queue:
            await limiter.hit(buckets(index))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return hits / (time.perf_counter() - start)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


async def run(url: str, hits: int, runs: int, concurrency: int) -> dict[str, Any]:
    prefix = f"mixauth-bench:{os.getpid()}:{secrets.token_hex(4)}:"
    samples: dict[str, list[float]] = {name: [] for name in ("memory", "redis", "failover", "failover-down")}
    offsets = itertools.count(step=hits)
    async with open_redis(url, timeout=1.0) as client, open_redis(closed_port_url(), timeout=0.1) as dead:
        redis = RedisRateLimiter(client, prefix)
        failover = FailoverRateLimiter(redis, MemoryRateLimiter())
        down = FailoverRateLimiter(RedisRateLimiter(dead, prefix), MemoryRateLimiter())
        try:
            await hit_samples(redis, min(500, hits), next(offsets))  # warm the pool and the script cache
            await down.hit(buckets(0))  # the one call that finds Redis down
            # The cases take turns, round after round, so that the machine's other load falls on all alike.
            for _ in range(runs):
                samples["memory"] += await hit_samples(MemoryRateLimiter(), hits, next(offsets))
                samples["redis"] += await hit_samples(redis, hits, next(offsets))
                samples["failover"] += await hit_samples(failover, hits, next(offsets))
                samples["failover-down"] += await hit_samples(down, hits, next(offsets))
            if failover.state != "redis":
                raise AssertionError("Redis failed during the run")
            rate = await throughput(redis, hits, concurrency, next(offsets))
        finally:
            await failover.close()
            await down.close()
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
    return {
        "date": datetime.now().astimezone().date().isoformat(),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "hits": hits,
        "runs": runs,
        "buckets_per_hit": 2,
        "cases": {name: summary(values) for name, values in samples.items()},
        "concurrency": concurrency,
        "redis_hits_per_second": rate,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"## Rate-limiter hit cost, {results['date']}",
        "",
        f"{results['runs']} rounds of {results['hits']:,} sequential hits per case, {results['buckets_per_hit']} "
        f"buckets each (new keys every hit); microseconds per awaited hit. Python {results['machine']['python']}, "
        f"load at start {results['machine'].get('load_average_at_start')}.",
        "",
        "| limiter | median µs | p90 µs | p99 µs |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in results["cases"].items():
        lines.append(f"| {name} | {figures['median_us']:.1f} | {figures['p90_us']:.1f} | {figures['p99_us']:.1f} |")
    lines += [
        "",
        f"Redis with {results['concurrency']} concurrent tasks: {results['redis_hits_per_second']:,.0f} hits/s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter_redis", description="The cost of one rate-limiter hit, in memory and on Redis."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the Redis to measure (default {DEFAULT_URL})")
    parser.add_argument("--hits", type=int, default=5000, help="hits per case (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="rounds, the cases taking turns (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks for the throughput line (default 16)")
    parser.add_argument("--out", type=Path, help="write <date>-limiter-redis.json and .md into this directory")
    args = parser.parse_args(argv)
    if args.hits < 100 or args.runs < 1 or args.concurrency < 1:
        parser.error("--hits must be 100 or more, --runs and --concurrency 1 or more")
    results = asyncio.run(run(args.url, args.hits, args.runs, args.concurrency))
    text = markdown(results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{results['date']}-limiter-redis"
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
