"""``python -m bench.metrics_listener``: what serving /metrics costs, by where it is served.

Three mixauth processes run side by side on loopback, each with one user: metrics on their own listener
(the default), metrics on the API port behind METRICS_TOKEN, and metrics off. For each, wrk drives
``GET /user`` (the hot path) for ``--duration`` seconds, ``--repeats`` times, the three taking turns (each
going first in turn) so that drift on a shared machine hits them alike; medians are reported. Then
``--scrapes`` sequential scrapes of each /metrics over one keep-alive connection give the median time of a
scrape and its size. Load goes to 127.0.0.1 only, bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import client
from bench.servers import MixauthOptions, ServerProcess, free_port, start_mixauth
from bench.wrk import WrkError, WrkJob, WrkResult

TOKEN = "bench-metrics-token-0123456789abcdef"  # noqa: S105 - a loopback benchmark's own token


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    env: dict[str, str]
    metrics_port: int | None = None  # None: on the API port (or off)
    token: str = ""


@dataclass
class Running:
    layout: Layout
    server: ServerProcess
    user_token: str
    runs: list[WrkResult] = field(default_factory=list)


def layouts() -> list[Layout]:
    listener = free_port()
    return [
        Layout("own listener (default)", {"METRICS_PORT": str(listener)}, metrics_port=listener),
        Layout("API port + METRICS_TOKEN", {"METRICS_PORT": "", "METRICS_TOKEN": TOKEN}, token=TOKEN),
        Layout("metrics off", {"METRICS_ENABLED": "false"}),
    ]


def scrape_times(port: int, token: str, count: int) -> tuple[list[float], int]:
    """Seconds each of ``count`` sequential scrapes took on one connection, and the last body's size."""
    connection = http.client.HTTPConnection(client.HOST, port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    times, size = [], 0
    try:
        for _ in range(count):
            began = time.perf_counter()
            connection.request("GET", "/metrics", headers=headers)
            response = connection.getresponse()
            body = response.read()
            times.append(time.perf_counter() - began)
            if response.status != 200:
                raise client.ClientError(f"GET /metrics answered {response.status}")
            size = len(body)
    finally:
        connection.close()
    return times, size


def start(work: Path, index: int, layout: Layout) -> Running:
    options = MixauthOptions(hash_workers=1, bcrypt_rounds=4)
    server = start_mixauth(work, options, name=f"mixauth-{index}", extra_env=layout.env)
    try:
        body = {"username": "bench", "email": "bench@example.com", "password": "bench-password"}
        token: str = client.expect_json(server.port, "POST", "/user", body)["token"]
        client.expect_json(server.port, "GET", "/user", token=token)
    except BaseException:
        server.stop()
        raise
    return Running(layout, server, token)


def run(args: argparse.Namespace, work: Path) -> None:
    running: list[Running] = []
    try:
        for index, layout in enumerate(layouts()):
            running.append(start(work, index, layout))
        for repeat in range(args.repeats):
            # Each layout goes first in turn, so that none always meets a machine fresh from the previous run.
            shift = repeat % len(running)
            for each in running[shift:] + running[:shift]:
                url = each.server.url("/user")
                job = WrkJob(url, "get_user.lua", args.connections, args.duration, args=(each.user_token,))
                each.runs.append(job.run())
        print(
            f"GET /user, wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.repeats} runs; "
            f"then {args.scrapes} sequential scrapes\n"
        )
        print("| layout | GET /user req/s | p50 ms | p99 ms | scrape median ms | scrape bytes |")
        print("|---|---|---|---|---|---|")
        for each in running:
            rate = statistics.median(result.ok_per_s for result in each.runs)
            p50 = statistics.median(result.latency_ms.get("p50", 0.0) for result in each.runs)
            p99 = statistics.median(result.latency_ms.get("p99", 0.0) for result in each.runs)
            scrape, size = "n/a", "n/a"
            if each.layout.env.get("METRICS_ENABLED") != "false":
                port = each.layout.metrics_port or each.server.port
                times, body_size = scrape_times(port, each.layout.token, args.scrapes)
                scrape, size = f"{statistics.median(times) * 1000:.2f}", str(body_size)
            print(f"| {each.layout.name} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {scrape} | {size} |")
    finally:
        for each in running:
            each.server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_listener", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, metavar="S", help="seconds per wrk run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="wrk runs per layout (default 3)")
    parser.add_argument("--connections", type=int, default=16, metavar="N", help="wrk connections (default 16)")
    parser.add_argument("--scrapes", type=int, default=200, metavar="N", help="scrapes per layout (default 200)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mixauth-bench-metrics-") as work:
        try:
            run(args, Path(work))
        except (WrkError, client.ClientError, OSError) as exc:
            print(f"bench.metrics_listener: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
