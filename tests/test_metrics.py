"""GET /metrics: Prometheus text, parsed here with prometheus_client's own parser; and that nothing in it, nor
in the sign-in answer, tells a known account from an unknown one."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from server import __version__
from tests.conftest import PASSWORD, ClientFactory, bearer, free_port, sign_up


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
    assert value(requests, "mixauth_http_requests_total", route="unmatched", method="other", status="405") == 1
    latency = families["mixauth_http_request_duration_seconds"]
    assert value(latency, "mixauth_http_request_duration_seconds_count", route="/user", method="GET", status="200") == 3
    assert value(latency, "mixauth_http_request_duration_seconds_sum", route="/user", method="GET", status="200") > 0


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
