"""A UserStore that remembers users by id, in front of any other UserStore.

Every authenticated request loads its user by id; with SQLite that is a hop to the database thread and
back (0.2 to 0.3 ms), so users found by id are remembered, at most ``max_users`` of them, the least
recently loaded forgotten first. The cache never outlives a change:

- a write made through this store (any change, a revocation, a deletion) forgets the user at once, so the
  very next request sees it (a revoked token is refused on the next request), and a read that raced with
  the write is not remembered;
- a write made by another process (the admin command line, another server on the same database) is
  noticed through ``changes``, a cheap marker that differs whenever the database may have changed
  (SQLite's ``PRAGMA data_version``). It is read at most once per ``recheck`` seconds, before a request
  that uses the cache, and a new value forgets everything: such a change is seen within ``recheck``;
- or it is told: ``forget(user_id)`` and ``forget_all()`` are for a listener that hears of other processes'
  writes as they happen (PostgreSQL's notifications, server.storage.pg_changes), which also installs its own
  marker with ``watch`` (one that differs on every read while the listener cannot hear, so that nothing
  older than ``recheck`` is served then).

``remembered`` answers without waiting when it can (no check for outside changes due, the user remembered):
for the requests whose token was checked before, which need no wait at all. ``get_fresh_by_id`` reads one
user through to the store and remembers what it read: for a reader that knows its copy is stale (a token
carrying a newer ``token_version`` than the remembered user's was issued after a change this cache has not
noticed yet).

Lookups by username or email (sign-in, which costs a bcrypt check anyway), listings, counts, reset codes
and delete tickets go straight to the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from server.domain import DeleteTicket, NewUser, User, UserChanges, UserQuery, UserStore

ChangeMarker = Callable[[], Awaitable[object]]


async def unchanging() -> object:
    """The marker of a store nobody else writes to, or whose changes arrive through ``forget``."""
    return None


class CachedUserStore:
    def __init__(
        self,
        store: UserStore,
        changes: ChangeMarker = unchanging,
        *,
        max_users: int = 10_000,
        recheck: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._changes = changes
        self._max_users = max_users
        self._recheck = recheck
        self._clock = clock
        self._users: OrderedDict[str, User] = OrderedDict()
        # Bumped by every write and every outside change; a read that began under another generation is
        # not remembered, since what it read may predate the change.
        self._generation = 0
        self._marker: object = None
        self._next_check = float("-inf")

    def __len__(self) -> int:
        return len(self._users)

    async def get_by_id(self, user_id: str) -> User | None:
        if self._clock() >= self._next_check:  # checked here too: most reads are of a remembered user
            await self._notice_outside_changes()
        user = self._users.get(user_id)
        if user is not None:
            return user
        generation = self._generation
        user = await self._store.get_by_id(user_id)
        if user is not None and generation == self._generation:
            if len(self._users) >= self._max_users:
                self._users.popitem(last=False)
            self._users[user_id] = user
        return user

    def remembered(self, user_id: str) -> User | None:
        """The user as remembered, without waiting: None when not remembered, or when the check for outside
        changes is due (``get_by_id`` makes it)."""
        if self._clock() >= self._next_check:
            return None
        return self._users.get(user_id)

    async def get_fresh_by_id(self, user_id: str) -> User | None:
        """The user as stored now, never as remembered; the answer replaces what was remembered."""
        self._forget(user_id)
        return await self.get_by_id(user_id)

    async def get_by_username(self, username_key: str) -> User | None:
        return await self._store.get_by_username(username_key)

    async def get_by_email(self, email_key: str) -> User | None:
        return await self._store.get_by_email(email_key)

    async def add(self, user: NewUser) -> User:
        return await self._store.add(user)

    async def add_many(self, users: Sequence[NewUser]) -> list[User]:
        try:
            return await self._store.add_many(users)
        finally:
            # Unknown ids are not remembered, but a read that raced with the write must not be either.
            self._generation += 1

    async def list_users(self, *, scope: str | None = None, limit: int = 100, after: str | None = None) -> list[User]:
        return await self._store.list_users(scope=scope, limit=limit, after=after)

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        try:
            return await self._store.set_password_hash(user_id, password_hash)
        finally:
            self._forget(user_id)

    async def set_scope(self, user_id: str, scope: tuple[str, ...]) -> bool:
        try:
            return await self._store.set_scope(user_id, scope)
        finally:
            self._forget(user_id)

    async def delete(self, user_id: str, *, keep_an_admin: bool = False) -> bool:
        try:
            return await self._store.delete(user_id, keep_an_admin=keep_an_admin)
        finally:
            self._forget(user_id)

    async def find(self, query: UserQuery) -> list[User]:
        return await self._store.find(query)

    async def count(self, query: UserQuery) -> int:
        return await self._store.count(query)

    async def update(self, user_id: str, changes: UserChanges, *, keep_an_admin: bool = False) -> User | None:
        try:
            return await self._store.update(user_id, changes, keep_an_admin=keep_an_admin)
        finally:
            self._forget(user_id)

    async def revoke_tokens(self, user_id: str) -> int | None:
        try:
            return await self._store.revoke_tokens(user_id)
        finally:
            self._forget(user_id)

    async def put_reset_code(self, user_id: str, code_hash: str, expires_at: int) -> bool:
        return await self._store.put_reset_code(user_id, code_hash, expires_at)

    async def consume_reset_code(self, code_hash: str, now: int) -> str | None:
        return await self._store.consume_reset_code(code_hash, now)

    async def save_delete_ticket(self, ticket: DeleteTicket) -> None:
        await self._store.save_delete_ticket(ticket)

    async def get_delete_ticket(self, ticket_id: str) -> DeleteTicket | None:
        return await self._store.get_delete_ticket(ticket_id)

    def watch(self, changes: ChangeMarker) -> None:
        """Read ``changes`` from now on to notice outside changes; forgets everything (and reads it first)."""
        self._changes = changes
        self.forget_all()
        self._next_check = float("-inf")

    def forget(self, user_id: str) -> None:
        """Forget one user, changed elsewhere: the next read loads it, and a read in flight is not kept."""
        self._forget(user_id)

    def forget_all(self) -> None:
        """Forget every user (changes elsewhere went unheard): the next reads load them again."""
        self._generation += 1
        self._users.clear()

    def _forget(self, user_id: str) -> None:
        self._generation += 1
        self._users.pop(user_id, None)

    async def _notice_outside_changes(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._recheck
        marker = await self._changes()
        if marker != self._marker:
            self._marker = marker
            self.forget_all()
