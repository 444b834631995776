"""The Redis limiter beyond the contract: atomicity across clients, what it keeps in Redis, and what the
failover limiter does while Redis is down (against a private redis-server each test starts and stops)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.domain import ALLOWED, Decision, RateLimiterUnavailable, Rule
from server.limits.fallback import FailoverRateLimiter, open_redis_limiter
from server.limits.memory import MemoryRateLimiter, bucket_digest
from server.limits.redis import RedisRateLimiter, open_redis
from server.web.middleware import request_middleware
from tests.conftest import PrivateRedis, free_port, redis_keys

TEN = Rule("ten", capacity=10, window=3600.0)
HOURLY = Rule("hourly", capacity=10, window=3600.0)  # 360 s per token
FAST = Rule("fast", capacity=2, window=0.2)  # 0.1 s per token
# Short enough to keep the tests quick, long enough for a loaded machine's local round trip.
TIMEOUT = 0.5
PROBE = 0.05

T = TypeVar("T")


@pytest.fixture
async def redis_limiter(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisRateLimiter]:
    async with open_redis(redis_url, timeout=2.0) as client:
        yield RedisRateLimiter(client, redis_prefix)


# Atomicity and what Redis holds


async def test_concurrent_hits_from_two_clients_allow_exactly_the_capacity(redis_url: str, redis_prefix: str) -> None:
    async with open_redis(redis_url, timeout=5.0) as first, open_redis(redis_url, timeout=5.0) as second:
        limiters = [RedisRateLimiter(first, redis_prefix), RedisRateLimiter(second, redis_prefix)]
        decisions = await asyncio.gather(*(limiters[i % 2].hit([(TEN, "shared")]) for i in range(50)))
    assert sum(decision.allowed for decision in decisions) == TEN.capacity
    assert all(decision.rule == TEN for decision in decisions if not decision.allowed)


async def test_concurrent_hits_over_several_buckets_are_all_or_nothing(redis_url: str, redis_prefix: str) -> None:
    # Every call names the shared bucket and one of its own: a refused call must leave its own untouched,
    # so Redis ends with the shared bucket and exactly one bucket per allowed call.
    own = Rule("own", capacity=5, window=3600.0)
    async with open_redis(redis_url, timeout=5.0) as first, open_redis(redis_url, timeout=5.0) as second:
        limiters = [RedisRateLimiter(first, redis_prefix), RedisRateLimiter(second, redis_prefix)]
        decisions = await asyncio.gather(
            *(limiters[i % 2].hit([(own, f"caller-{i}"), (TEN, "shared")]) for i in range(50))
        )
    allowed = [i for i, decision in enumerate(decisions) if decision.allowed]
    assert len(allowed) == TEN.capacity
    expected = {limiters[0].key_of((TEN, "shared"))} | {limiters[0].key_of((own, f"caller-{i}")) for i in allowed}
    assert set(redis_keys(redis_url, redis_prefix)) == expected


async def test_instances_share_their_buckets_through_redis(redis_url: str, redis_prefix: str) -> None:
    # Ten signups for one email spread over three instances: the eleventh, on any of them, is refused.
    signup_email = Rule("signup_email", capacity=10, window=3600.0)
    async with contextlib.AsyncExitStack() as stack:
        instances = [
            await stack.enter_async_context(
                open_redis_limiter(redis_url, prefix=redis_prefix, timeout=2.0, local=MemoryRateLimiter())
            )
            for _ in range(3)
        ]
        for attempt in range(10):
            assert (await instances[attempt % 3].hit([(signup_email, "someone@example.com")])).allowed
        for instance in instances:
            refused = await instance.hit([(signup_email, "someone@example.com")])
            assert refused.rule == signup_email
            assert 359.0 < refused.retry_after <= 360.0
        assert all(instance.state == "redis" and len(instance.local) == 0 for instance in instances)


async def test_keys_hold_the_rule_and_a_digest_never_the_key(redis_url: str, redis_limiter: RedisRateLimiter) -> None:
    email, address = "Alice.Secret@Example.com", "203.0.113.7"
    await redis_limiter.hit([(TEN, email), (HOURLY, address)])
    prefix = redis_limiter.prefix
    assert sorted(redis_keys(redis_url, prefix)) == sorted(
        [f"{prefix}ten:{bucket_digest(email).hex()}", f"{prefix}hourly:{bucket_digest(address).hex()}"]
    )
    async with open_redis(redis_url) as client:
        for key in redis_keys(redis_url, prefix):
            assert "alice" not in key.lower()
            # Two numbers and nothing else: the level and when it was counted.
            stored = await client.hgetall(key)
            assert set(stored) == {b"t", b"at"}
            assert all(float(value) >= 0 for value in stored.values())


async def test_a_key_expires_when_its_bucket_would_be_full_again(
    redis_url: str, redis_limiter: RedisRateLimiter
) -> None:
    async with open_redis(redis_url) as client:
        key = redis_limiter.key_of((HOURLY, "k"))
        await redis_limiter.hit([(HOURLY, "k")])
        # One token taken from ten, one back every 360 s: full again in 360 s.
        assert 359_000 < await client.pttl(key) <= 360_000
        await redis_limiter.hit([(HOURLY, "k")])
        assert 719_000 < await client.pttl(key) <= 720_000

        fast_key = redis_limiter.key_of((FAST, "k"))
        await redis_limiter.hit([(FAST, "k")])
        assert 0 < await client.pttl(fast_key) <= 100
        await asyncio.sleep(0.15)
        assert not await client.exists(fast_key)


async def test_a_bucket_refunded_or_reset_to_full_leaves_no_key(
    redis_url: str, redis_limiter: RedisRateLimiter
) -> None:
    await redis_limiter.hit([(HOURLY, "refunded"), (HOURLY, "reset")])
    assert len(redis_keys(redis_url, redis_limiter.prefix)) == 2
    await redis_limiter.refund([(HOURLY, "refunded")])
    await redis_limiter.reset([(HOURLY, "reset")])
    assert redis_keys(redis_url, redis_limiter.prefix) == []


async def test_a_refused_hit_writes_nothing(redis_url: str, redis_limiter: RedisRateLimiter) -> None:
    single = Rule("single", capacity=1, window=3600.0)
    await redis_limiter.hit([(single, "k")])
    async with open_redis(redis_url) as client:
        before = await client.hgetall(redis_limiter.key_of((single, "k")))
        assert not (await redis_limiter.hit([(single, "k"), (HOURLY, "other")])).allowed
        assert await client.hgetall(redis_limiter.key_of((single, "k"))) == before
    assert len(redis_keys(redis_url, redis_limiter.prefix)) == 1


def events(rendered: list[str], name: str) -> list[dict[str, Any]]:
    """The log lines (as the log guard recorded them) whose event is ``name``."""
    lines = [json.loads(line) for line in rendered if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


class CountingRedis:
    """Counts the calls the failover limiter makes to its Redis limiter's hit."""

    def __init__(self, limiter: FailoverRateLimiter) -> None:
        self.calls = 0
        original = limiter.redis.hit

        async def counted(buckets: Sequence[tuple[Rule, str]]) -> Decision:
            self.calls += 1
            return await original(buckets)

        limiter.redis.hit = counted  # type: ignore[method-assign]


def state_of(limiter: FailoverRateLimiter) -> str:
    """The limiter's state, read afresh (a plain ``limiter.state`` is narrowed by mypy after an assert)."""
    return limiter.state


async def wait_for(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# Failover


async def test_a_stopped_redis_falls_back_to_local_buckets_and_comes_back(
    private_redis: PrivateRedis, log_guard: list[str]
) -> None:
    local = MemoryRateLimiter()
    async with open_redis_limiter(private_redis.url, timeout=TIMEOUT, local=local, probe_interval=PROBE) as limiter:
        assert limiter.state == "redis"
        assert await limiter.hit([(TEN, "k")]) == ALLOWED
        assert len(local) == 0

        await private_redis.stop()
        counting = CountingRedis(limiter)
        for _ in range(TEN.capacity):
            assert await limiter.hit([(TEN, "k")]) == ALLOWED
        # Counted locally from a full bucket: ten more, then refused.
        refused = await limiter.hit([(TEN, "k")])
        assert refused.rule == TEN
        assert state_of(limiter) == "local"
        assert limiter.failovers == 1
        assert counting.calls == 1, "only the first call after Redis died may try it"
        assert len(events(log_guard, "limiter.redis_unavailable")) == 1

        await private_redis.start()
        await wait_for(lambda: state_of(limiter) == "redis")
        assert len(events(log_guard, "limiter.redis_available")) == 1
        # Back on Redis's buckets, which a fresh server has lost: a full bucket again.
        assert await limiter.hit([(TEN, "k")]) == ALLOWED
        assert counting.calls == 2
        assert limiter.failovers == 1

        # And it fails over again the next time, logging it again.
        await private_redis.stop()
        assert await limiter.hit([(TEN, "other")]) == ALLOWED
        assert limiter.failovers == 2
        assert len(events(log_guard, "limiter.redis_unavailable")) == 2


async def test_refunds_and_resets_go_to_the_local_buckets_while_redis_is_down(private_redis: PrivateRedis) -> None:
    local = MemoryRateLimiter()
    async with open_redis_limiter(private_redis.url, timeout=TIMEOUT, local=local, probe_interval=PROBE) as limiter:
        await private_redis.stop()
        single = Rule("single", capacity=1, window=3600.0)
        await limiter.refund([(single, "k")])  # the failure is found here, and the refund lands locally
        assert state_of(limiter) == "local"
        assert (await limiter.hit([(single, "k")])).allowed
        assert not (await limiter.hit([(single, "k")])).allowed
        await limiter.reset([(single, "k")])
        assert (await limiter.hit([(single, "k")])).allowed


async def test_deny_mode_refuses_limited_calls_while_redis_is_down(
    private_redis: PrivateRedis, log_guard: list[str]
) -> None:
    local = MemoryRateLimiter()
    async with open_redis_limiter(
        private_redis.url, timeout=TIMEOUT, failure="deny", local=local, probe_interval=PROBE
    ) as limiter:
        assert (await limiter.hit([(TEN, "k")])).allowed
        await private_redis.stop()
        for _ in range(3):
            with pytest.raises(RateLimiterUnavailable):
                await limiter.hit([(TEN, "k")])
        # A refund or reset follows an answer already given: dropped, never raised.
        await limiter.refund([(TEN, "k")])
        await limiter.reset([(TEN, "k")])
        assert state_of(limiter) == "deny"
        assert limiter.failovers == 1
        assert len(local) == 0
        assert [line["mode"] for line in events(log_guard, "limiter.redis_unavailable")] == ["deny"]

        await private_redis.start()
        await wait_for(lambda: state_of(limiter) == "redis")
        assert (await limiter.hit([(TEN, "k")])).allowed


async def test_ping_raises_while_redis_does_not_answer(private_redis: PrivateRedis) -> None:
    async with open_redis_limiter(private_redis.url, timeout=TIMEOUT, local=MemoryRateLimiter()) as limiter:
        await limiter.ping()
        await private_redis.stop()
        with pytest.raises(RateLimiterUnavailable):
            await limiter.ping()
        assert state_of(limiter) == "local"


async def test_the_script_is_loaded_again_after_redis_forgets_it(private_redis: PrivateRedis) -> None:
    async with open_redis(private_redis.url) as client:
        limiter = RedisRateLimiter(client, "p:")
        assert (await limiter.hit([(TEN, "k")])).allowed
        await client.script_flush()
        assert (await limiter.hit([(TEN, "k")])).allowed
        assert (await limiter.hit([(TEN, "k")])).allowed
        assert float(await client.hget(limiter.key_of((TEN, "k")), "t") or 0) == pytest.approx(7.0, abs=0.01)


async def test_a_redis_down_at_start_is_logged_and_counted_locally(log_guard: list[str]) -> None:
    url = f"redis://:hunter2-redis-password@127.0.0.1:{free_port()}/0"
    async with open_redis_limiter(url, timeout=TIMEOUT, local=MemoryRateLimiter(), probe_interval=PROBE) as limiter:
        assert state_of(limiter) == "local"
        assert (await limiter.hit([(TEN, "k")])).allowed
    assert len(events(log_guard, "limiter.redis_unavailable")) == 1
    assert not [line for line in log_guard if "hunter2" in line or str(url) in line]


# An address that takes connections and never answers costs at most one timeout


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A Redis URL whose port accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


async def test_a_silent_redis_costs_the_first_call_one_timeout_and_later_calls_nothing(
    blackhole: str, log_guard: list[str]
) -> None:
    timeout = 0.2
    async with open_redis(blackhole, timeout=timeout) as client:
        limiter = FailoverRateLimiter(RedisRateLimiter(client, "p:"), MemoryRateLimiter(), probe_interval=PROBE)
        try:
            counting = CountingRedis(limiter)
            first = await timed(limiter.hit([(TEN, "k")]))
            assert first[0] == ALLOWED
            assert timeout * 0.9 <= first[1] < timeout * 5, "the first call waits for one timeout, not more"
            later = await timed(asyncio.gather(*(limiter.hit([(TEN, "k")]) for _ in range(9))))
            assert all(decision.allowed for decision in later[0])
            assert counting.calls == 1
            assert later[1] < timeout, "no call after the first may wait for Redis"
            assert state_of(limiter) == "local"
        finally:
            await limiter.close()
    assert len(events(log_guard, "limiter.redis_unavailable")) == 1


async def test_no_probe_is_started_after_close(blackhole: str) -> None:
    async with open_redis(blackhole, timeout=0.05) as client:
        limiter = FailoverRateLimiter(RedisRateLimiter(client, "p:"), MemoryRateLimiter(), probe_interval=PROBE)
        await limiter.close()
        assert (await limiter.hit([(TEN, "k")])).allowed
        assert state_of(limiter) == "local"
        assert not [task for task in asyncio.all_tasks() if task.get_name() == "mixauth-redis-probe"]


async def timed(work: Awaitable[T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = await work
    return result, time.perf_counter() - start


# The 503 a deny-mode refusal becomes


async def test_the_unavailable_limiter_is_a_503_with_retry_after(aiohttp_client: Any) -> None:
    async def limited(request: web.Request) -> web.Response:
        raise RateLimiterUnavailable()

    app = web.Application(middlewares=[request_middleware(())])
    app.router.add_post("/limited", limited)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    response = await client.post("/limited")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    body = await response.json()
    assert body["code"] == "rate_limiter_unavailable"
    assert body["statusCode"] == 503
