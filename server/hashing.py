"""Password hashing off the event loop: bcrypt runs on a dedicated, bounded pool of worker threads.

bcrypt releases the GIL while it works, so N workers use up to N cores while the event loop keeps serving
token checks. The wait for a worker is bounded too: at most ``queue_limit`` jobs wait beyond the ones
running, and past that a new job is refused at once with Overloaded (503), so a flood of sign-ins can
neither queue without end nor hold memory for requests that would time out anyway. The pool is owned by
the application and closed in its cleanup context.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from server import security
from server.domain import Overloaded

T = TypeVar("T")


def default_workers() -> int:
    """One thread per CPU but one, so that the event loop keeps a core of its own under a sign-in flood.

    Measured with ``python -m bench`` on 2 cores at cost 12: with 2 threads, a sign-in flood cut GET /user
    to 0.54 of its throughput and raised its p99 2.4-fold; with 1, to 0.92 and 1.06-fold, for half the
    sign-ins a second (4.1 against 8.0). Set HASH_WORKERS to the CPU count where sign-ins matter more.
    """
    return max(1, (os.cpu_count() or 1) - 1)


class PasswordHasher:
    def __init__(self, rounds: int, workers: int | None = None, queue_limit: int = 32) -> None:
        self.rounds = rounds
        self.workers = workers or default_workers()
        self.queue_limit = queue_limit
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bcrypt")
        self._dummy_hash = security.dummy_hash(rounds)

    @property
    def busy(self) -> int:
        """Workers hashing now."""
        return min(self._in_flight, self.workers)

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return max(0, self._in_flight - self.workers)

    async def hash(self, password: bytes) -> str:
        return await self._run(security.hash_password, password, self.rounds)

    async def verify(self, password: bytes, password_hash: str) -> bool:
        return await self._run(security.check_password, password, password_hash)

    async def waste(self, password: bytes) -> None:
        """Spend one check at the current cost, so a failure without a real hash takes as long as one with."""
        await self.verify(password, self._dummy_hash)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        if self._in_flight >= self.workers + self.queue_limit:
            raise Overloaded()
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
