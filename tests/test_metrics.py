"""GET /metrics: Prometheus text, parsed here with prometheus_client's own parser; where it is served and who
may read it; and that nothing in it, nor in the sign-in answer, tells a known account from an unknown one."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from server import __version__, cli
from server.config import ConfigError, load_settings
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, bearer, free_port, sign_up
from tests.process import base_env, start_server


def parse(text: str) -> dict[str, list[Any]]:
    """Every sample by metric family name."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    matching = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, [(s.name, s.labels) for s in samples])
    return float(matching[0])


async def scrape(client: Any) -> dict[str, list[Any]]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())


async def test_requests_are_counted_and_timed_by_route_method_and_status(make_client: ClientFactory) -> None:
    client = await make_client()
    token = await sign_up(client)
    for _ in range(3):
        await client.get("/user", headers=bearer(token))
    await client.get("/user")
    await client.get("/no/such/path/12345")
    await client.request("PURGE", "/user")  # a method aiohttp parses but mixauth has no use for
    families = await scrape(client)
    requests = families["mixauth_http_requests"]
    assert value(requests, "mixauth_http_requests_total", route="/user", method="GET", status="200") == 3
    assert value(requests, "mixauth_http_requests_total", route="/user", method="GET", status="401") == 1
    assert value(requests, "mixauth_http_requests_total", route="/user", method="POST", status="200") == 1
    assert value(requests, "mixauth_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(requests, "mixauth_http_requests_total", route="/user", method="other", status="405") == 1
    latency = families["mixauth_http_request_duration_seconds"]
    assert value(latency, "mixauth_http_request_duration_seconds_count", route="/user", method="GET", status="200") == 3
    assert value(latency, "mixauth_http_request_duration_seconds_sum", route="/user", method="GET", status="200") > 0


async def test_a_request_the_http_parser_refused_is_not_counted(make_client: ClientFactory) -> None:
    """It reached no application: logged, not counted, also after a counted one on the same connection."""
    client = await make_client()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
        await asyncio.wait_for(reader.readuntil(b"}"), 5)
        writer.write(b"GET /user HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n")
        assert b" 400 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    requests = (await scrape(client))["mixauth_http_requests"]
    counted = {(s.labels["route"], s.labels["status"]) for s in requests if s.name == "mixauth_http_requests_total"}
    assert counted == {("/health/live", "200")}


async def test_every_auth_event_is_counted_with_its_outcome(make_client: ClientFactory) -> None:
    client = await make_client(user_signin_rate_limit_account=2, user_signup_rate_limit_email=1)
    await sign_up(client, username="alice", email="alice@example.com")
    await client.post("/user", json={"username": "x", "email": "alice@example.com", "password": PASSWORD})
    await client.post("/user/auth", json={"username": "alice", "password": PASSWORD})
    await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})
    await client.post("/user/auth", json={"username": "nobody", "password": "wrong-password"})
    await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})
    await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})
    await client.get("/user", headers=bearer("not-a-token"))
    await client.get("/user")
    events = (await scrape(client))["mixauth_auth_events"]
    expected = {
        ("user.created", "api"): 1,
        ("signup.rate_limited", "email"): 1,
        ("user.signin.succeeded", ""): 1,
        ("user.signin.failed", ""): 3,  # the reason is the log's alone: see the known-and-unknown tests
        ("user.signin.throttled", "account"): 1,
        ("token.rejected", "malformed"): 1,
        ("authz.denied", "no_token"): 1,
    }
    for (event, outcome), count in expected.items():
        assert value(events, "mixauth_auth_events_total", event=event, outcome=outcome) == count, (event, outcome)


async def test_live_gauges_and_build_info(make_client: ClientFactory) -> None:
    client = await make_client(hash_workers=3)
    token = await sign_up(client)
    await client.get("/user", headers=bearer(token))
    families = await scrape(client)
    assert value(families["mixauth_rate_limit_buckets"], "mixauth_rate_limit_buckets") == 0  # 2, rounded down
    assert value(families["mixauth_rate_limit_max_buckets"], "mixauth_rate_limit_max_buckets") == 200_000
    assert value(families["mixauth_password_hash_workers"], "mixauth_password_hash_workers") == 3
    assert value(families["mixauth_password_hash_busy_workers"], "mixauth_password_hash_busy_workers") == 0
    assert value(families["mixauth_password_hash_queue_depth"], "mixauth_password_hash_queue_depth") == 0
    assert value(families["mixauth_token_cache_entries"], "mixauth_token_cache_entries") == 1
    assert value(families["mixauth_user_cache_entries"], "mixauth_user_cache_entries") == 1
    assert value(families["mixauth_build_info"], "mixauth_build_info", version=__version__) == 1


async def test_metrics_can_be_turned_off(make_client: ClientFactory) -> None:
    client = await make_client(metrics_enabled=False)
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/health/live")).status == 200


async def test_metrics_on_a_port_of_their_own(make_client: ClientFactory) -> None:
    port = free_port()
    client = await make_client(metrics_port=port)
    await client.get("/health/live")
    assert (await client.get("/metrics")).status == 404  # not beside the API
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        families = parse(await response.text())
    assert value(families["mixauth_http_requests"], "mixauth_http_requests_total", route="/health/live") == 1


# Nothing reachable without a token tells a known account from an unknown one

TIMING_SAMPLES = ("mixauth_http_request_duration_seconds_bucket", "mixauth_http_request_duration_seconds_sum")


def comparable(families: dict[str, list[Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape but the latencies (timing is the dummy bcrypt check's job, measured apart) and
    the wall-clock times each series was created."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for samples in families.values()
        for sample in samples
        if sample.name not in TIMING_SAMPLES and not sample.name.endswith("_created")
    }


async def failed_sign_ins_against_alice(make_client: ClientFactory, alice_exists: bool) -> tuple[Any, list[Any]]:
    """A server where alice exists or not (someone else signed up instead), after the sign-ins an attacker
    would try against her: by username, by email (one account, or two unknown spellings), with a password
    beyond bcrypt's 72 bytes. Its scrape, and the answers."""
    client = await make_client()
    name = "alice" if alice_exists else "bob"
    await sign_up(client, username=name, email=f"{name}@example.com")
    attempts = [
        {"username": "alice", "password": "wrong-password"},
        {"email": "alice@example.com", "password": "wrong-password"},
        {"username": "ALICE ", "password": "x" * 100},
    ]
    answers = []
    for body in attempts:
        response = await client.post("/user/auth", json=body)
        headers = {key: value for key, value in response.headers.items() if key.lower() not in {"x-request-id", "date"}}
        answers.append((response.status, headers, await response.read()))
    return await scrape(client), answers


async def test_failed_sign_ins_read_alike_in_the_metrics_for_known_and_unknown_accounts(
    make_client: ClientFactory,
) -> None:
    known, known_answers = await failed_sign_ins_against_alice(make_client, alice_exists=True)
    unknown, unknown_answers = await failed_sign_ins_against_alice(make_client, alice_exists=False)
    assert [answer[0] for answer in known_answers] == [403, 403, 403]
    assert known_answers == unknown_answers  # status, headers and body, byte for byte
    assert comparable(known) == comparable(unknown)
    failed = value(known["mixauth_auth_events"], "mixauth_auth_events_total", event="user.signin.failed")
    assert failed == 3


async def forgot_password_for_alice(make_client: ClientFactory, alice_exists: bool) -> tuple[Any, list[Any]]:
    """A server where alice exists or not, after forgot-password requests for her address (up to the 429):
    its scrape, and the answers."""
    client = await make_client(user_forgot_password_rate_limit_email=2)
    name = "alice" if alice_exists else "bob"
    await sign_up(client, username=name, email=f"{name}@example.com")
    answers = []
    for _ in range(3):
        response = await client.post("/user/forgot-password", json={"email": "alice@example.com"})
        headers = {key: value for key, value in response.headers.items() if key.lower() not in {"x-request-id", "date"}}
        answers.append((response.status, headers, await response.read()))
    return await scrape(client), answers


async def test_forgot_password_reads_alike_in_the_metrics_for_known_and_unknown_addresses(
    make_client: ClientFactory,
) -> None:
    known, known_answers = await forgot_password_for_alice(make_client, alice_exists=True)
    unknown, unknown_answers = await forgot_password_for_alice(make_client, alice_exists=False)
    assert [answer[0] for answer in known_answers] == [200, 200, 429]
    assert known_answers == unknown_answers
    assert comparable(known) == comparable(unknown)
    requested = value(known["mixauth_auth_events"], "mixauth_auth_events_total", event="password_reset.requested")
    assert requested == 2


async def test_the_bucket_gauges_move_in_steps_that_hide_one_account(make_client: ClientFactory) -> None:
    # One account's username and email share a bucket, two unknown spellings make two: counted exactly, a
    # scrape would tell them apart. 1 % of a 20,000 cap is 200.
    client = await make_client(rate_limit_max_buckets=20_000, user_signin_rate_limit_ip=1_000_000)
    for number in range(198):
        await client.post("/user/auth", json={"username": f"nobody-{number}", "password": "wrong-password"})
    families = await scrape(client)
    assert value(families["mixauth_rate_limit_buckets"], "mixauth_rate_limit_buckets") == 0  # 199 live, the IP's too
    await client.post("/user/auth", json={"username": "nobody-198", "password": "wrong-password"})
    families = await scrape(client)
    assert value(families["mixauth_rate_limit_buckets"], "mixauth_rate_limit_buckets") == 200
    assert value(families["mixauth_rate_limit_max_buckets"], "mixauth_rate_limit_max_buckets") == 20_000


# Where /metrics is served, and who may read it

METRICS_TOKEN = "metrics-token-0123456789abcdef"


def test_by_default_metrics_have_a_loopback_listener_of_their_own() -> None:
    settings = load_settings(None, {})
    assert (settings.metrics_host, settings.metrics_port, settings.metrics_token) == ("127.0.0.1", 2201, None)


async def test_the_api_port_does_not_serve_metrics_beside_a_listener(make_client: ClientFactory) -> None:
    client = await make_client(metrics_port=free_port())
    response = await client.get("/metrics")
    assert response.status == 404
    assert (await response.json())["code"] == "not_found"


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("where", ["listener", "api_port"])
async def test_a_metrics_token_is_required_when_set(
    make_client: ClientFactory, where: str, log_guard: list[str]
) -> None:
    port = free_port()
    client = await make_client(metrics_port=port if where == "listener" else None, metrics_token=METRICS_TOKEN)
    url = f"http://127.0.0.1:{port}/metrics" if where == "listener" else str(client.make_url("/metrics"))
    user_token = await sign_up(client)
    refused = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + METRICS_TOKEN[:-1]},
        {"Authorization": "Bearer " + METRICS_TOKEN + "0"},
        {"Authorization": "Basic " + METRICS_TOKEN},
        {"Authorization": "Bearer " + user_token},  # a user's token is not the metrics token
    ]
    for headers in refused:
        status, answer_headers, body = await get(url, **headers)
        assert status == 401, headers
        error = json.loads(body)
        assert error["statusCode"] == 401
        assert error["code"] in {"authentication_required", "invalid_token"}
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
        assert answer_headers["X-Content-Type-Options"] == "nosniff"
    status, answer_headers, body = await get(url, Authorization=f"bearer  {METRICS_TOKEN} ")
    assert status == 200
    assert answer_headers["Cache-Control"] == "no-store"
    assert "mixauth_build_info" in body.decode()
    denied = [line for line in log_guard if '"metrics.denied"' in line]
    assert len(denied) == len(refused)
    assert not any(METRICS_TOKEN in line for line in log_guard)


async def test_two_authorization_headers_are_refused(make_client: ClientFactory) -> None:
    client = await make_client(metrics_token=METRICS_TOKEN)
    twice = [("Authorization", f"Bearer {METRICS_TOKEN}"), ("Authorization", f"Bearer {METRICS_TOKEN}")]
    response = await client.get("/metrics", headers=CIMultiDict(twice))
    assert response.status == 401


async def test_the_metrics_listener_answers_like_the_api(make_client: ClientFactory) -> None:
    port = free_port()
    await make_client(metrics_port=port)
    for method, path, status, code in [
        ("GET", "/nothing-here", 404, "not_found"),
        ("GET", "/user", 404, "not_found"),
        ("POST", "/metrics", 405, "method_not_allowed"),
    ]:
        async with aiohttp.ClientSession() as http, http.request(method, f"http://127.0.0.1:{port}{path}") as answer:
            assert answer.status == status
            assert answer.content_type == "application/json"
            assert (await answer.json())["code"] == code
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Request-Id"]


# Configuration: where metrics may be served


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"METRICS_PORT": ""}, "set METRICS_TOKEN"),
        ({"METRICS_PORT": "0"}, "set METRICS_TOKEN"),
        ({"METRICS_PORT": "2200"}, "METRICS_PORT 2200 is the API's PORT"),
        ({"PORT": "2201"}, "METRICS_PORT 2201 is the API's PORT"),
        ({"PORT": "9000", "METRICS_PORT": "9000", "HOST": "0.0.0.0"}, "is the API's PORT"),  # noqa: S104
        ({"PORT": "9000", "METRICS_PORT": "9000", "METRICS_HOST": "::"}, "is the API's PORT"),
        ({"METRICS_TOKEN": "fifteen-chars.."}, "METRICS_TOKEN: must be at least 16 characters"),
        ({"METRICS_TOKEN": " " + METRICS_TOKEN}, "METRICS_TOKEN: must be at least 16 characters"),
    ],
)
def test_metrics_settings_that_cannot_work_are_configuration_errors(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(None, environ)
    assert fragment in str(raised.value)
    assert "fifteen" not in str(raised.value)
    assert METRICS_TOKEN not in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"METRICS_PORT": "", "METRICS_TOKEN": METRICS_TOKEN},
        {"METRICS_PORT": "", "METRICS_ENABLED": "false"},
        {"METRICS_PORT": "2200", "METRICS_ENABLED": "false"},
        {"METRICS_PORT": "2200", "HOST": "127.0.0.1", "METRICS_HOST": "127.0.0.2"},
        {"METRICS_TOKEN": ""},
    ],
)
def test_metrics_settings_that_work(environ: dict[str, str]) -> None:
    load_settings(None, environ)


def test_the_metrics_token_stays_out_of_repr_and_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(None, {"METRICS_TOKEN": METRICS_TOKEN})
    assert settings.metrics_token == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings)
    for extra in ([], ["--json"]):
        assert cli.main(["check-config", *extra], environ={"METRICS_TOKEN": METRICS_TOKEN}) == 0
        out = capsys.readouterr().out
        assert "metrics_token" in out
        assert METRICS_TOKEN not in out


@pytest.mark.parametrize("environ", [{"METRICS_PORT": "2200", "PORT": "2200"}, {"METRICS_PORT": ""}])
def test_check_config_refuses_where_metrics_cannot_be_served(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config"], environ=environ) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mixauth: configuration error: METRICS_PORT")


# The real server process


def run_server(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=tmp_path,
        env=base_env(DATA_DIR=str(tmp_path / "data"), JWT_SECRET=JWT_SECRET, **env),
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_metrics_on_the_api_port_stops_start_up(tmp_path: Path) -> None:
    port = str(free_port())
    for env in ({"PORT": port, "METRICS_PORT": port}, {"PORT": port, "METRICS_PORT": ""}):
        result = run_server(tmp_path, **env)
        assert result.returncode == 2
        assert result.stdout == b""
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("mixauth: configuration error: METRICS_PORT")
        assert not (tmp_path / "data").exists()


def test_a_busy_metrics_port_is_one_clear_line_and_nothing_else(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_server(tmp_path, PORT=str(free_port()), METRICS_PORT=str(busy))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mixauth: ")
    assert f"metrics listener 127.0.0.1:{busy}: Address already in use" in lines[0]
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    errors = [event for event in events if event["level"] in {"error", "critical"}]
    # The one error is the start-up's own end line, saying what the stderr line says; no stray asyncio error.
    assert [event["event"] for event in errors] == ["server.failed"], events
    assert errors[0]["error"] in lines[0]
    assert b"athrow" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # the metrics port is bound before anything is opened


async def test_the_server_process_serves_metrics_on_its_listener_only(tmp_path: Path) -> None:
    server = await start_server(tmp_path, METRICS_TOKEN=METRICS_TOKEN)
    try:
        assert (await get(f"{server.url}/metrics"))[0] == 404
        assert (await get(f"{server.metrics_url}/metrics"))[0] == 401
        status, _, body = await get(f"{server.metrics_url}/metrics", Authorization=f"Bearer {METRICS_TOKEN}")
        assert status == 200
        assert b"mixauth_build_info" in body
    finally:
        code, _, err = server.stop()
    assert code == 0
    assert err == ""


def test_counts_kept_on_the_loop_scrape_as_prometheus_clients_own_counter_and_histogram() -> None:
    """The request and event counts are plain numbers exposed by a collector: the scrape has the families,
    types, series, buckets (bounds inclusive) and values prometheus-client's Counter and Histogram give."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from server.metrics import LATENCY_BUCKETS, Metrics

    reference = CollectorRegistry()
    labels = ["route", "method", "status"]
    requests = Counter("mixauth_http_requests", "", labels, registry=reference)
    latency = Histogram(
        "mixauth_http_request_duration_seconds", "", labels, buckets=LATENCY_BUCKETS, registry=reference
    )
    events = Counter("mixauth_auth_events", "", ["event", "outcome"], registry=reference)
    metrics = Metrics()
    observations = [("/user", "GET", 200, s) for s in (0.0001, 0.0005, 0.001, 0.0011, 0.3, 12.0)]
    observations += [("unmatched", "other", 404, 0.002), ("/user/auth", "POST", 403, 0.25)]
    for route, method, status, seconds in observations:
        metrics.request_answered(route, method, status, seconds)
        requests.labels(route, method, str(status)).inc()
        latency.labels(route, method, str(status)).observe(seconds)
    for event, outcome in [("token.refused", "expired"), ("token.refused", "expired"), ("user.created", "")]:
        metrics.auth_event(event, outcome)
        events.labels(event, outcome).inc()

    def shape(text: str) -> dict[str, tuple[str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
        return {
            family.name: (
                family.type,
                sorted(
                    (s.name, tuple(sorted(s.labels.items())), s.value)
                    for s in family.samples
                    if "_created" not in s.name
                ),
            )
            for family in text_string_to_metric_families(text)
            if not family.name.startswith("mixauth_build")
        }

    ours, theirs = metrics.render().decode(), generate_latest(reference).decode()
    assert shape(ours) == shape(theirs)
    created = sorted(
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(ours)
        for s in f.samples
        if "_created" in s.name
    )
    assert created == sorted(
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(theirs)
        for s in f.samples
        if "_created" in s.name
    )


def test_readings_are_gauges_or_counters_as_registered() -> None:
    """What the backends report (a pool's size, reconnections since start) is read at each scrape."""
    from server.metrics import Metrics

    metrics = Metrics()
    state = {"size": 3, "reconnects": 0}
    metrics.gauge("mixauth_test_pool_connections", "Connections.", lambda: state["size"])
    metrics.counter("mixauth_test_reconnects", "Reconnections.", lambda: state["reconnects"])
    state.update(size=5, reconnects=2)
    families = {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}
    assert families["mixauth_test_pool_connections"].type == "gauge"
    assert [sample.value for sample in families["mixauth_test_pool_connections"].samples] == [5.0]
    assert families["mixauth_test_reconnects"].type == "counter"
    assert [(s.name, s.value) for s in families["mixauth_test_reconnects"].samples] == [
        ("mixauth_test_reconnects_total", 2.0)
    ]
