"""MemoryRateLimiter: token buckets driven by a fake clock (no sleeping)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from server.domain import ALLOWED, Decision, Rule
from server.limits.memory import MemoryRateLimiter, bucket_digest
from server.security import identifier_key
from tests.conftest import FakeClock

HOURLY = Rule("hourly", capacity=10, window=3600.0)  # one token back every 360 s
SMALL = Rule("small", capacity=3, window=60.0)  # one token back every 20 s
SINGLE = Rule("single", capacity=1, window=100.0)


def drain(limiter: MemoryRateLimiter, rule: Rule, key: str) -> None:
    """Take every token from one bucket, checking each hit is allowed."""
    for _ in range(rule.capacity):
        assert limiter.hit_now([(rule, key)]).allowed


def test_allows_capacity_hits_then_refuses(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    for _ in range(SMALL.capacity):
        assert limiter.hit_now([(SMALL, "k")]) == ALLOWED
    decision = limiter.hit_now([(SMALL, "k")])
    assert not decision.allowed
    assert decision.rule == SMALL


def test_an_allowed_decision_names_no_rule(clock: FakeClock) -> None:
    decision = MemoryRateLimiter(clock).hit_now([(SMALL, "k")])
    assert decision == Decision(allowed=True, rule=None, retry_after=0.0)


def test_refused_hits_keep_being_refused_without_time_passing(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "k")
    for _ in range(5):
        assert not limiter.hit_now([(SMALL, "k")]).allowed


def test_refills_one_token_per_window_over_capacity(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, HOURLY, "k")

    clock.advance(359.0)
    assert not limiter.hit_now([(HOURLY, "k")]).allowed
    clock.advance(1.0)
    assert limiter.hit_now([(HOURLY, "k")]).allowed
    # That was the only token back: the next one is another 360 s away.
    refused = limiter.hit_now([(HOURLY, "k")])
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(360.0)


def test_refill_is_continuous_not_all_at_once(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, HOURLY, "k")
    clock.advance(3 * 360.0)
    for _ in range(3):
        assert limiter.hit_now([(HOURLY, "k")]).allowed
    assert not limiter.hit_now([(HOURLY, "k")]).allowed


def test_refill_never_exceeds_capacity(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    assert limiter.hit_now([(SMALL, "k")]).allowed
    clock.advance(100 * SMALL.window)
    drain(limiter, SMALL, "k")
    assert not limiter.hit_now([(SMALL, "k")]).allowed


def test_retry_after_is_the_time_until_one_token(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, HOURLY, "k")
    assert limiter.hit_now([(HOURLY, "k")]).retry_after == pytest.approx(360.0)

    clock.advance(100.0)
    assert limiter.hit_now([(HOURLY, "k")]).retry_after == pytest.approx(260.0)

    clock.advance(259.5)
    assert limiter.hit_now([(HOURLY, "k")]).retry_after == pytest.approx(0.5)


def test_waiting_retry_after_is_enough(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "k")
    clock.advance(7.0)
    refused = limiter.hit_now([(SMALL, "k")])
    assert not refused.allowed
    clock.advance(refused.retry_after)
    assert limiter.hit_now([(SMALL, "k")]).allowed


def test_allowed_hit_takes_one_token_from_every_bucket_named(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    other = Rule("other", capacity=3, window=60.0)
    for _ in range(3):
        assert limiter.hit_now([(SMALL, "a"), (other, "b")]).allowed
    assert limiter.hit_now([(SMALL, "a")]).rule == SMALL
    assert limiter.hit_now([(other, "b")]).rule == other


def test_refused_hit_takes_no_token_from_earlier_buckets(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SINGLE, "full-stop")

    refused = limiter.hit_now([(SMALL, "k"), (SINGLE, "full-stop")])
    assert not refused.allowed
    assert refused.rule == SINGLE
    # SMALL's bucket was never charged: it still has all of its tokens, and no bucket was created for it.
    assert len(limiter) == 1
    drain(limiter, SMALL, "k")
    assert not limiter.hit_now([(SMALL, "k")]).allowed


def test_refused_hit_takes_no_token_from_later_buckets(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SINGLE, "full-stop")
    assert limiter.hit_now([(SMALL, "k")]).allowed  # SMALL now holds 2 tokens

    for _ in range(5):
        assert limiter.hit_now([(SINGLE, "full-stop"), (SMALL, "k")]).rule == SINGLE
    assert limiter.hit_now([(SMALL, "k")]).allowed
    assert limiter.hit_now([(SMALL, "k")]).allowed
    assert not limiter.hit_now([(SMALL, "k")]).allowed


def test_the_first_empty_bucket_in_order_is_reported(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SINGLE, "x")
    drain(limiter, HOURLY, "x")

    first = limiter.hit_now([(SINGLE, "x"), (HOURLY, "x")])
    assert first.rule == SINGLE
    assert first.retry_after == pytest.approx(100.0)

    second = limiter.hit_now([(HOURLY, "x"), (SINGLE, "x")])
    assert second.rule == HOURLY
    assert second.retry_after == pytest.approx(360.0)


def test_an_empty_bucket_after_a_full_one_is_reported(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SINGLE, "x")
    decision = limiter.hit_now([(HOURLY, "x"), (SINGLE, "x")])
    assert decision.rule == SINGLE


def test_distinct_keys_have_distinct_buckets(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "alice")
    assert not limiter.hit_now([(SMALL, "alice")]).allowed
    drain(limiter, SMALL, "bob")
    assert len(limiter) == 2


def test_distinct_rules_on_the_same_key_have_distinct_buckets(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    same_shape = Rule("other-name", capacity=SMALL.capacity, window=SMALL.window)
    drain(limiter, SMALL, "k")
    assert not limiter.hit_now([(SMALL, "k")]).allowed
    drain(limiter, same_shape, "k")
    assert not limiter.hit_now([(same_shape, "k")]).allowed


# What a 16 KiB signup body made of an email before identifiers were bounded: U+FDFA is one character that
# NFKC turns into 18, so about 97,000 characters (190 KB) of key.
HOSTILE_KEY = identifier_key("\ufdfa" * 5400 + "@example.com")


def test_a_bucket_costs_the_same_whatever_its_key(clock: FakeClock) -> None:
    assert len(HOSTILE_KEY) > 90_000
    limiter = MemoryRateLimiter(clock)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(100):
            assert limiter.hit_now([(HOURLY, f"{HOSTILE_KEY}{index}")]).allowed
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(limiter) == 100
    # About 300 bytes a bucket, as for any key; keeping the keys themselves would have taken 19 MB.
    assert grown < 100 * 1024


def test_keys_that_differ_only_at_their_end_have_distinct_buckets(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, HOSTILE_KEY + "a")
    assert not limiter.hit_now([(SMALL, HOSTILE_KEY + "a")]).allowed
    assert limiter.hit_now([(SMALL, HOSTILE_KEY + "b")]).allowed


def test_bucket_digest_is_fixed_size_and_takes_any_key() -> None:
    keys = ["", "k", HOSTILE_KEY, "\ud800 lone surrogate"]
    digests = {bucket_digest(key) for key in keys}
    assert len(digests) == len(keys)
    assert {len(digest) for digest in digests} == {16}
    assert bucket_digest("k") == bucket_digest("k")


def test_new_limiter_holds_no_buckets(clock: FakeClock) -> None:
    assert len(MemoryRateLimiter(clock)) == 0


def test_sweep_drops_buckets_that_have_refilled(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    assert limiter.hit_now([(SMALL, "a")]).allowed
    assert limiter.hit_now([(HOURLY, "b")]).allowed
    assert len(limiter) == 2

    clock.advance(SMALL.window / SMALL.capacity)  # SMALL's one token is back; HOURLY's is not
    limiter.sweep()
    assert len(limiter) == 1

    clock.advance(HOURLY.window)
    limiter.sweep()
    assert len(limiter) == 0


def test_sweep_keeps_buckets_that_are_not_full(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, HOURLY, "k")
    clock.advance(HOURLY.window - 1.0)
    limiter.sweep()
    assert len(limiter) == 1
    # Sweeping lost nothing: the bucket still has just 9 tokens (one short of full).
    for _ in range(9):
        assert limiter.hit_now([(HOURLY, "k")]).allowed
    assert not limiter.hit_now([(HOURLY, "k")]).allowed


def test_a_dropped_bucket_starts_again_full(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "k")
    clock.advance(SMALL.window)
    limiter.sweep()
    assert len(limiter) == 0
    drain(limiter, SMALL, "k")
    assert not limiter.hit_now([(SMALL, "k")]).allowed


def test_each_hit_drops_refilled_buckets_at_the_old_end(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    for n in range(3):
        assert limiter.hit_now([(SMALL, f"idle-{n}")]).allowed
    clock.advance(SMALL.window)  # all three idle buckets have refilled
    assert limiter.hit_now([(SMALL, "busy")]).allowed
    assert len(limiter) == 2  # two idle buckets dropped by this hit (two per hit), plus "busy"
    assert limiter.hit_now([(SMALL, "busy")]).allowed
    assert len(limiter) == 1


def test_refused_hits_drop_refilled_buckets_too(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    assert limiter.hit_now([(SMALL, "idle")]).allowed
    drain(limiter, SINGLE, "empty")
    clock.advance(SMALL.window)  # "idle" is full again; "empty" is not
    assert not limiter.hit_now([(SINGLE, "empty")]).allowed
    assert len(limiter) == 1


def test_dropping_stops_at_the_oldest_bucket_that_has_not_refilled(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, HOURLY, "slow")
    assert limiter.hit_now([(SMALL, "idle")]).allowed
    clock.advance(SMALL.window)  # "idle" has refilled, but the older "slow" has not: a hit does O(1) work
    limiter.hit_now([(SINGLE, "other")])
    assert len(limiter) == 3
    limiter.sweep()  # a full pass finds it
    assert len(limiter) == 2


def test_idle_keys_cost_no_memory_in_the_long_run(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    for n in range(100):
        assert limiter.hit_now([(SMALL, f"key-{n}")]).allowed
    assert len(limiter) == 100
    clock.advance(SMALL.window)
    for _ in range(50):
        limiter.hit_now([(SINGLE, "someone-else")])
    assert len(limiter) == 1


def test_the_cap_evicts_the_least_recently_changed_bucket(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock, max_buckets=3)
    for key in ("a", "b", "c"):
        drain(limiter, SMALL, key)
    assert not limiter.hit_now([(SMALL, "a")]).allowed  # a refused hit changes nothing, so "a" stays oldest
    clock.advance(1.0)
    assert limiter.hit_now([(HOURLY, "b")]).allowed  # a new bucket: "a" is evicted
    assert len(limiter) == 3
    assert limiter.evictions == 1
    drain(limiter, SMALL, "a")  # "a" forgot its history and starts again from a full bucket
    assert limiter.evictions == 2  # and coming back evicted the next oldest, "b" under SMALL


def test_memory_stays_bounded_under_a_flood_of_distinct_keys(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock, max_buckets=1000)
    for n in range(20_000):
        assert limiter.hit_now([(HOURLY, f"flood-{n}@example.com"), (HOURLY, f"10.{n // 256 % 256}.{n % 256}.1")])
        assert len(limiter) <= 1000
    assert limiter.evictions > 0


def test_the_cap_must_allow_a_bucket() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        MemoryRateLimiter(max_buckets=0)


async def test_refund_gives_back_one_token_and_never_more_than_capacity(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "k")
    await limiter.refund([(SMALL, "k")])
    assert limiter.hit_now([(SMALL, "k")]).allowed
    assert not limiter.hit_now([(SMALL, "k")]).allowed
    for _ in range(SMALL.capacity + 5):
        await limiter.refund([(SMALL, "k")])
    assert len(limiter) == 0  # full again, so dropped
    drain(limiter, SMALL, "k")  # exactly capacity tokens, not more
    assert not limiter.hit_now([(SMALL, "k")]).allowed


async def test_reset_refills_only_the_buckets_it_names(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock)
    drain(limiter, SMALL, "a")
    drain(limiter, SMALL, "b")
    await limiter.reset([(SMALL, "a")])
    drain(limiter, SMALL, "a")
    assert not limiter.hit_now([(SMALL, "b")]).allowed


async def test_async_hit_agrees_with_hit_now() -> None:
    sync_clock, async_clock = FakeClock(), FakeClock()
    sync_limiter, async_limiter = MemoryRateLimiter(sync_clock), MemoryRateLimiter(async_clock)
    script: list[tuple[float, list[tuple[Rule, str]]]] = [
        (0.0, [(SMALL, "a")]),
        (0.0, [(SMALL, "a"), (SINGLE, "b")]),
        (1.0, [(SINGLE, "b")]),
        (0.0, [(SMALL, "a")]),
        (0.0, [(SMALL, "a")]),
        (5.0, [(SINGLE, "b"), (SMALL, "a")]),
        (20.0, [(SMALL, "a")]),
        (120.0, [(SINGLE, "b"), (SMALL, "a")]),
    ]
    decisions: list[Decision] = []
    for step, buckets in script:
        sync_clock.advance(step)
        async_clock.advance(step)
        expected = sync_limiter.hit_now(buckets)
        assert await async_limiter.hit(buckets) == expected
        decisions.append(expected)
        assert len(async_limiter) == len(sync_limiter)
    # The script exercises both outcomes, so agreement means something.
    assert any(d.allowed for d in decisions)
    assert any(not d.allowed for d in decisions)


@pytest.mark.parametrize(("capacity", "window"), [(13, 3600.0), (11, 60.0), (7, 1.0), (3, 0.3)])
def test_a_token_is_back_exactly_when_retry_after_says(capacity: int, window: float) -> None:
    """Float refill arithmetic must not leave a bucket a hair short at the moment a token is due."""
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    rule = Rule("r", capacity, window)
    for _ in range(capacity):
        assert limiter.hit_now([(rule, "k")]).allowed
    for _ in range(50):
        refused = limiter.hit_now([(rule, "k")])
        assert not refused.allowed
        clock.advance(refused.retry_after)
        assert limiter.hit_now([(rule, "k")]).allowed
