"""Writing a run's results: ``<date>.json`` (everything), ``<date>.md`` (the tables) and ``<date>.png`` (the
chart: GET /user throughput per connection count on each event loop, mixauth with its defaults and with
features off against the ceiling server and the peer, and p99 latency on uvloop).

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
    for loop, servers in results["get_user"].items():
        for server, by_connections in servers.items():
            groups += [(f"GET /user {server} {loop} c={c}", group["median"]) for c, group in by_connections.items()]
    flood = results["get_user_under_signin_flood"]
    groups += [("GET /user during flood", flood["median"]), ("sign-in flood", flood["flood"]["median"])]
    groups += [("sign-in", results["sign_in"]["median"]), ("signup", results["sign_up"]["median"])]
    for configuration, phase in results.get("backends", {}).items():
        for server, by_connections in phase["get_user"].items():
            groups += [
                (f"backend {configuration}: GET /user {server} c={c}", group["median"])
                for c, group in by_connections.items()
            ]
        groups += [(f"backend {configuration}: sign-in", phase["sign_in"]["median"])]
        groups += [(f"backend {configuration}: signup", phase["sign_up"]["median"])]
    for label, median in groups:
        if median["non_2xx"] or median["socket_errors"]:
            yield f"{label}: {median['non_2xx']} non-2xx answers, {median['socket_errors']} socket errors"


PEER = "fastapi_users"
LABELS = {
    "mixauth": "mixauth, defaults (info, metrics on)",
    "mixauth_warning": "mixauth, LOG_LEVEL=warning",
    "mixauth_warning_no_metrics": "mixauth, warning, METRICS_ENABLED=false",
    "ceiling": "bare aiohttp (ceiling)",
    PEER: "fastapi-users full example (uvicorn)",
}


def cpu_per_request(group: dict[str, Any]) -> str:
    """The server's CPU µs per answered request (not in results from before the figure existed)."""
    return number(group.get("cpu_us_per_request"))


def _loop_table(loop: str, get_user: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    versus = ratios["get_user_vs_ceiling"][loop]
    lines = [
        f"### GET /user on {loop}: mixauth against a bare aiohttp server answering the same bytes (the ceiling)",
        "",
        "req/s, and in brackets the fraction of the ceiling on the same loop.",
        "",
        "| connections | ceiling | mixauth, defaults (info, metrics on) | LOG_LEVEL=warning "
        "| warning, METRICS_ENABLED=false | defaults p50 / p99 ms | ceiling p99 ms "
        "| CPU µs per request, defaults / ceiling |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, group in get_user["ceiling"].items():
        cells = [
            f"{number(get_user[name][connections]['median']['ok_per_s'])} ({ratio(versus[name][connections])})"
            for name in ("mixauth", "mixauth_warning", "mixauth_warning_no_metrics")
        ]
        ours = get_user["mixauth"][connections]["median"]
        lines.append(
            f"| {connections} | {number(group['median']['ok_per_s'])} | {' | '.join(cells)} "
            f"| {number(ours['p50_ms'])} / {number(ours['p99_ms'])} | {number(group['median']['p99_ms'])} "
            f"| {cpu_per_request(get_user['mixauth'][connections])} / {cpu_per_request(group)} |"
        )
    return [*lines, ""]


def _peer_table(get_user: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    lines = [
        "### mixauth (GET /user, defaults) against fastapi-users' full example (GET /users/me), both on uvloop",
        "",
        "| connections | mixauth req/s | fastapi-users req/s | mixauth / fastapi-users | mixauth p99 ms "
        "| fastapi-users p99 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, group in get_user[PEER].items():
        ours, peer = get_user["mixauth"][connections]["median"], group["median"]
        lines.append(
            f"| {connections} | {number(ours['ok_per_s'])} | {number(peer['ok_per_s'])} "
            f"| {ratio(ratios['get_user_vs_peer'][connections])} | {number(ours['p99_ms'])} "
            f"| {number(peer['p99_ms'])} |"
        )
    return [*lines, ""]


def backends_section(results: dict[str, Any]) -> list[str]:
    """The "Backends" section: each configuration against SQLite and the bcrypt ceiling, and the limiter line."""
    measured, versus = results.get("backends", {}), results["ratios"].get("backends", {})
    if not measured:
        return []
    connections = list(next(iter(measured.values()))["get_user"]["sqlite"])
    lines = [
        "### Backends: mixauth with its defaults (uvloop) on PostgreSQL and Redis",
        "",
        "GET /user req/s on the backend, swept alternately with the same mixauth on SQLite (in brackets: the "
        "fraction of the SQLite figure); sign-ins and signups per second on the backend, in brackets the fraction "
        "of the bcrypt ceiling sampled just before each run (median of the runs' ratios).",
        "",
        "| configuration | " + " | ".join(f"GET /user c={c}" for c in connections) + " | sign-ins/s | signups/s |",
        "|---|" + "---:|" * (len(connections) + 2),
    ]
    for configuration, phase in measured.items():
        get_user, ratios = phase["get_user"][configuration], versus[configuration]
        cells = [
            f"{number(get_user[c]['median']['ok_per_s'])} ({ratio(ratios['get_user_vs_sqlite'][c])})"
            for c in connections
        ]
        cells += [
            f"{number(phase[name]['median']['ok_per_s'])} ({ratio(ratios[f'{name}_vs_bcrypt_ceiling'])})"
            for name in ("sign_in", "sign_up")
        ]
        lines.append(f"| {configuration} ({phase['description']}) | {' | '.join(cells)} |")
    sqlite = "; ".join(
        f"beside {configuration}: "
        + ", ".join(f"{number(phase['get_user']['sqlite'][c]['median']['ok_per_s'])}" for c in connections)
        for configuration, phase in measured.items()
    )
    lines += ["", f"SQLite's GET /user req/s at c={', '.join(connections)}, {sqlite}.", ""]
    limiter = results.get("limiter")
    if limiter is not None:
        cases = limiter["cases"]
        lines += [
            f"Rate-limiter hit ({limiter['buckets_per_hit']} buckets, new keys each hit; {limiter['runs']} rounds of "
            f"{limiter['hits']:,} sequential hits per case), median / p99 µs: memory "
            f"{number(cases['memory']['median_us'])} / {number(cases['memory']['p99_us'])}, Redis (one EVALSHA "
            f"round trip) {number(cases['redis']['median_us'])} / {number(cases['redis']['p99_us'])}, Redis behind "
            f"the failover wrapper as the server uses it {number(cases['failover']['median_us'])} / "
            f"{number(cases['failover']['p99_us'])}; Redis with {limiter['concurrency']} concurrent tasks: "
            f"{number(limiter['redis_hits_per_second'])} hits/s.",
            "",
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    plan, machine, servers = results["plan"], results["machine"], results["servers"]
    by_loop, ratios = results["get_user"], results["ratios"]
    load_start = machine["load_average_at_start"][:1] or ["?"]
    load_end = machine.get("load_average_at_end", [])[:1] or ["?"]
    loops = ", ".join(
        f"{loop} (mixauth {described['mixauth']['loop']}, ceiling {described['ceiling']['loop']})"
        for loop, described in servers.items()
    )
    lines = [
        f"## mixauth benchmark, {results['date']}",
        "",
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs, shared with other work; Python {machine['python']}, "
        f"aiohttp {machine['aiohttp']}; event loops measured: {loops}; bcrypt cost {plan['bcrypt_rounds']} on "
        f"{plan['hash_workers']} hashing threads; {machine['wrk']}, 1 thread, {plan['duration_s']} s per run, "
        f"median of {plan['repeats']} run(s). 1-minute load average {load_start[0]} at start, {load_end[0]} at "
        "end. mixauth's access lines (one per request at info) are written to a file.",
        "",
    ]
    for loop, get_user in by_loop.items():
        lines += _loop_table(loop, get_user, ratios)
    if PEER in by_loop.get("uvloop", {}):
        lines += _peer_table(by_loop["uvloop"], ratios)
    first_loop = next(iter(by_loop))
    get_user = by_loop[first_loop]
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
        *(
            [
                f"| start-up of fastapi-users' example, against mixauth's | {number(startup[PEER]['median'], 's')} "
                f"| mixauth: {number(startup['mixauth']['median'], 's')} "
                f"| {ratio(ratios['startup_peer_vs_mixauth'])} |"
            ]
            if PEER in startup
            else []
        ),
        f"| RSS idle, then after the load (peak) | {mib(memory['idle']['VmRSS'])}, then "
        f"{mib(memory['loaded']['VmRSS'])} ({mib(memory['loaded']['VmHWM'])}) | | "
        f"{ratio(ratios['rss_loaded_vs_idle'])} |",
        "",
        *backends_section(results),
    ]
    for loop, described in servers.items():
        if described["mixauth"]["loop"] != loop or described["ceiling"]["loop"] != loop:
            lines.append(
                f"Note: asked for {loop}, the servers ran on mixauth {described['mixauth']['loop']}, ceiling "
                f"{described['ceiling']['loop']} (is uvloop installed?).\n"
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
    by_loop = results["get_user"]
    panels = len(by_loop) + 1
    figure, axes_list = pyplot.subplots(1, panels, figsize=(5.5 * panels, 4.8))
    styles = {"mixauth": "o-", "mixauth_warning": "^-", "mixauth_warning_no_metrics": "v-", "ceiling": "s--"}
    styles[PEER] = "x:"
    connections: list[int] = []
    first = next(iter(by_loop))
    for axes, (loop, get_user) in zip(axes_list, by_loop.items(), strict=False):
        for server, by_connections in get_user.items():
            connections = [int(c) for c in by_connections]
            rates = [g["median"]["ok_per_s"] for g in by_connections.values()]
            axes.plot(connections, rates, styles.get(server, "-"), label=LABELS.get(server, server))
        axes.set_title(f"GET /user throughput, {loop} (log scale)")
        axes.set_ylabel("requests/s")
        axes.set_yscale("log")
    # The loops' throughput panels on one scale, so that the loops compare by eye too.
    low = min(axes.get_ylim()[0] for axes in axes_list[:-1])
    high = max(axes.get_ylim()[1] for axes in axes_list[:-1])
    for axes in axes_list[:-1]:
        axes.set_ylim(low, high)
    latency = axes_list[-1]
    for server, by_connections in by_loop[first].items():
        p99 = [g["median"]["p99_ms"] for g in by_connections.values()]
        latency.plot(connections, p99, styles.get(server, "-"), label=LABELS.get(server, server))
    latency.set_title(f"GET /user p99, {first} (log scale)")
    latency.set_ylabel("ms")
    latency.set_yscale("log")
    for axes in axes_list:
        axes.set_xscale("log", base=2)
        axes.set_xticks(connections, [str(c) for c in connections])
        axes.set_xlabel("connections (wrk -t1)")
        axes.grid(True, alpha=0.3, which="both")
    axes_list[0].legend(fontsize="small")
    machine = results["machine"]
    figure.suptitle(
        f"mixauth vs bare aiohttp{' and fastapi-users' if PEER in by_loop.get('uvloop', {}) else ''}, "
        f"{results['date']}: {machine['cpu_model']}, {machine['cpu_count']} CPUs (shared), "
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
