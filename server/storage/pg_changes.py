"""Cross-instance cache invalidation for the PostgreSQL store: LISTEN on the users trigger's channel.

Every instance remembers users by id (server.storage.cached). A write by another instance, the admin command
line or psql fires the users trigger (server.storage.postgres, migration 2), which notifies
``mixauth_users`` with the user's id at commit; the listener here, on a connection of its own, makes every
watched cache forget that user, a few milliseconds after the commit.

Notifications are lost while the listener is not connected, so the listener also gives the caches their
change marker (``marker``):

- connected and heard from lately: the marker is the connection's number, unchanged between reconnections,
  so a cache keeps what it remembers and relies on the notifications;
- otherwise (not connected, reconnecting, or its connection silent past ``stale_after``): the marker is a new
  object on every read, so a cache forgets everything at each of its rechecks (once a second): nothing read
  more than a recheck ago is served.

It reconnects with exponential backoff (``min_backoff`` doubling up to ``max_backoff``), and on every
(re)connection forgets everything in the caches once LISTEN is in place: what changed in between was not
heard. A heartbeat (``SELECT 1`` every ``heartbeat`` seconds) finds a connection that died without the socket
saying so. ``connected``, ``reconnects`` and ``notifications`` are for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import structlog

from server.storage.cached import CachedUserStore
from server.storage.postgres import CHANGES_CHANNEL, CONNECTION_ERRORS, describe_error, unusable

log = structlog.get_logger("mixauth.storage.changes")


class ChangeListener:
    """Hears the users trigger on its own connection and makes the watched caches forget what changed."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        heartbeat: float = 1.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._heartbeat = heartbeat
        # Two heartbeats missed: the connection may be dead without the socket saying so yet.
        self._stale_after = 2 * heartbeat
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._caches: list[CachedUserStore] = []
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._connections = 0
        self._heard_at = float("-inf")
        self.notifications = 0

    @property
    def connected(self) -> bool:
        """True while LISTEN is in place on a live connection."""
        return self._connection is not None and not self._connection.is_closed()

    @property
    def reconnects(self) -> int:
        """How many times the listener connected again after losing its connection."""
        return max(0, self._connections - 1)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection (for an operator's pg_stat_activity, and tests)."""
        return None if self._connection is None else self._connection.get_server_pid()

    def watch(self, cache: CachedUserStore) -> None:
        """Keep ``cache`` honest: it forgets the users notified, and reads this listener's marker."""
        self._caches.append(cache)
        cache.watch(self.marker)

    async def marker(self) -> object:
        """The caches' change marker (module docstring): stable while the listener hears everything."""
        if self.connected and self._clock() - self._heard_at <= self._stale_after:
            return self._connections
        return object()

    async def connect(self) -> None:
        """Connect and LISTEN once; raise StorageError when the database cannot be reached."""
        try:
            await self._listen()
        except CONNECTION_ERRORS as exc:
            raise unusable("listen for changes on", self._url, exc) from None

    async def run(self) -> None:
        """Keep listening until cancelled: heartbeats, and reconnection with backoff when the connection is lost."""
        backoff = self._min_backoff
        while True:
            if not self.connected:
                await self._close()
                try:
                    await self._listen()
                except Exception as exc:  # whatever failed, try again later: never stop listening
                    reason = describe_error(exc, self._url)
                    log.warning("storage.changes.reconnect_failed", error=reason, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, self._max_backoff)
                    continue
                log.info("storage.changes.reconnected", reconnects=self.reconnects)
            backoff = self._min_backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._heartbeat)
            await self._beat()
            if not self.connected:
                log.warning("storage.changes.disconnected")

    async def close(self) -> None:
        await self._close()

    async def _listen(self) -> None:
        connection: asyncpg.Connection = await asyncpg.connect(
            self._url,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings={"application_name": "mixauth-listener"},
        )
        try:
            await connection.add_listener(CHANGES_CHANNEL, self._on_notification)
        except BaseException:
            connection.terminate()
            raise
        self._lost.clear()
        connection.add_termination_listener(self._on_termination)
        self._connection = connection
        self._connections += 1
        self._heard_at = self._clock()
        # Whatever changed while nobody listened went unheard.
        for cache in self._caches:
            cache.forget_all()

    async def _beat(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closed():
            return
        try:
            await connection.fetchval("SELECT 1", timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            log.warning("storage.changes.heartbeat_failed", error=describe_error(exc, self._url))
            connection.terminate()
            return
        self._heard_at = self._clock()

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await connection.close(timeout=self._timeout)
            except CONNECTION_ERRORS:
                connection.terminate()

    def _on_termination(self, connection: object) -> None:
        self._lost.set()

    def _on_notification(self, connection: object, pid: int, channel: str, payload: object) -> None:
        self.notifications += 1
        self._heard_at = self._clock()
        user_id = str(payload)
        for cache in self._caches:
            if user_id:
                cache.forget(user_id)
            else:
                cache.forget_all()


@asynccontextmanager
async def listen_for_changes(
    url: str,
    cache: CachedUserStore,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - the driver's, for connecting and each statement
    heartbeat: float = 1.0,
) -> AsyncIterator[ChangeListener]:
    """Listen for changes to users on the database at ``url`` and keep ``cache`` honest (see the module
    docstring) until exit. Connects once before yielding (StorageError when it cannot), reconnecting on its
    own afterwards."""
    listener = ChangeListener(url, timeout=timeout, heartbeat=heartbeat)
    listener.watch(cache)
    await listener.connect()
    task = asyncio.create_task(listener.run(), name="mixauth-pg-changes")
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()
