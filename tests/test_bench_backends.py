"""``python -m bench --backend postgres,redis``: its flags, its one-line refusal when a server does not answer,
and the backend phase itself run for about a second per point against the test PostgreSQL and Redis (with
wrk; skipped without it), leaving no database and no Redis key behind.

The phase runs in this process (``Run.backends_phase``) rather than through the whole command, which would
spend half a minute on the SQLite phases ``tests/test_bench_smoke.py`` already covers.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bench import backends, report
from bench.__main__ import build_parser, make_plan
from bench.suite import Plan, Run, backend_ratios
from tests.conftest import PostgresForTests, free_port, redis_keys

ROOT = Path(__file__).resolve().parent.parent


def test_backend_names_give_each_alone_then_both_together() -> None:
    assert backends.backend_names("redis, postgres,redis") == ("redis", "postgres")
    assert backends.configurations(("postgres",)) == ("postgres",)
    assert backends.configurations(("redis", "postgres")) == ("redis", "postgres", "postgres+redis")
    with pytest.raises(ValueError, match="postgres or redis"):
        backends.backend_names("mysql")


def test_flags_reach_the_plan() -> None:
    args = build_parser().parse_args(
        ["--quick", "--backend", "postgres,redis", "--database-url", "postgresql://a@h/db", "--redis-url", "redis://r"]
    )
    plan = make_plan(args)
    assert plan.backends == ("postgres", "redis")
    assert (plan.database_url, plan.redis_url, plan.limiter_hits) == ("postgresql://a@h/db", "redis://r", 2000)
    assert make_plan(build_parser().parse_args([])).backends == ()


def test_recorded_settings_hide_the_secret_and_passwords() -> None:
    shown = backends.public_settings(
        {"DATABASE_URL": "postgresql://u:hunter22@h/db", "JWT_SECRET": "s" * 64, "REDIS_URL": "redis://:pw9@r:1/0"}
    )
    assert shown == {"DATABASE_URL": "postgresql://u:***@h/db", "JWT_SECRET": "***", "REDIS_URL": "redis://:***@r:1/0"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--backend", "redis", "--redis-url", "redis://:pw9secret@127.0.0.1:{port}/0"], "Redis: no answer at"),
        (
            ["--backend", "postgres", "--database-url", "postgresql://u:pw9secret@127.0.0.1:{port}/db"],
            "PostgreSQL: cannot reach 127.0.0.1:{port}/db",
        ),
    ],
)
def test_a_server_that_does_not_answer_stops_the_bench_with_one_line(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)]
    command += [flag.format(port=port) for flag in flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"bench: {expected.format(port=port)}")
    assert "pw9secret" not in line
    assert not list(tmp_path.iterdir())


async def bench_databases(server_url: str, prefix: str) -> list[str]:
    connection = await asyncpg.connect(server_url, timeout=5)
    try:
        rows = await connection.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
    finally:
        await connection.close()
    return [row["datname"] for row in rows]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_backend_phase_measures_each_configuration_and_cleans_up(
    tmp_path: Path, postgres: PostgresForTests, redis_url: str
) -> None:
    plan = Plan(
        connections=(4,),
        repeats=1,
        duration_s=1,
        starts=1,
        hash_workers=1,
        python=sys.executable,
        bcrypt_rounds=4,
        bcrypt_connections=2,
        flood_connections=4,
        bcrypt_seconds=0.3,
        backends=("postgres", "redis"),
        database_url=postgres.server_url,
        redis_url=redis_url,
        limiter_hits=100,
    )
    run = Run(plan, tmp_path)
    measured, where = run.backends_phase(bcrypt_duration=1)
    limiter = run.limiter_round_trip()

    assert list(measured) == ["postgres", "redis", "postgres+redis"]
    for configuration, phase in measured.items():
        assert set(phase["get_user"]) == {"sqlite", configuration}
        for group in phase["get_user"].values():
            assert group["4"]["median"]["ok_per_s"] > 0
            assert group["4"]["median"]["non_2xx"] == 0
        for endpoint in ("sign_in", "sign_up"):
            assert phase[endpoint]["median"]["ok_per_s"] > 0
            assert phase[endpoint]["median"]["non_2xx"] == 0
        env = phase["servers"][configuration]["env"]
        assert ("DATABASE_URL" in env) == ("postgres" in configuration)
        assert ("REDIS_URL" in env) == ("redis" in configuration)
        assert "DATABASE_URL" not in phase["servers"]["sqlite"]["env"]
    assert measured["postgres"]["servers"]["postgres"]["env"]["JWT_SECRET"] == "***"
    assert set(limiter["cases"]) >= {"memory", "redis"}
    assert limiter["cases"]["redis"]["p99_us"] > 0

    # Nothing left: the run's databases dropped, its Redis keys deleted.
    assert asyncio.run(bench_databases(postgres.server_url, where["database_prefix"])) == []
    assert redis_keys(redis_url, where["redis_key_prefix"]) == []

    ratios = backend_ratios(measured)
    assert ratios["redis"]["get_user_vs_sqlite"]["4"] > 0
    section = "\n".join(
        report.backends_section({"backends": measured, "ratios": {"backends": ratios}, "limiter": limiter})
    )
    assert "### Backends" in section
    assert "| postgres+redis (DATABASE_URL and REDIS_URL" in section
    assert "Rate-limiter hit" in section
