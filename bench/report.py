"""Writing a run's results: ``<date>.json`` (everything), ``<date>.md`` (the tables) and ``<date>.png`` (the
chart: GET /user throughput and p99 latency per connection count, mixauth against the ceiling server).

matplotlib is imported only to draw the chart, and only when it is installed (``pip install '.[bench]'``).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _errors(results: dict[str, Any]) -> Iterator[str]:
    groups: list[tuple[str, dict[str, Any]]] = []
    for server, by_connections in results["get_user"].items():
        groups += [(f"GET /user {server} c={c}", group["median"]) for c, group in by_connections.items()]
    flood = results["get_user_under_signin_flood"]
    groups += [("GET /user during flood", flood["median"]), ("sign-in flood", flood["flood"]["median"])]
    groups += [("sign-in", results["sign_in"]["median"]), ("signup", results["sign_up"]["median"])]
    for label, median in groups:
        if median["non_2xx"] or median["socket_errors"]:
            yield f"{label}: {median['non_2xx']} non-2xx answers, {median['socket_errors']} socket errors"


def markdown(results: dict[str, Any]) -> str:
    plan, machine, servers = results["plan"], results["machine"], results["servers"]
    get_user, ratios = results["get_user"], results["ratios"]
    load_start = machine["load_average_at_start"][:1] or ["?"]
    load_end = machine.get("load_average_at_end", [])[:1] or ["?"]
    lines = [
        f"## mixauth benchmark, {results['date']}",
        "",
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs; Python {machine['python']}, aiohttp "
        f"{machine['aiohttp']}; event loop: mixauth {servers['mixauth']['loop']}, ceiling "
        f"{servers['ceiling']['loop']}; bcrypt cost {plan['bcrypt_rounds']} on {plan['hash_workers']} hashing "
        f"threads; {machine['wrk']}, 1 thread, {plan['duration_s']} s per run, median of {plan['repeats']} "
        f"run(s). 1-minute load average {load_start[0]} at start, {load_end[0]} at end.",
        "",
        "### GET /user: mixauth against a bare aiohttp server answering the same body (the ceiling)",
        "",
        "| connections | mixauth req/s | ceiling req/s | mixauth / ceiling | mixauth p50 ms | mixauth p99 ms "
        "| ceiling p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, group in get_user["mixauth"].items():
        ours, ceiling = group["median"], get_user["ceiling"][connections]["median"]
        lines.append(
            f"| {connections} | {number(ours['ok_per_s'])} | {number(ceiling['ok_per_s'])} "
            f"| {ratio(ratios['get_user_vs_ceiling'][connections])} | {number(ours['p50_ms'])} "
            f"| {number(ours['p99_ms'])} | {number(ceiling['p99_ms'])} |"
        )
    flood = results["get_user_under_signin_flood"]
    alone = get_user["mixauth"].get(str(flood["connections"]), {}).get("median")
    checks = results["bcrypt_ceiling"]["checks_per_s"]
    sign_in, sign_up = results["sign_in"], results["sign_up"]
    startup, memory = results["startup_s"], results["memory_kib"]
    bcrypt_runs = f"{plan.get('bcrypt_duration_s', plan['duration_s'])} s runs"
    ceiling_label = f"bcrypt ceiling (all samples): {number(checks)} checks/s on {plan['hash_workers']} threads"

    def adjacent(group: dict[str, Any]) -> str:
        samples = group["adjacent_bcrypt_checks_per_s"]
        return f"bcrypt ceiling just before each run: {number(statistics.median(samples))} checks/s"

    lines += [
        "",
        "### Summary",
        "",
        "| figure | mixauth | compared with | ratio |",
        "|---|---:|---|---:|",
        f"| sign-ins/s ({sign_in['connections']} connections, {bcrypt_runs}) | {number(sign_in['median']['ok_per_s'])} "
        f"| {adjacent(sign_in)} | {ratio(ratios['sign_in_vs_bcrypt_ceiling'])} |",
        f"| signups/s ({sign_up['connections']} connections, {bcrypt_runs}) | {number(sign_up['median']['ok_per_s'])} "
        f"| {adjacent(sign_up)} | {ratio(ratios['sign_up_vs_bcrypt_ceiling'])} |",
        f"| sign-in p50 / p99 ms | {number(sign_in['median']['p50_ms'])} / {number(sign_in['median']['p99_ms'])} "
        f"| one check: {number(results['bcrypt_ceiling']['seconds_per_check'] * 1000)} ms | |",
        f"| GET /user req/s during a sign-in flood ({flood['connections']} + {flood['flood_connections']} "
        f"connections) | {number(flood['median']['ok_per_s'])} "
        f"| without the flood: {number(alone['ok_per_s'] if alone else None)} "
        f"| {ratio(ratios['get_user_during_flood_vs_alone'])} |",
        f"| GET /user p99 ms during the flood | {number(flood['median']['p99_ms'])} "
        f"| without the flood: {number(alone['p99_ms'] if alone else None)} "
        f"| {ratio(ratios['get_user_p99_during_flood_vs_alone'])} |",
        f"| sign-ins/s of the flood itself | {number(flood['flood']['median']['ok_per_s'])} | {ceiling_label} "
        f"| {ratio(flood['flood']['median']['ok_per_s'] / checks if checks else None)} |",
        f"| start-up, spawn to first answer (median of {plan['starts']}) | {number(startup['mixauth']['median'], 's')} "
        f"| ceiling: {number(startup['ceiling']['median'], 's')} | {ratio(ratios['startup_mixauth_vs_ceiling'])} |",
        f"| RSS idle, then after the load (peak) | {mib(memory['idle']['VmRSS'])}, then "
        f"{mib(memory['loaded']['VmRSS'])} ({mib(memory['loaded']['VmHWM'])}) | | "
        f"{ratio(ratios['rss_loaded_vs_idle'])} |",
        "",
    ]
    if servers["mixauth"]["loop"] != servers["ceiling"]["loop"]:
        lines.append(
            f"Note: the two servers ran on different event loops (mixauth {servers['mixauth']['loop']}, ceiling "
            f"{servers['ceiling']['loop']}), so the GET /user ratio compares the loops too.\n"
        )
    errors = list(_errors(results))
    lines.append(
        "Errors: " + "; ".join(errors) + "."
        if errors
        else "Every answer was a 2xx and no socket errors occurred (timeouts included)."
    )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Draw the PNG; None when done, else why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]'): no chart drawn"
    get_user = results["get_user"]
    figure, (throughput, latency) = pyplot.subplots(1, 2, figsize=(11, 4.5))
    for server, style in (("mixauth", "o-"), ("ceiling", "s--")):
        by_connections = get_user[server]
        connections = [int(c) for c in by_connections]
        label = f"{server} ({results['servers'][server]['loop']})"
        throughput.plot(connections, [g["median"]["ok_per_s"] for g in by_connections.values()], style, label=label)
        latency.plot(connections, [g["median"]["p99_ms"] for g in by_connections.values()], style, label=label)
    for axes, title, unit in ((throughput, "GET /user throughput", "requests/s"), (latency, "GET /user p99", "ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(connections, [str(c) for c in connections])
        axes.set_xlabel("connections (wrk -t1)")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend()
    machine = results["machine"]
    figure.suptitle(
        f"mixauth vs bare aiohttp, {results['date']}: {machine['cpu_model']}, {machine['cpu_count']} CPUs, "
        f"median of {results['plan']['repeats']} x {results['plan']['duration_s']} s"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return None


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path | None]:
    """Write the JSON, the Markdown and (when possible) the PNG into ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / results["date"]
    json_path, md_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    skipped = chart(results, png_path)
    if skipped is not None:
        print(f"bench: {skipped}", file=sys.stderr, flush=True)
        return json_path, md_path, None
    return json_path, md_path, png_path
