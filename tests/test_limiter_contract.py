"""The RateLimiter contract, one suite run against every backend: memory and Redis.

Both run on real clocks here (Redis counts on its own), so the asserts either do not depend on time
(a bucket of a one-hour rule does not refill during a test) or use a rule that refills in a tenth of a
second with short real sleeps. Memory-only details (the cap, eviction, dropping) are in test_limiter.py;
Redis-only ones (atomicity across clients, expiry, fallback) in test_limiter_redis.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.domain import ALLOWED, RateLimiter, Rule
from server.limits.memory import MemoryRateLimiter
from server.limits.redis import RedisRateLimiter, open_redis

HOURLY = Rule("hourly", capacity=10, window=3600.0)  # one token back every 360 s
SMALL = Rule("small", capacity=3, window=60.0)  # one token back every 20 s
FAST = Rule("fast", capacity=2, window=0.2)  # one token back every 0.1 s

# A token comes back within a test only for FAST; for the others, the time a test takes is noise.
SLACK = 1.0


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    async with open_redis(url, timeout=2.0) as client:
        yield RedisRateLimiter(client, prefix)


async def drain(limiter: RateLimiter, rule: Rule, key: str) -> None:
    """Take every token from one bucket, checking each hit is allowed."""
    for _ in range(rule.capacity):
        assert await limiter.hit([(rule, key)]) == ALLOWED


async def tokens_left(limiter: RateLimiter, rule: Rule, key: str) -> int:
    """How many hits a bucket of a slow rule allows now (which empties it)."""
    taken = 0
    while (await limiter.hit([(rule, key)])).allowed:
        taken += 1
        assert taken <= rule.capacity
    return taken


async def test_allows_capacity_hits_then_refuses(limiter: RateLimiter) -> None:
    for _ in range(SMALL.capacity):
        assert await limiter.hit([(SMALL, "k")]) == ALLOWED
    decision = await limiter.hit([(SMALL, "k")])
    assert not decision.allowed
    assert decision.rule == SMALL
    assert 20.0 - SLACK < decision.retry_after <= 20.0


async def test_refused_hits_take_nothing_and_keep_being_refused(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "k")
    for _ in range(5):
        assert not (await limiter.hit([(SMALL, "k")])).allowed


async def test_retry_after_is_the_time_until_one_token(limiter: RateLimiter) -> None:
    await drain(limiter, HOURLY, "k")
    decision = await limiter.hit([(HOURLY, "k")])
    assert decision.rule == HOURLY
    assert 360.0 - SLACK < decision.retry_after <= 360.0


async def test_an_allowed_hit_takes_one_token_from_every_bucket_named(limiter: RateLimiter) -> None:
    for _ in range(3):
        assert (await limiter.hit([(SMALL, "a"), (HOURLY, "b")])).allowed
    assert await tokens_left(limiter, SMALL, "a") == 0
    assert await tokens_left(limiter, HOURLY, "b") == 7


async def test_a_refused_hit_takes_no_token_from_any_bucket(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "empty")
    decision = await limiter.hit([(HOURLY, "before"), (SMALL, "empty"), (HOURLY, "after")])
    assert not decision.allowed
    assert decision.rule == SMALL
    assert await tokens_left(limiter, HOURLY, "before") == HOURLY.capacity
    assert await tokens_left(limiter, HOURLY, "after") == HOURLY.capacity


async def test_the_first_empty_bucket_in_order_is_reported_with_its_retry_after(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "x")
    await drain(limiter, HOURLY, "y")
    first_hourly = await limiter.hit([(HOURLY, "y"), (SMALL, "x")])
    assert first_hourly.rule == HOURLY
    assert 360.0 - SLACK < first_hourly.retry_after <= 360.0
    first_small = await limiter.hit([(SMALL, "x"), (HOURLY, "y")])
    assert first_small.rule == SMALL
    assert 20.0 - SLACK < first_small.retry_after <= 20.0


async def test_an_empty_bucket_after_full_ones_is_reported(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "late")
    decision = await limiter.hit([(HOURLY, "a"), (HOURLY, "b"), (SMALL, "late")])
    assert decision.rule == SMALL


async def test_distinct_keys_have_distinct_buckets(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "one")
    assert not (await limiter.hit([(SMALL, "one")])).allowed
    assert (await limiter.hit([(SMALL, "two")])).allowed


async def test_distinct_rules_on_the_same_key_have_distinct_buckets(limiter: RateLimiter) -> None:
    first, second = Rule("first", 3, 60.0), Rule("second", 3, 60.0)
    await drain(limiter, first, "k")
    assert not (await limiter.hit([(first, "k")])).allowed
    assert await tokens_left(limiter, second, "k") == 3


async def test_refund_gives_back_one_token(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "k")
    await limiter.refund([(SMALL, "k")])
    assert await tokens_left(limiter, SMALL, "k") == 1


async def test_refund_never_fills_above_capacity(limiter: RateLimiter) -> None:
    assert (await limiter.hit([(SMALL, "k")])).allowed
    for _ in range(5):
        await limiter.refund([(SMALL, "k"), (SMALL, "untouched")])
    assert await tokens_left(limiter, SMALL, "k") == SMALL.capacity
    assert await tokens_left(limiter, SMALL, "untouched") == SMALL.capacity


async def test_reset_refills_only_the_buckets_it_names(limiter: RateLimiter) -> None:
    for key in ("a", "b", "c"):
        await drain(limiter, SMALL, key)
    await limiter.reset([(SMALL, "a"), (SMALL, "b")])
    assert await tokens_left(limiter, SMALL, "a") == SMALL.capacity
    assert await tokens_left(limiter, SMALL, "b") == SMALL.capacity
    assert await tokens_left(limiter, SMALL, "c") == 0


async def test_reset_of_a_rule_leaves_the_same_key_under_another_rule(limiter: RateLimiter) -> None:
    await drain(limiter, SMALL, "k")
    await drain(limiter, HOURLY, "k")
    await limiter.reset([(SMALL, "k")])
    assert await tokens_left(limiter, SMALL, "k") == SMALL.capacity
    assert await tokens_left(limiter, HOURLY, "k") == 0


async def test_no_buckets_is_allowed_and_changes_nothing(limiter: RateLimiter) -> None:
    assert await limiter.hit([]) == ALLOWED
    await limiter.refund([])
    await limiter.reset([])


async def test_a_bucket_refills_over_time_and_retry_after_is_enough(limiter: RateLimiter) -> None:
    await drain(limiter, FAST, "k")
    refused = await limiter.hit([(FAST, "k")])
    assert refused.rule == FAST
    assert 0.0 < refused.retry_after <= 0.1
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await limiter.hit([(FAST, "k")])).allowed
    # One token came back, not the bucket: the next is refused again.
    assert not (await limiter.hit([(FAST, "k")])).allowed


async def test_refill_never_exceeds_capacity(limiter: RateLimiter) -> None:
    assert (await limiter.hit([(FAST, "k")])).allowed
    await asyncio.sleep(FAST.window * 1.5)
    await drain(limiter, FAST, "k")
    assert not (await limiter.hit([(FAST, "k")])).allowed


@pytest.mark.parametrize(
    "key",
    ["ascii@example.com", "ÜNICODE-ß-\U0001f600", "lone-\udc80-surrogate", "x" * 100_000, ""],
    ids=["ascii", "unicode", "surrogate", "long", "empty"],
)
async def test_any_key_is_taken(limiter: RateLimiter, key: str) -> None:
    await drain(limiter, SMALL, key)
    assert not (await limiter.hit([(SMALL, key)])).allowed
    assert (await limiter.hit([(SMALL, key + "-other")])).allowed
