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

Every bucket costs the same whatever its key: the limiter keeps a 16-byte digest of the key
(``bucket_digest``), never the key. Keys come from clients (an email, a username, an address), and NFKC
normalisation can make a key 18 times longer than the text sent: were keys kept as given, a cap counted in
buckets would bound nothing (a 16 KiB body made a 190 KB key). The rule is kept beside the digest, not
hashed into it, so a bucket still tells which rule it belongs to.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from server.domain import ALLOWED, Decision, Rule

Clock = Callable[[], float]
Bucket = tuple[Rule, str]
# What the limiter keeps for a bucket: its rule, and the digest of its key.
Slot = tuple[Rule, bytes]

DEFAULT_MAX_BUCKETS = 200_000

# Refill arithmetic in floating point can land a hair below a whole token at the instant it is due.
_EPSILON = 1e-9
_DROPS_PER_HIT = 2


def bucket_digest(key: str) -> bytes:
    """The fixed-size form a bucket's key is kept under: 16 bytes of BLAKE2b, whatever the key's length.

    128 bits make an accidental collision as likely as never; a deliberate one costs about 2**64 hashes
    and would only make two keys share one bucket. Lone surrogates (which no request body can carry, but
    a caller might) are hashed as they are rather than refused: a rate limit must take any key.
    """
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _slot(bucket: Bucket) -> Slot:
    return bucket[0], bucket_digest(bucket[1])


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
        # (rule, digest of the key) -> (tokens, when they were counted), least recently changed first;
        # absent means full.
        self._buckets: OrderedDict[Slot, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, buckets: Sequence[Bucket]) -> Decision:
        return self.hit_now(buckets)

    async def refund(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for slot in map(_slot, buckets):
            self._store(slot, self._level(slot, now) + 1.0, now)

    async def reset(self, buckets: Sequence[Bucket]) -> None:
        for slot in map(_slot, buckets):
            self._buckets.pop(slot, None)

    def hit_now(self, buckets: Sequence[Bucket]) -> Decision:
        """The synchronous core of ``hit``: atomic because nothing in it yields to the event loop."""
        now = self._clock()
        self._drop_refilled_oldest(now)
        slots = [_slot(bucket) for bucket in buckets]
        levels: list[float] = []
        for slot in slots:
            tokens = self._level(slot, now)
            if tokens < 1.0 - _EPSILON:
                rule = slot[0]
                return Decision(allowed=False, rule=rule, retry_after=(1.0 - tokens) / rule.refill_per_second)
            levels.append(tokens)
        for slot, tokens in zip(slots, levels, strict=True):
            self._store(slot, max(0.0, tokens - 1.0), now)
        return ALLOWED

    def sweep(self) -> None:
        """Drop every bucket that has refilled to full (a full pass: for tests and maintenance, not the hot path)."""
        now = self._clock()
        full = [
            (rule, digest)
            for (rule, digest), (tokens, counted_at) in self._buckets.items()
            if self._refilled(rule, tokens, counted_at, now) >= rule.capacity
        ]
        for slot in full:
            del self._buckets[slot]

    def _drop_refilled_oldest(self, now: float, limit: int = _DROPS_PER_HIT) -> None:
        # The least recently changed buckets have had the longest to refill. Stop at the first that has not,
        # so a hit costs O(1); at most ``limit`` drops, two per hit outpaces the one bucket a hit can add.
        for _ in range(limit):
            if not self._buckets:
                return
            (rule, digest), (tokens, counted_at) = next(iter(self._buckets.items()))
            if self._refilled(rule, tokens, counted_at, now) < rule.capacity:
                return
            del self._buckets[(rule, digest)]

    def _store(self, slot: Slot, tokens: float, now: float) -> None:
        if tokens >= slot[0].capacity:
            self._buckets.pop(slot, None)
            return
        if slot in self._buckets:
            self._buckets.move_to_end(slot)
        elif len(self._buckets) >= self.max_buckets:
            self._buckets.popitem(last=False)
            self.evictions += 1
        self._buckets[slot] = (tokens, now)

    def _level(self, slot: Slot, now: float) -> float:
        state = self._buckets.get(slot)
        if state is None:
            return float(slot[0].capacity)
        return self._refilled(slot[0], state[0], state[1], now)

    @staticmethod
    def _refilled(rule: Rule, tokens: float, counted_at: float, now: float) -> float:
        return min(float(rule.capacity), tokens + max(0.0, now - counted_at) * rule.refill_per_second)
