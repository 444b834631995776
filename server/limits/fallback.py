"""The shared rate limiter with a way down: Redis while it answers, and a set behaviour while it does not.

``FailoverRateLimiter`` is the ``RateLimiter`` the server uses with REDIS_URL set. While Redis answers, every
call goes to ``RedisRateLimiter``, so all instances share their buckets. The first call that fails (refused
connection, timeout, an error reply) marks Redis down, logs ``limiter.redis_unavailable`` once and counts a
failover; from then on no request touches Redis, so a dead Redis costs a request nothing beyond the one
timeout the first failing call paid. Meanwhile:

- ``failure="local"`` (the default): the instance counts on its own ``MemoryRateLimiter``. Limits still hold
  per instance; across N instances a client gets up to N times the limit until Redis is back.
- ``failure="deny"``: a hit raises ``RateLimiterUnavailable`` (503 with Retry-After): no limited call goes
  uncounted. Refunds and resets are dropped rather than raised: they follow an answer already decided.

A background probe pings Redis every ``probe_interval`` seconds (each ping bounded by the client's
timeout) and, at the first answer, switches back and logs ``limiter.redis_available``. Buckets counted
locally meanwhile stay local: Redis's buckets take over again as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import structlog

from server.domain import Decision, RateLimiterUnavailable, Rule
from server.limits.memory import MemoryRateLimiter
from server.limits.redis import DEFAULT_PREFIX, RedisRateLimiter, RedisUnavailable, open_redis

FailureMode = Literal["local", "deny"]
LimiterState = Literal["redis", "local", "deny"]
Bucket = tuple[Rule, str]

DEFAULT_PROBE_INTERVAL = 0.5

log = structlog.get_logger("mixauth.limiter")


class FailoverRateLimiter:
    """A ``RateLimiter`` on Redis that falls back to ``local`` (or refuses) while Redis does not answer.

    ``state`` ("redis", "local" or "deny") and ``failovers`` (how many times Redis was lost) are for
    metrics. ``close`` stops the probe; the Redis client belongs to whoever made it.
    """

    def __init__(
        self,
        redis: RedisRateLimiter,
        local: MemoryRateLimiter,
        *,
        failure: FailureMode = "local",
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
    ) -> None:
        if failure not in ("local", "deny"):
            raise ValueError(f"failure must be 'local' or 'deny', not {failure!r}")
        self.redis = redis
        self.local = local
        self.failure: FailureMode = failure
        self.probe_interval = probe_interval
        self.failovers = 0
        self._up = True
        self._closed = False
        self._down_since = 0.0
        self._probe: asyncio.Task[None] | None = None

    @property
    def state(self) -> LimiterState:
        return "redis" if self._up else self.failure

    async def hit(self, buckets: Sequence[Bucket]) -> Decision:
        if self._up:
            try:
                return await self.redis.hit(buckets)
            except RedisUnavailable as exc:
                self._mark_down(exc)
        if self.failure == "local":
            return await self.local.hit(buckets)
        raise RateLimiterUnavailable()

    async def refund(self, buckets: Sequence[Bucket]) -> None:
        if self._up:
            try:
                await self.redis.refund(buckets)
                return
            except RedisUnavailable as exc:
                self._mark_down(exc)
        if self.failure == "local":
            await self.local.refund(buckets)

    async def reset(self, buckets: Sequence[Bucket]) -> None:
        if self._up:
            try:
                await self.redis.reset(buckets)
                return
            except RedisUnavailable as exc:
                self._mark_down(exc)
        if self.failure == "local":
            await self.local.reset(buckets)

    async def ping(self) -> None:
        """Return when Redis answers now (whatever the state); RateLimiterUnavailable when it does not, and
        Redis is marked down if it was not already (for a readiness probe)."""
        try:
            await self.redis.ping()
        except RedisUnavailable as exc:
            self._mark_down(exc)
            raise RateLimiterUnavailable("The rate limiter's Redis does not answer.") from exc

    async def check(self) -> None:
        """Ping Redis once and mark it down if it does not answer, without raising: at start-up, so that an
        instance started while Redis is down says so at once rather than at its first request."""
        with contextlib.suppress(RateLimiterUnavailable):
            await self.ping()

    async def close(self) -> None:
        """Stop the probe, if one runs, and start none after."""
        self._closed = True
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    def _mark_down(self, exc: RedisUnavailable) -> None:
        if not self._up:
            return
        self._up = False
        self._down_since = time.monotonic()
        self.failovers += 1
        # The error's type only (RedisUnavailable carries nothing else): never the URL, which may hold a password.
        log.warning("limiter.redis_unavailable", error=str(exc), mode=self.failure, failovers=self.failovers)
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._wait_for_redis(), name="mixauth-redis-probe")

    async def _wait_for_redis(self) -> None:
        # The connections pooled before the outage are dead; dropping them here, off any request's path,
        # keeps each from failing one request after Redis is back.
        with contextlib.suppress(Exception):
            await self.redis.disconnect()
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.redis.ping()
            except RedisUnavailable:
                continue
            except Exception:  # never let the probe die while Redis is marked down
                log.exception("limiter.probe_failed")
                continue
            self._up = True
            log.info("limiter.redis_available", down_seconds=round(time.monotonic() - self._down_since, 3))
            return


@asynccontextmanager
async def open_redis_limiter(
    url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 0.1,  # noqa: ASYNC109 - the client's per-command timeout, not this call's deadline
    failure: FailureMode = "local",
    local: MemoryRateLimiter,
    probe_interval: float = DEFAULT_PROBE_INTERVAL,
) -> AsyncIterator[FailoverRateLimiter]:
    """The shared limiter on the Redis at ``url``, for the lifetime of the block.

    ``timeout`` (seconds) bounds each connect and each command; ``local`` counts while Redis is down in
    ``failure="local"`` mode. Redis is pinged once on entry: when it does not answer the limiter starts
    down (logged), and the block is entered all the same.
    """
    async with open_redis(url, timeout=timeout) as client:
        limiter = FailoverRateLimiter(
            RedisRateLimiter(client, prefix), local, failure=failure, probe_interval=probe_interval
        )
        try:
            await limiter.check()
            yield limiter
        finally:
            await limiter.close()
