"""The in-process token-bucket RateLimiter.

Each (rule, key) pair has a bucket of ``rule.capacity`` tokens that refills continuously at
``capacity / window`` tokens per second. A bucket that has refilled to full behaves exactly like no bucket,
so it is dropped: idle keys cost no memory. Dropping happens when a bucket is next touched and in sweeps
that run once per ``sweep_interval`` seconds of clock time, each visiting every live bucket once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from server.domain import ALLOWED, Decision, Rule

Clock = Callable[[], float]

# Refill arithmetic in floating point can land a hair below a whole token at the instant it is due.
_EPSILON = 1e-9


class MemoryRateLimiter:
    def __init__(self, clock: Clock = time.monotonic, sweep_interval: float = 60.0) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        # (rule, key) -> (tokens, when they were counted); absent means full.
        self._buckets: dict[tuple[Rule, str], tuple[float, float]] = {}
        self._next_sweep = clock() + sweep_interval

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, buckets: Sequence[tuple[Rule, str]]) -> Decision:
        return self.hit_now(buckets)

    def hit_now(self, buckets: Sequence[tuple[Rule, str]]) -> Decision:
        """The synchronous core of ``hit``: atomic because nothing in it yields to the event loop."""
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep()
        levels: list[float] = []
        for rule, key in buckets:
            tokens = self._level(rule, key, now)
            if tokens < 1.0 - _EPSILON:
                return Decision(allowed=False, rule=rule, retry_after=(1.0 - tokens) / rule.refill_per_second)
            levels.append(tokens)
        for bucket, tokens in zip(buckets, levels, strict=True):
            self._buckets[bucket] = (max(0.0, tokens - 1.0), now)
        return ALLOWED

    def sweep(self) -> None:
        """Drop every bucket that has refilled to full."""
        now = self._clock()
        self._next_sweep = now + self._sweep_interval
        full = [
            (rule, key)
            for (rule, key), (tokens, counted_at) in self._buckets.items()
            if self._refilled(rule, tokens, counted_at, now) >= rule.capacity
        ]
        for bucket in full:
            del self._buckets[bucket]

    def _level(self, rule: Rule, key: str, now: float) -> float:
        state = self._buckets.get((rule, key))
        if state is None:
            return float(rule.capacity)
        return self._refilled(rule, state[0], state[1], now)

    @staticmethod
    def _refilled(rule: Rule, tokens: float, counted_at: float, now: float) -> float:
        return min(float(rule.capacity), tokens + max(0.0, now - counted_at) * rule.refill_per_second)
