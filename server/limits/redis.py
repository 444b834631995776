"""The Redis token-bucket RateLimiter: the buckets every instance of the server shares.

The semantics are those of ``server.limits.memory.MemoryRateLimiter`` (its docstring explains the buckets);
only where the buckets live differs. Each operation is one round trip that Redis runs atomically:

- ``hit`` is one Lua script over every bucket of the call, all or nothing: it reads each bucket's level,
  refilled up to Redis's own clock (``TIME``, so instances whose clocks differ still agree), and either takes
  a token from each or takes none and reports the first empty bucket with the seconds until it holds one;
- ``refund`` is one script that gives a token back to each bucket, never above capacity;
- ``reset`` is one ``DEL`` of the buckets' keys (a full bucket is no key).

A bucket is a hash ``{t: tokens, at: microseconds of Redis's clock when they were counted}`` under
``<prefix><rule name>:<hex of bucket_digest(key)>``: the key the server was given (an email, an address)
never reaches Redis, and every bucket costs the same. A bucket's key expires (``PEXPIRE``) when the bucket
would be full again, and a bucket that is full is deleted, so Redis holds only buckets that still count.

Every Redis failure (refused connection, timeout, an error reply) leaves here as ``RedisUnavailable``, so
the layer above (``server.limits.fallback``) decides what a failure means without knowing redis-py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.domain import ALLOWED, Decision, Rule
from server.limits.memory import bucket_digest

Bucket = tuple[Rule, str]

DEFAULT_PREFIX = "mixauth:"

# Shared by the scripts: a bucket's level now, refilled from what is stored (absent means full), and how a
# level is stored. Numbers cross into Redis as strings formatted with 17 digits: Lua's own tostring keeps 14,
# which would drift a retry_after by more than float noise. Times are whole microseconds of Redis's clock,
# exact in a double for millennia.
_COMMON = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function level(key, capacity, rate, now)
  local state = redis.call('HMGET', key, 't', 'at')
  if not state[1] then
    return capacity
  end
  local elapsed = math.max(0, now - tonumber(state[2])) / 1000000
  return math.min(capacity, tonumber(state[1]) + elapsed * rate)
end

local function store(key, tokens, capacity, rate, now)
  if tokens >= capacity then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 'at', string.format('%d', now))
  -- Expire when the bucket is full again: a full bucket is no bucket.
  redis.call('PEXPIRE', key, math.max(1, math.ceil((capacity - tokens) / rate * 1000)))
end
"""

# KEYS: one per bucket; ARGV: capacity and refill per second of each, in the same order.
# Returns {1} when allowed, else {0, index of the first empty bucket (1-based), retry_after in seconds}.
_HIT = (
    _COMMON
    + """
local now = now_us()
local levels = {}
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tokens = level(KEYS[i], capacity, rate, now)
  if tokens < 1 - 1e-9 then
    return {0, i, string.format('%.17g', (1 - tokens) / rate)}
  end
  levels[i] = tokens
end
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  store(KEYS[i], math.max(0, levels[i] - 1), capacity, rate, now)
end
return {1}
"""
)

# KEYS and ARGV as for _HIT. Gives one token back to each bucket, never above capacity.
_REFUND = (
    _COMMON
    + """
local now = now_us()
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  store(KEYS[i], level(KEYS[i], capacity, rate, now) + 1, capacity, rate, now)
end
return 0
"""
)


class RedisUnavailable(Exception):
    """Redis did not answer, or answered with an error: the operation may or may not have happened."""


class RedisRateLimiter:
    """A ``RateLimiter`` on a Redis server (``open_redis`` makes the client it takes).

    The client should not retry on its own: one failure is reported at once, and the caller's fallback
    decides (a retry would multiply the time a dead Redis costs a request).
    """

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.prefix = prefix
        self._hit = client.register_script(_HIT)
        self._refund = client.register_script(_REFUND)

    def key_of(self, bucket: Bucket) -> str:
        """The Redis key of a bucket: the prefix, the rule's name and the digest of the key, never the key."""
        rule, key = bucket
        return f"{self.prefix}{rule.name}:{bucket_digest(key).hex()}"

    async def hit(self, buckets: Sequence[Bucket]) -> Decision:
        if not buckets:
            return ALLOWED
        reply = await self._call(self._hit, buckets)
        if reply[0] == 1:
            return ALLOWED
        rule = buckets[int(reply[1]) - 1][0]
        return Decision(allowed=False, rule=rule, retry_after=float(reply[2]))

    async def refund(self, buckets: Sequence[Bucket]) -> None:
        if buckets:
            await self._call(self._refund, buckets)

    async def reset(self, buckets: Sequence[Bucket]) -> None:
        if not buckets:
            return
        try:
            await self._client.delete(*(self.key_of(bucket) for bucket in buckets))
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(type(exc).__name__) from exc

    async def ping(self) -> None:
        """Return when Redis answers; RedisUnavailable when it does not (within the client's timeout)."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(type(exc).__name__) from exc

    async def disconnect(self) -> None:
        """Close every pooled connection, so the next command opens a fresh one (after Redis came back, the
        old ones are dead and each would fail once)."""
        await self._client.connection_pool.disconnect()

    async def _call(self, script: Any, buckets: Sequence[Bucket]) -> list[Any]:
        keys = [self.key_of(bucket) for bucket in buckets]
        args: list[str] = []
        for rule, _ in buckets:
            args += (str(rule.capacity), repr(rule.refill_per_second))
        try:
            reply: list[Any] = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            # The exception's type only: redis-py's messages can carry the server's address.
            raise RedisUnavailable(type(exc).__name__) from exc
        return reply


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    timeout: float = 0.1,  # noqa: ASYNC109 - the client's per-command timeout, not this call's deadline
) -> AsyncIterator[aioredis.Redis]:
    """A redis-py asyncio client for ``url`` whose connects and commands each give up after ``timeout``
    seconds, with no retries, closed (with its pool) on exit. Connects lazily: opening never fails."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )
    try:
        yield client
    finally:
        await client.aclose()
