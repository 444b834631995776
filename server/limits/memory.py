"""The in-process token-bucket RateLimiter.

Each (rule, key) pair has a bucket of ``rule.capacity`` tokens that refills continuously at
``capacity / window`` tokens per second. A bucket that has refilled to full behaves exactly like no bucket,
so it is dropped: idle keys cost no memory. Dropping happens when a bucket is next touched, and every hit
first drops the refilled buckets at the old end of the order (a few at most), so the work per hit is
constant and no sweep ever stalls the event loop, however many buckets are live.

Memory is bounded: at most ``max_buckets`` buckets live at once. Buckets are kept in the order they were
last changed, and when a new one would pass the cap, the least recently changed bucket is evicted. That
bucket has had the longest time to refill, so evicting it forgets the least; an evicted key starts again
from a full bucket. Under a flood of distinct keys the limiter therefore forgets its oldest keys rather
than refusing everyone new (which would let the flood lock out every honest client) or growing without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from server.domain import ALLOWED, Decision, Rule

Clock = Callable[[], float]
Bucket = tuple[Rule, str]

DEFAULT_MAX_BUCKETS = 200_000

# Refill arithmetic in floating point can land a hair below a whole token at the instant it is due.
_EPSILON = 1e-9
_DROPS_PER_HIT = 2


class MemoryRateLimiter:
    def __init__(
        self,
        clock: Clock = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._clock = clock
        self.max_buckets = max_buckets
        # Buckets evicted by the cap since start, for metrics and logs.
        self.evictions = 0
        # (rule, key) -> (tokens, when they were counted), least recently changed first; absent means full.
        self._buckets: OrderedDict[Bucket, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, buckets: Sequence[Bucket]) -> Decision:
        return self.hit_now(buckets)

    async def refund(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            self._store(bucket, self._level(bucket, now) + 1.0, now)

    async def reset(self, buckets: Sequence[Bucket]) -> None:
        for bucket in buckets:
            self._buckets.pop(bucket, None)

    def hit_now(self, buckets: Sequence[Bucket]) -> Decision:
        """The synchronous core of ``hit``: atomic because nothing in it yields to the event loop."""
        now = self._clock()
        self._drop_refilled_oldest(now)
        levels: list[float] = []
        for bucket in buckets:
            tokens = self._level(bucket, now)
            if tokens < 1.0 - _EPSILON:
                rule = bucket[0]
                return Decision(allowed=False, rule=rule, retry_after=(1.0 - tokens) / rule.refill_per_second)
            levels.append(tokens)
        for bucket, tokens in zip(buckets, levels, strict=True):
            self._store(bucket, max(0.0, tokens - 1.0), now)
        return ALLOWED

    def sweep(self) -> None:
        """Drop every bucket that has refilled to full (a full pass: for tests and maintenance, not the hot path)."""
        now = self._clock()
        full = [
            (rule, key)
            for (rule, key), (tokens, counted_at) in self._buckets.items()
            if self._refilled(rule, tokens, counted_at, now) >= rule.capacity
        ]
        for bucket in full:
            del self._buckets[bucket]

    def _drop_refilled_oldest(self, now: float, limit: int = _DROPS_PER_HIT) -> None:
        # The least recently changed buckets have had the longest to refill. Stop at the first that has not,
        # so a hit costs O(1); at most ``limit`` drops, two per hit outpaces the one bucket a hit can add.
        for _ in range(limit):
            if not self._buckets:
                return
            (rule, key), (tokens, counted_at) = next(iter(self._buckets.items()))
            if self._refilled(rule, tokens, counted_at, now) < rule.capacity:
                return
            del self._buckets[(rule, key)]

    def _store(self, bucket: Bucket, tokens: float, now: float) -> None:
        if tokens >= bucket[0].capacity:
            self._buckets.pop(bucket, None)
            return
        if bucket in self._buckets:
            self._buckets.move_to_end(bucket)
        elif len(self._buckets) >= self.max_buckets:
            self._buckets.popitem(last=False)
            self.evictions += 1
        self._buckets[bucket] = (tokens, now)

    def _level(self, bucket: Bucket, now: float) -> float:
        state = self._buckets.get(bucket)
        if state is None:
            return float(bucket[0].capacity)
        return self._refilled(bucket[0], state[0], state[1], now)

    @staticmethod
    def _refilled(rule: Rule, tokens: float, counted_at: float, now: float) -> float:
        return min(float(rule.capacity), tokens + max(0.0, now - counted_at) * rule.refill_per_second)
