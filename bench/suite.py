"""One benchmark run, phase by phase, and the ratios between its figures.

The phases, in order (all load goes to 127.0.0.1 and every wrk run has a fixed duration):

1. start-up: spawn-to-first-answer of mixauth and of the ceiling server, started alternately ``starts``
   times each, mixauth on a fresh data directory every time;
2. mixauth and the ceiling started for the load phases; mixauth's idle RSS; one user created over HTTP;
3. GET /user on both servers at each connection count, alternating servers, ``repeats`` rounds;
4. GET /user on mixauth while a second wrk floods POST /user/auth with the right password;
5. POST /user/auth alone, then POST /user with a new user per request, each run long enough for about
   MIN_BCRYPT_REQUESTS answers at the bcrypt ceiling and preceded by a fresh bcrypt ceiling sample (the
   ratio to the bcrypt ceiling is taken run by run against it, as the machine's load drifts);
6. mixauth's RSS after the load, then both servers stopped.

Before any server starts, the bcrypt ceiling is measured in this process, at the server's cost and hashing
thread count (it also sets how long the sign-in and signup runs must be).

Medians are taken over the repeats; the raw runs are kept next to them.
"""

from __future__ import annotations

import math
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import bcrypt_ceiling, client, machine
from bench.bcrypt_ceiling import BcryptRun
from bench.servers import MixauthOptions, ServerProcess, mixauth_settings, start_ceiling, start_mixauth
from bench.wrk import WrkJob, WrkResult
from server.config import Settings

# Sign-ins and signups wait for bcrypt; at cost 12 a queue of a few requests per thread is seconds long.
BCRYPT_TIMEOUT_S = 60
GET_TIMEOUT_S = 10
FLOOD_LEAD_S = 1
# A sign-in or signup run lasts long enough for about this many answers, within MAX_BCRYPT_DURATION_S.
MIN_BCRYPT_REQUESTS = 30
MAX_BCRYPT_DURATION_S = 60


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run; ``bcrypt_rounds=None`` keeps the server's default cost."""

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
            },
            "machine": machine.describe(),
        }
        results["startup_s"] = self.measure_startup()
        results["bcrypt_ceiling"] = self.bcrypt_ceiling()
        bcrypt_duration = self.bcrypt_duration(results["bcrypt_ceiling"]["checks_per_s"])
        results["plan"]["bcrypt_duration_s"] = bcrypt_duration
        mixauth: ServerProcess | None = None
        ceiling: ServerProcess | None = None
        try:
            say("starting mixauth and the ceiling server for the load phases")
            mixauth = start_mixauth(self.work_dir, self.mixauth_options)
            time.sleep(0.5)
            idle_memory = mixauth.memory_kib()
            body = self.create_user(mixauth)
            ceiling = start_ceiling(self.work_dir, self.plan.python, body)
            results["servers"] = self.describe_servers(mixauth, ceiling, body)
            results["get_user"] = self.get_user_sweep(mixauth, ceiling)
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
            for server in (ceiling, mixauth):
                if server is not None:
                    server.stop()
        results["bcrypt_ceiling"] = all_bcrypt_samples(results)
        results["ratios"] = ratios(results)
        results["machine"]["load_average_at_end"] = machine.load_average()
        results["elapsed_s"] = round(time.time() - started, 1)
        return results

    # -- phases ---------------------------------------------------------------------------------------------

    def measure_startup(self) -> dict[str, Any]:
        say(f"start-up: {self.plan.starts} starts of each server")
        samples: dict[str, list[float]] = {"mixauth": [], "ceiling": []}
        for attempt in range(self.plan.starts):
            for name in samples:
                label = f"startup-{name}-{attempt}"
                if name == "mixauth":
                    server = start_mixauth(self.work_dir, self.mixauth_options, name=label)
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
        self.token = client.expect_json(mixauth.port, "POST", "/user", signup)["token"]
        status, raw = client.call(mixauth.port, "GET", "/user", headers={"Authorization": f"Bearer {self.token}"})
        if status != 200:
            raise client.ClientError(f"GET /user answered {status}: {raw[:300]!r}")
        return raw.decode()

    def describe_servers(self, mixauth: ServerProcess, ceiling: ServerProcess, body: str) -> dict[str, Any]:
        reported = client.expect_json(ceiling.port, "GET", "/__loop")["loop"]
        _, ceiling_body = client.call(ceiling.port, "GET", "/user")
        return {
            "interpreter": self.plan.python,
            "mixauth": {
                "command": "python3 -m server",
                "loop": mixauth.event_loop(),
                "get_user_body_bytes": len(body.encode()),
                "env": mixauth_settings(self.mixauth_options),
            },
            "ceiling": {
                "command": "python3 -m bench.ceiling",
                "loop": ceiling.event_loop(),
                "loop_reported": reported,
                "get_user_body_bytes": len(ceiling_body),
            },
            "loop_detection": "uvloop's extension module mapped in /proc/<pid>/maps",
        }

    def get_user_sweep(self, mixauth: ServerProcess, ceiling: ServerProcess) -> dict[str, Any]:
        plan = self.plan
        say(f"GET /user: {len(plan.connections)} connection counts x {plan.repeats} rounds x 2 servers")
        for server in (mixauth, ceiling):  # warm-up, not recorded
            self.get_job(server, plan.connections[0], 1).run()
        runs: dict[str, dict[int, list[WrkResult]]] = {"mixauth": {}, "ceiling": {}}
        for _ in range(plan.repeats):
            for connections in plan.connections:
                for name, server in (("mixauth", mixauth), ("ceiling", ceiling)):
                    server.check_alive()
                    result = self.get_job(server, connections, plan.duration_s).run()
                    runs[name].setdefault(connections, []).append(result)
        return {
            name: {str(connections): _group(results) for connections, results in by_connections.items()}
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
        return WrkJob(server.url("/user"), "get_user.lua", connections, duration_s, GET_TIMEOUT_S, (self.token,))

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
    get_user = results["get_user"]
    checks = results["bcrypt_ceiling"]["checks_per_s"]
    flood = results["get_user_under_signin_flood"]
    alone = get_user["mixauth"].get(str(flood["connections"]))
    startup = results["startup_s"]
    memory = results["memory_kib"]
    return {
        "get_user_vs_ceiling": {
            connections: _ratio(group["median"]["ok_per_s"], get_user["ceiling"][connections]["median"]["ok_per_s"])
            for connections, group in get_user["mixauth"].items()
        },
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


def run(plan: Plan) -> dict[str, Any]:
    """Run the whole benchmark in a temporary working directory (servers' data and logs), then delete it."""
    with tempfile.TemporaryDirectory(prefix="mixauth-bench-") as work_dir:
        return Run(plan, Path(work_dir)).execute()
