"""One benchmark run, phase by phase, and the ratios between its figures.

The phases, in order (all load goes to 127.0.0.1 and every wrk run has a fixed duration):

1. start-up: spawn-to-first-answer of mixauth and of the ceiling server, started alternately ``starts``
   times each, mixauth on a fresh data directory every time;
2. for each event loop (uvloop, then asyncio's own): mixauth three times (its defaults: ``LOG_LEVEL=info``,
   every access line written, and metrics on, on their own listener; ``LOG_LEVEL=warning``; warning and
   ``METRICS_ENABLED=false``) and the ceiling on that loop, one user created over HTTP on each mixauth; with
   ``--peer``, fastapi-users' full example too (uvloop only, as its documentation runs it) and its user;
3. GET /user on every server at each connection count, alternating servers, ``repeats`` rounds (the peer's
   GET /users/me with its own token); the servers of that loop stopped, except mixauth with its defaults on
   the first loop, whose idle RSS was taken before and which runs the phases below;
4. GET /user on mixauth while a second wrk floods POST /user/auth with the right password;
5. POST /user/auth alone, then POST /user with a new user per request, each run long enough for about
   MIN_BCRYPT_REQUESTS answers at the bcrypt ceiling and preceded by a fresh bcrypt ceiling sample (the
   ratio to the bcrypt ceiling is taken run by run against it, as the machine's load drifts);
6. mixauth's RSS after the load, then both servers stopped;
7. with ``--backend``, for each backend configuration (``bench.backends``): mixauth with its defaults on
   uvloop twice, on SQLite and on that configuration, GET /user swept over both alternately (so that the
   ratio is taken in the same minutes), the SQLite one stopped, then sign-in and signup on the backend one,
   each run against a bcrypt ceiling sample taken just before it, as in 5;
8. with ``redis`` among the backends, the cost of one rate-limiter hit in memory and on Redis, in this
   process (``bench.limiter_redis``).

Before any server starts, the bcrypt ceiling is measured in this process, at the server's cost and hashing
thread count (it also sets how long the sign-in and signup runs must be).

Medians are taken over the repeats; the raw runs are kept next to them.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import backends, bcrypt_ceiling, client, limiter_redis, machine
from bench.backends import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from bench.bcrypt_ceiling import BcryptRun
from bench.servers import (
    MixauthOptions,
    ServerProcess,
    compile_bytecode,
    mixauth_settings,
    start_ceiling,
    start_mixauth,
    start_peer,
)
from bench.wrk import WrkJob, WrkResult
from server.config import Settings

# The mixauth settings measured side by side: its defaults, then with each feature's cost taken away.
VARIANTS: dict[str, dict[str, Any]] = {
    "mixauth": {},
    "mixauth_warning": {"log_level": "warning"},
    "mixauth_warning_no_metrics": {"log_level": "warning", "metrics": False},
}
PEER = "fastapi_users"

# Sign-ins and signups wait for bcrypt; at cost 12 a queue of a few requests per thread is seconds long.
BCRYPT_TIMEOUT_S = 60
GET_TIMEOUT_S = 10
FLOOD_LEAD_S = 1
# A sign-in or signup run lasts long enough for about this many answers, within MAX_BCRYPT_DURATION_S.
MIN_BCRYPT_REQUESTS = 30
MAX_BCRYPT_DURATION_S = 60


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run; ``bcrypt_rounds=None`` keeps the server's default cost. ``backends`` (``bench.backends``'
    names) are measured on the PostgreSQL server at ``database_url`` and the Redis at ``redis_url`` (never
    written to the results: they may hold passwords); ``limiter_hits`` per case of the limiter measurement."""

    connections: tuple[int, ...]
    repeats: int
    duration_s: int
    starts: int
    hash_workers: int
    python: str
    bcrypt_rounds: int | None
    bcrypt_connections: int
    flood_connections: int
    bcrypt_seconds: float
    loops: tuple[str, ...] = ("uvloop",)
    peer_python: str | None = None
    backends: tuple[str, ...] = ()
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    limiter_hits: int = 5000

    @property
    def effective_rounds(self) -> int:
        return self.bcrypt_rounds if self.bcrypt_rounds is not None else Settings().bcrypt_rounds


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summarize(runs: Iterable[WrkResult]) -> dict[str, Any]:
    """Medians of a group of wrk runs (errors are summed, not averaged)."""
    runs = list(runs)

    def median(pick: Callable[[WrkResult], float]) -> float:
        return statistics.median(pick(run) for run in runs)

    return {
        "runs": len(runs),
        "ok_per_s": median(lambda run: run.ok_per_s),
        "requests_per_s": median(lambda run: run.requests_per_s),
        "p50_ms": median(lambda run: run.latency_ms.get("p50", 0.0)),
        "p90_ms": median(lambda run: run.latency_ms.get("p90", 0.0)),
        "p99_ms": median(lambda run: run.latency_ms.get("p99", 0.0)),
        "non_2xx": sum(run.non_2xx for run in runs),
        "socket_errors": sum(sum(run.socket_errors.values()) for run in runs),
    }


def _group(runs: list[WrkResult]) -> dict[str, Any]:
    return {"median": summarize(runs), "runs": [run.as_dict() for run in runs]}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


class Run:
    """The state of one benchmark run; ``execute`` returns the results document."""

    def __init__(self, plan: Plan, work_dir: Path) -> None:
        self.plan = plan
        self.work_dir = work_dir
        self.prefix = secrets.token_hex(4)
        self.username = f"bench{self.prefix}"
        self.password = secrets.token_hex(12)
        self.token = ""
        self.tokens: dict[int, str] = {}  # by server port
        self.paths: dict[int, str] = {}  # by server port, where it is not GET /user (the peer's)
        self.mixauth_options = MixauthOptions(
            hash_workers=plan.hash_workers, python=plan.python, bcrypt_rounds=plan.bcrypt_rounds
        )

    def execute(self) -> dict[str, Any]:
        started = time.time()
        results: dict[str, Any] = {
            "date": datetime.now().astimezone().date().isoformat(),
            "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "plan": {
                "connections": list(self.plan.connections),
                "repeats": self.plan.repeats,
                "duration_s": self.plan.duration_s,
                "starts": self.plan.starts,
                "hash_workers": self.plan.hash_workers,
                "bcrypt_rounds": self.plan.effective_rounds,
                "bcrypt_rounds_source": "flag" if self.plan.bcrypt_rounds is not None else "server default",
                "bcrypt_connections": self.plan.bcrypt_connections,
                "flood_connections": self.plan.flood_connections,
                "bcrypt_seconds": self.plan.bcrypt_seconds,
                "wrk_threads": 1,
                "loops": list(self.plan.loops),
                "peer": self.plan.peer_python is not None,
                "backends": list(self.plan.backends),
                "backend_configurations": list(backends.configurations(self.plan.backends)),
            },
            "machine": machine.describe(),
        }
        compile_bytecode(self.plan.python)
        results["startup_s"] = self.measure_startup()
        results["bcrypt_ceiling"] = self.bcrypt_ceiling()
        bcrypt_duration = self.bcrypt_duration(results["bcrypt_ceiling"]["checks_per_s"])
        results["plan"]["bcrypt_duration_s"] = bcrypt_duration
        mixauth: ServerProcess | None = None
        try:
            results["get_user"], results["servers"] = {}, {}
            for loop in self.plan.loops:
                kept, idle = self.loop_phase(loop, results, keep=mixauth is None)
                if kept is not None:
                    mixauth, idle_memory = kept, idle
            assert mixauth is not None
            results["get_user_under_signin_flood"] = self.flood(mixauth)
            connections, duration = self.plan.bcrypt_connections, bcrypt_duration
            results["sign_in"] = self.bcrypt_endpoint(
                mixauth, "sign-in", lambda _: self.signin_job(mixauth, connections, duration)
            )
            results["sign_up"] = self.bcrypt_endpoint(
                mixauth, "signup", lambda attempt: self.signup_job(mixauth, connections, duration, attempt)
            )
            results["memory_kib"] = {"idle": idle_memory, "loaded": mixauth.memory_kib()}
        finally:
            if mixauth is not None:
                mixauth.stop()
        if self.plan.backends:
            results["backends"], results["plan"]["backend_resources"] = self.backends_phase(bcrypt_duration)
        if "redis" in self.plan.backends:
            results["limiter"] = self.limiter_round_trip()
        results["bcrypt_ceiling"] = all_bcrypt_samples(results)
        results["ratios"] = ratios(results)
        results["machine"]["load_average_at_end"] = machine.load_average()
        results["elapsed_s"] = round(time.time() - started, 1)
        return results

    # -- phases ---------------------------------------------------------------------------------------------

    def loop_phase(self, loop: str, results: dict[str, Any], keep: bool) -> tuple[ServerProcess | None, dict[str, int]]:
        """Start this loop's servers, sweep GET /user over them, stop them; with ``keep``, mixauth with its
        defaults stays running (returned with its idle RSS) for the phases after."""
        say(f"{loop}: starting mixauth ({', '.join(VARIANTS)}) and the ceiling")
        servers: dict[str, ServerProcess] = {}
        kept: ServerProcess | None = None
        idle: dict[str, int] = {}
        try:
            for name, changes in VARIANTS.items():
                options = replace(self.mixauth_options, loop=loop, **changes)
                servers[name] = start_mixauth(self.work_dir, options, name=f"{name}-{loop}")
                if name == "mixauth" and keep:
                    time.sleep(0.5)
                    idle = servers[name].memory_kib()
            bodies = {name: self.create_user(server) for name, server in servers.items()}
            body = bodies["mixauth"]
            servers["ceiling"] = start_ceiling(self.work_dir, self.plan.python, body, f"ceiling-{loop}", loop)
            described = self.describe_servers(servers, body, loop)
            if self.plan.peer_python is not None and loop == "uvloop":
                say("starting the peer: fastapi-users' full example on uvicorn")
                servers[PEER] = start_peer(self.work_dir, self.plan.peer_python, PEER)
                described[PEER] = self.create_peer_user(servers[PEER])
            results["servers"][loop] = described
            results["get_user"][loop] = self.get_user_sweep(servers)
            if keep:
                kept = servers.pop("mixauth")
        finally:
            for server in servers.values():
                server.stop()
        return kept, idle

    def backends_phase(self, bcrypt_duration: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each backend configuration beside SQLite, with the run's databases and Redis keys removed after;
        the figures by configuration, and where the run's data went."""
        measured: dict[str, Any] = {}
        with backends.BackendResources(self.plan.database_url, self.plan.redis_url) as resources:
            for configuration in backends.configurations(self.plan.backends):
                measured[configuration] = self.backend_phase(
                    configuration, resources.environment(configuration), bcrypt_duration
                )
            where = resources.describe()
        return measured, where

    def backend_phase(self, configuration: str, env: tuple[tuple[str, str], ...], duration: int) -> dict[str, Any]:
        """mixauth with its defaults on SQLite and on ``configuration`` (``env``): GET /user on both, taking
        turns; then sign-in and signup on the backend one alone, against the adjacent bcrypt ceiling."""
        say(f"backend {configuration}: starting mixauth on SQLite and on {backends.DESCRIPTIONS[configuration]}")
        options = {"sqlite": self.mixauth_options, configuration: replace(self.mixauth_options, env=env)}
        servers: dict[str, ServerProcess] = {}
        try:
            for name, settings in options.items():
                servers[name] = start_mixauth(self.work_dir, settings, name=f"backend-{configuration}-{name}")
                self.create_user(servers[name])
            described = {
                name: {
                    "command": "python3 -m server",
                    "loop": servers[name].event_loop(),
                    "env": backends.public_settings(mixauth_settings(settings)),
                }
                for name, settings in options.items()
            }
            get_user = self.get_user_sweep(servers)
            servers.pop("sqlite").stop()
            server, connections = servers[configuration], self.plan.bcrypt_connections
            sign_in = self.bcrypt_endpoint(
                server, f"sign-in on {configuration}", lambda _: self.signin_job(server, connections, duration)
            )
            sign_up = self.bcrypt_endpoint(
                server,
                f"signup on {configuration}",
                lambda attempt: self.signup_job(server, connections, duration, attempt),
            )
        finally:
            for running in servers.values():
                running.stop()
        return {
            "description": backends.DESCRIPTIONS[configuration],
            "servers": described,
            "get_user": get_user,
            "sign_in": sign_in,
            "sign_up": sign_up,
        }

    def limiter_round_trip(self) -> dict[str, Any]:
        """``bench.limiter_redis``'s measurement: one hit's cost in memory and on Redis (median, p99 µs)."""
        hits, runs = self.plan.limiter_hits, self.plan.repeats
        say(f"rate-limiter hit: memory against Redis, {runs} rounds of {hits} hits per case")
        measured = asyncio.run(limiter_redis.run(self.plan.redis_url, hits, runs, concurrency=16))
        kept = ("hits", "runs", "buckets_per_hit", "cases", "concurrency", "redis_hits_per_second")
        return {"redis": backends.redis_location(self.plan.redis_url)} | {key: measured[key] for key in kept}

    def measure_startup(self) -> dict[str, Any]:
        say(f"start-up: {self.plan.starts} starts of each server")
        samples: dict[str, list[float]] = {"mixauth": [], "ceiling": []}
        if self.plan.peer_python is not None:
            samples[PEER] = []
        for attempt in range(self.plan.starts):
            for name in samples:
                label = f"startup-{name}-{attempt}"
                if name == "mixauth":
                    server = start_mixauth(self.work_dir, self.mixauth_options, name=label)
                elif name == PEER:
                    assert self.plan.peer_python is not None
                    server = start_peer(self.work_dir, self.plan.peer_python, name=label)
                else:
                    server = start_ceiling(self.work_dir, self.plan.python, name=label)
                try:
                    samples[name].append(server.startup_s)
                finally:
                    server.stop()
        return {name: {"median": statistics.median(values), "samples": values} for name, values in samples.items()}

    def create_user(self, mixauth: ServerProcess) -> str:
        """Sign up the benchmark's user; its token; mixauth's GET /user body (the ceiling answers the same)."""
        signup = {"username": self.username, "email": f"{self.username}@example.com", "password": self.password}
        token = client.expect_json(mixauth.port, "POST", "/user", signup)["token"]
        self.token = self.token or token
        self.tokens[mixauth.port] = token
        status, raw = client.call(mixauth.port, "GET", "/user", headers={"Authorization": f"Bearer {token}"})
        if status != 200:
            raise client.ClientError(f"GET /user answered {status}: {raw[:300]!r}")
        return raw.decode()

    def create_peer_user(self, peer: ServerProcess) -> dict[str, Any]:
        """Register the benchmark's user on the peer and sign in for a JWT, as its documentation shows."""
        email = f"{self.username}@example.com"
        status, raw = client.call(peer.port, "POST", "/auth/register", {"email": email, "password": self.password})
        if status != 201:
            raise client.ClientError(f"peer POST /auth/register answered {status}: {raw[:300]!r}")
        status, raw = client.call(
            peer.port, "POST", "/auth/jwt/login", form={"username": email, "password": self.password}
        )
        if status != 200:
            raise client.ClientError(f"peer POST /auth/jwt/login answered {status}: {raw[:300]!r}")
        token = json.loads(raw)["access_token"]
        self.tokens[peer.port] = token
        self.paths[peer.port] = "/users/me"
        me = client.expect_json(peer.port, "GET", "/users/me", token=token)
        return {
            "command": "python -m uvicorn bench.peer_fastapi_users:app --loop uvloop --http httptools",
            "interpreter": self.plan.peer_python,
            "loop": peer.event_loop(),
            "get_user_path": "/users/me",
            "get_user_body_bytes": len(json.dumps(me, separators=(",", ":")).encode()),
        }

    def describe_servers(self, servers: dict[str, ServerProcess], body: str, loop: str) -> dict[str, Any]:
        ceiling = servers["ceiling"]
        reported = client.expect_json(ceiling.port, "GET", "/__loop")["loop"]
        _, ceiling_body = client.call(ceiling.port, "GET", "/user")
        described: dict[str, Any] = {
            name: {
                "command": "python3 -m server" if loop == "uvloop" else "python3 -m server, uvloop unimportable",
                "loop": servers[name].event_loop(),
                "get_user_body_bytes": len(body.encode()),
                "env": mixauth_settings(replace(self.mixauth_options, loop=loop, **changes)),
            }
            for name, changes in VARIANTS.items()
        }
        return {
            "interpreter": self.plan.python,
            **described,
            "ceiling": {
                "command": f"python3 -m bench.ceiling --loop {loop}",
                "loop": ceiling.event_loop(),
                "loop_reported": reported,
                "get_user_body_bytes": len(ceiling_body),
            },
            "loop_detection": "uvloop's extension module mapped in /proc/<pid>/maps",
        }

    def get_user_sweep(self, servers: dict[str, ServerProcess]) -> dict[str, Any]:
        plan = self.plan
        say(f"GET /user: {len(plan.connections)} connection counts x {plan.repeats} rounds x {len(servers)} servers")
        for server in servers.values():  # warm-up, not recorded
            self.get_job(server, plan.connections[0], 1).run()
        runs: dict[str, dict[int, list[WrkResult]]] = {name: {} for name in servers}
        # The server's CPU time per answered request: on a shared machine, steadier than requests per second.
        cpu: dict[str, dict[int, list[float]]] = {name: {} for name in servers}
        for _ in range(plan.repeats):
            for connections in plan.connections:
                for name, server in servers.items():
                    before = server.cpu_seconds()
                    result = self.get_job(server, connections, plan.duration_s).run()
                    used = server.cpu_seconds() - before
                    runs[name].setdefault(connections, []).append(result)
                    cpu[name].setdefault(connections, []).append(used * 1e6 / max(result.requests, 1))
        return {
            name: {
                str(connections): _group(results) | {"cpu_us_per_request": statistics.median(cpu[name][connections])}
                for connections, results in by_connections.items()
            }
            for name, by_connections in runs.items()
        }

    def flood(self, mixauth: ServerProcess) -> dict[str, Any]:
        plan = self.plan
        say(
            f"GET /user ({plan.flood_connections} connections) during a sign-in flood "
            f"({plan.bcrypt_connections} connections), {plan.repeats} rounds"
        )
        measured: list[WrkResult] = []
        floods: list[WrkResult] = []
        for _ in range(plan.repeats):
            flood_job = self.signin_job(mixauth, plan.bcrypt_connections, plan.duration_s + 2 * FLOOD_LEAD_S)
            flood_process = flood_job.start()
            try:
                time.sleep(FLOOD_LEAD_S)
                measured.append(self.get_job(mixauth, plan.flood_connections, plan.duration_s).run())
            finally:
                floods.append(flood_job.finish(flood_process))
            mixauth.check_alive()
        return {
            "connections": plan.flood_connections,
            "flood_connections": plan.bcrypt_connections,
            **_group(measured),
            "flood": _group(floods),
        }

    def bcrypt_endpoint(self, mixauth: ServerProcess, label: str, make: Callable[[int], WrkJob]) -> dict[str, Any]:
        plan = self.plan
        say(f"{label}: {plan.bcrypt_connections} connections x {plan.repeats} rounds")
        runs: list[WrkResult] = []
        ceilings: list[BcryptRun] = []
        for attempt in range(plan.repeats):
            # A bcrypt ceiling sample right before each run (the server idle), so that each run is compared
            # with the CPU it actually had: on a shared machine that changes from minute to minute.
            ceilings.append(self.bcrypt_sample())
            runs.append(make(attempt).run())
            mixauth.check_alive()
        return {
            "connections": plan.bcrypt_connections,
            **_group(runs),
            "adjacent_bcrypt_checks_per_s": [ceiling.checks_per_s for ceiling in ceilings],
            "adjacent_bcrypt_runs": [ceiling.as_dict() for ceiling in ceilings],
            "vs_adjacent_bcrypt_ceiling": statistics.median(
                run.ok_per_s / ceiling.checks_per_s for run, ceiling in zip(runs, ceilings, strict=True)
            ),
        }

    def bcrypt_duration(self, checks_per_s: float) -> int:
        """Seconds per sign-in or signup run: ``duration_s``, stretched so that about MIN_BCRYPT_REQUESTS
        complete at the bcrypt ceiling (the connections' first answers wait for a whole queue of checks)."""
        needed = (MIN_BCRYPT_REQUESTS + self.plan.bcrypt_connections) / max(checks_per_s, 1e-3)
        return int(min(MAX_BCRYPT_DURATION_S, max(self.plan.duration_s, math.ceil(needed))))

    def bcrypt_ceiling(self) -> dict[str, Any]:
        plan = self.plan
        say(f"bcrypt ceiling: cost {plan.effective_rounds}, {plan.hash_workers} threads, {plan.repeats} rounds")
        runs = [self.bcrypt_sample().as_dict() for _ in range(plan.repeats)]
        return _bcrypt_summary(runs)

    def bcrypt_sample(self) -> BcryptRun:
        plan = self.plan
        return bcrypt_ceiling.measure(plan.effective_rounds, plan.hash_workers, plan.bcrypt_seconds)

    # -- wrk jobs -------------------------------------------------------------------------------------------

    def get_job(self, server: ServerProcess, connections: int, duration_s: int) -> WrkJob:
        """GET /user with the server's own user's token (the ceiling ignores it; the peer's is GET /users/me)."""
        path = self.paths.get(server.port, "/user")
        token = self.tokens.get(server.port, self.token)
        return WrkJob(server.url(path), "get_user.lua", connections, duration_s, GET_TIMEOUT_S, (token,))

    def signin_job(self, server: ServerProcess, connections: int, duration_s: int) -> WrkJob:
        return WrkJob(
            server.url("/user/auth"),
            "signin.lua",
            connections,
            duration_s,
            BCRYPT_TIMEOUT_S,
            (self.username, self.password),
        )

    def signup_job(self, server: ServerProcess, connections: int, duration_s: int, attempt: int) -> WrkJob:
        """New users named s<run prefix>r<attempt>t<wrk thread>n<counter>: unique within and across runs."""
        return WrkJob(
            server.url("/user"),
            "signup.lua",
            connections,
            duration_s,
            BCRYPT_TIMEOUT_S,
            (f"s{self.prefix}r{attempt}", self.password),
        )


def _bcrypt_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "checks_per_s": statistics.median(run["checks_per_s"] for run in runs),
        "seconds_per_check": statistics.median(run["seconds_per_check"] for run in runs),
        "runs": runs,
    }


def all_bcrypt_samples(results: dict[str, Any]) -> dict[str, Any]:
    """The bcrypt ceiling over every sample of the run: the ceiling phase's and those taken before each
    sign-in and signup run (the machine's load drifts; the median of all is the run's best estimate)."""
    phase = results["bcrypt_ceiling"]
    adjacent = results["sign_in"]["adjacent_bcrypt_runs"] + results["sign_up"]["adjacent_bcrypt_runs"]
    return {**_bcrypt_summary(phase["runs"] + adjacent), "phase_checks_per_s": phase["checks_per_s"]}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Every comparison the report shows, from the medians already in ``results``."""
    by_loop = results["get_user"]
    checks = results["bcrypt_ceiling"]["checks_per_s"]
    flood = results["get_user_under_signin_flood"]
    first = next(iter(by_loop.values()))
    alone = first["mixauth"].get(str(flood["connections"]))
    startup = results["startup_s"]
    memory = results["memory_kib"]

    def versus(get_user: dict[str, Any], name: str, other: str) -> dict[str, float | None]:
        return {
            connections: _ratio(group["median"]["ok_per_s"], get_user[other][connections]["median"]["ok_per_s"])
            for connections, group in get_user[name].items()
        }

    peer_loop = by_loop.get("uvloop", {})
    return {
        "backends": backend_ratios(results.get("backends", {})),
        # Per loop, each mixauth setting against the ceiling on the same loop.
        "get_user_vs_ceiling": {
            loop: {name: versus(get_user, name, "ceiling") for name in VARIANTS} for loop, get_user in by_loop.items()
        },
        # mixauth with its defaults (GET /user) against the peer (GET /users/me), both on uvloop.
        "get_user_vs_peer": versus(peer_loop, "mixauth", PEER) if PEER in peer_loop else None,
        "startup_peer_vs_mixauth": (
            _ratio(startup[PEER]["median"], startup["mixauth"]["median"]) if PEER in startup else None
        ),
        # Each run against the ceiling measured just before it (median of those pairs), then against the
        # median of every bcrypt sample of the run.
        "sign_in_vs_bcrypt_ceiling": results["sign_in"]["vs_adjacent_bcrypt_ceiling"],
        "sign_up_vs_bcrypt_ceiling": results["sign_up"]["vs_adjacent_bcrypt_ceiling"],
        "sign_in_vs_bcrypt_ceiling_all_samples": _ratio(results["sign_in"]["median"]["ok_per_s"], checks),
        "sign_up_vs_bcrypt_ceiling_all_samples": _ratio(results["sign_up"]["median"]["ok_per_s"], checks),
        "get_user_during_flood_vs_alone": (
            _ratio(flood["median"]["ok_per_s"], alone["median"]["ok_per_s"]) if alone else None
        ),
        "get_user_p99_during_flood_vs_alone": (
            _ratio(flood["median"]["p99_ms"], alone["median"]["p99_ms"]) if alone else None
        ),
        "startup_mixauth_vs_ceiling": _ratio(startup["mixauth"]["median"], startup["ceiling"]["median"]),
        "rss_loaded_vs_idle": _ratio(memory["loaded"]["VmRSS"], memory["idle"]["VmRSS"]),
    }


def backend_ratios(measured: dict[str, Any]) -> dict[str, Any]:
    """Each backend configuration's comparisons: GET /user against SQLite in the same sweep, sign-in and
    signup against the bcrypt ceiling sampled just before each run."""
    return {
        name: {
            "get_user_vs_sqlite": {
                connections: _ratio(
                    group["median"]["ok_per_s"], phase["get_user"]["sqlite"][connections]["median"]["ok_per_s"]
                )
                for connections, group in phase["get_user"][name].items()
            },
            "sign_in_vs_bcrypt_ceiling": phase["sign_in"]["vs_adjacent_bcrypt_ceiling"],
            "sign_up_vs_bcrypt_ceiling": phase["sign_up"]["vs_adjacent_bcrypt_ceiling"],
        }
        for name, phase in measured.items()
    }


def run(plan: Plan) -> dict[str, Any]:
    """Run the whole benchmark in a temporary working directory (servers' data and logs), then delete it."""
    with tempfile.TemporaryDirectory(prefix="mixauth-bench-") as work_dir:
        return Run(plan, Path(work_dir)).execute()
