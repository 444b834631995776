"""``python -m bench``: the command line. It turns the flags into a ``Plan``, checks that the ``--backend``
servers answer and that wrk is there, runs the plan and writes the results; the run itself is
``bench.suite``'s.

Exit codes: 0 done, 2 a bad flag, a ``--backend`` server not answering or wrk missing, 1 the benchmark
failed (a server did not start or died), 130 interrupted (Ctrl-C). The servers and wrk are stopped whatever
happens, and the run's databases and Redis keys removed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import backends, report, suite
from bench.backends import BackendError
from bench.client import ClientError
from bench.servers import LOOPS, ServerError
from bench.wrk import INSTALL_HINT, WrkError, wrk_path
from server.hashing import default_workers

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CONNECTIONS = (8, 32, 128)
QUICK_CONNECTIONS = (8, 64)


def connection_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("connection counts must be 1 or more")
    return counts


def loop_names(text: str) -> tuple[str, ...]:
    loops = tuple(part.strip() for part in text.split(",") if part.strip())
    if not loops or any(loop not in LOOPS for loop in loops):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(LOOPS)}, separated by commas, got {text!r}")
    return tuple(dict.fromkeys(loops))


def backend_list(text: str) -> tuple[str, ...]:
    try:
        return backends.backend_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def has_peer(python: str) -> bool:
    """Whether ``python`` can run the peer (the bench-peer extra is installed there)."""
    check = "import fastapi_users, fastapi_users_db_sqlalchemy, aiosqlite, uvicorn, uvloop, httptools"
    return subprocess.run([python, "-c", check], capture_output=True, timeout=60, check=False).returncode == 0  # noqa: S603


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark mixauth (with its defaults, and with LOG_LEVEL=warning, and with metrics off too) "
        "against a bare aiohttp server answering the same bytes on the same event loop, the raw bcrypt ceiling "
        "and, with --peer, fastapi-users' full example; over loopback with wrk. About 7 minutes by default "
        "(8 with --peer), under a minute with --quick (sign-in and signup runs stretch on a slow or busy "
        "machine until about 30 answers fit).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 2 s per point, connections 8 and 64, uvloop only"
    )
    parser.add_argument("--duration", type=int, metavar="S", help="seconds per wrk run (default 4; quick 2)")
    parser.add_argument(
        "--loops",
        type=loop_names,
        metavar="L,L",
        help="event loops for GET /user: uvloop, asyncio or both (default uvloop,asyncio; quick uvloop)",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also measure fastapi-users' full example (GET /users/me) on uvicorn: pip install '.[bench-peer]'",
    )
    parser.add_argument(
        "--peer-python",
        metavar="PATH",
        help="interpreter with the bench-peer extra that runs the peer (implies --peer; default: --python)",
    )
    parser.add_argument(
        "--backend",
        type=backend_list,
        default=(),
        metavar="NAMES",
        help="also measure mixauth on shared backends beside SQLite, comma-separated: postgres (DATABASE_URL: "
        "users in PostgreSQL), redis (REDIS_URL: rate limits in Redis); with both, both together too. GET /user "
        "against SQLite in the same sweep, sign-in and signup against the bcrypt ceiling; with redis, the cost "
        "of one rate-limiter hit in memory and on Redis. About 2 minutes per configuration (under one with "
        "--quick)",
    )
    parser.add_argument(
        "--database-url",
        default=backends.default_database_url(),
        metavar="URL",
        help="the PostgreSQL server for --backend postgres; the bench creates its own databases there and "
        "drops them at the end (default: MIXAUTH_TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    parser.add_argument(
        "--redis-url",
        default=backends.default_redis_url(),
        metavar="URL",
        help="the Redis for --backend redis; the bench's keys go under a prefix of its own and are deleted at "
        "the end (default: MIXAUTH_TEST_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--limiter-hits",
        type=int,
        metavar="N",
        help="sequential rate-limiter hits per case and round, with --backend redis (default 5000; quick 2000)",
    )
    parser.add_argument("--connections", type=connection_counts, metavar="N,N", help="default 8,32,128")
    parser.add_argument("--repeats", type=int, metavar="N", help="runs per point, medians reported (default 3)")
    parser.add_argument("--starts", type=int, metavar="N", help="start-up samples per server (default 5; quick 3)")
    parser.add_argument("--bcrypt-rounds", type=int, metavar="N", help="bcrypt cost (default: the server's, 12)")
    parser.add_argument(
        "--hash-workers",
        type=int,
        metavar="N",
        help="mixauth's HASH_WORKERS and the bcrypt ceiling's threads (default: the server's, CPU count less one)",
    )
    parser.add_argument(
        "--bcrypt-connections",
        type=int,
        metavar="N",
        help="connections for sign-in, signup and the sign-in flood (default: 2 per hashing thread)",
    )
    parser.add_argument(
        "--flood-connections",
        type=int,
        metavar="N",
        help="GET /user connections during the sign-in flood (default: the middle connection count)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter that runs both servers, for instance a virtual environment with only mixauth's "
        "own dependencies, as a user installs them (default: this one)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"output directory (default {RESULTS_DIR})")
    return parser


def make_plan(args: argparse.Namespace) -> suite.Plan:
    connections: tuple[int, ...] = args.connections or (QUICK_CONNECTIONS if args.quick else DEFAULT_CONNECTIONS)
    duration: int = args.duration or (2 if args.quick else 4)
    repeats: int = args.repeats or (1 if args.quick else 3)
    workers: int = args.hash_workers or default_workers()
    limiter_hits: int = args.limiter_hits or (2000 if args.quick else 5000)
    for name, value in (("--duration", duration), ("--repeats", repeats), ("--hash-workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be 1 or more")
    if limiter_hits < 100:
        raise ValueError("--limiter-hits must be 100 or more")
    return suite.Plan(
        connections=connections,
        repeats=repeats,
        duration_s=duration,
        starts=args.starts or (3 if args.quick else 5),
        hash_workers=workers,
        python=args.python,
        bcrypt_rounds=args.bcrypt_rounds,
        bcrypt_connections=args.bcrypt_connections or 2 * workers,
        flood_connections=args.flood_connections or sorted(connections)[len(connections) // 2],
        # A bcrypt ceiling sample needs a few checks per thread; 3 s is about a dozen each at cost 12.
        bcrypt_seconds=float(min(duration, 3)),
        loops=args.loops or (("uvloop",) if args.quick else LOOPS),
        peer_python=args.peer_python or (args.python if args.peer else None),
        backends=args.backend,
        database_url=args.database_url,
        redis_url=args.redis_url,
        limiter_hits=limiter_hits,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        backends.check(plan.backends, plan.database_url, plan.redis_url)
    except BackendError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if wrk_path() is None:
        print(f"bench: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if plan.peer_python is not None and not has_peer(plan.peer_python):
        print(
            f"bench: the peer needs fastapi-users, uvicorn, uvloop and httptools in {plan.peer_python}: "
            "pip install '.[bench-peer]' there, or name another interpreter with --peer-python",
            file=sys.stderr,
        )
        return 2
    try:
        results = suite.run(plan)
    except (ServerError, WrkError, ClientError, BackendError) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers and wrk stopped, nothing written", file=sys.stderr)
        return 130
    json_path, md_path, png_path = report.write(results, args.out)
    written = ", ".join(str(path) for path in (json_path, md_path, png_path) if path is not None)
    suite.say(f"done in {results['elapsed_s']} s; wrote {written}")
    print(md_path.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
