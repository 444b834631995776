"""Password hashing off the event loop: bcrypt runs on a dedicated, bounded pool of worker threads.

bcrypt releases the GIL while it works, so N workers use up to N cores while the event loop keeps serving
token checks. The pool is owned by the application and closed in its cleanup context.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from server import security


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class PasswordHasher:
    def __init__(self, rounds: int, workers: int | None = None) -> None:
        self.rounds = rounds
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="bcrypt")
        self._dummy_hash = security.dummy_hash(rounds)

    async def hash(self, password: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, security.hash_password, password, self.rounds)

    async def verify(self, password: bytes, password_hash: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, security.check_password, password, password_hash)

    async def waste(self, password: bytes) -> None:
        """Spend one check at the current cost, so a failure without a real hash takes as long as one with."""
        await self.verify(password, self._dummy_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
