"""In-memory fakes of the domain Protocols, for tests of the layers above storage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from server.domain import (
    DELETE_TICKET_RETENTION_MS,
    DeleteTicket,
    EmailTaken,
    LastAdmin,
    NewUser,
    User,
    UserChanges,
    UserIdTaken,
    UsernameConfusable,
    UsernameTaken,
    UserQuery,
)


class FakeUserStore:
    """A UserStore in dicts, with the uniqueness a real backend enforces: username key, username skeleton
    (look-alikes) and email key.

    No method awaits between reading and writing, so each is as atomic as a backend's one statement."""

    def __init__(self) -> None:
        self.by_id: dict[str, User] = {}
        self._ids_by_username: dict[str, str] = {}
        self._ids_by_skeleton: dict[str, str] = {}
        self._ids_by_email: dict[str, str] = {}
        self._reset_codes: dict[str, tuple[str, int]] = {}  # user id -> (code hash, expires at)
        self._tickets: dict[str, DeleteTicket] = {}

    async def add(self, user: NewUser) -> User:
        if user.id in self.by_id:
            raise UserIdTaken()
        if user.username_key in self._ids_by_username:
            raise UsernameTaken()
        if user.username_skeleton in self._ids_by_skeleton:
            raise UsernameConfusable()
        if user.email_key in self._ids_by_email:
            raise EmailTaken()
        stored = user.as_user()
        self.by_id[user.id] = stored
        self._ids_by_username[user.username_key] = user.id
        self._ids_by_skeleton[user.username_skeleton] = user.id
        self._ids_by_email[user.email_key] = user.id
        return stored

    async def add_many(self, users: Sequence[NewUser]) -> list[User]:
        ids, usernames = set(self.by_id), set(self._ids_by_username)
        skeletons, emails = set(self._ids_by_skeleton), set(self._ids_by_email)
        for user in users:
            for key, taken, error in (
                (user.id, ids, UserIdTaken),
                (user.username_key, usernames, UsernameTaken),
                (user.username_skeleton, skeletons, UsernameConfusable),
                (user.email_key, emails, EmailTaken),
            ):
                if key in taken:
                    raise error()
                taken.add(key)
        return [await self.add(user) for user in users]

    async def get_by_id(self, user_id: str) -> User | None:
        return self.by_id.get(user_id)

    async def get_by_username(self, username_key: str) -> User | None:
        user_id = self._ids_by_username.get(username_key)
        return None if user_id is None else self.by_id[user_id]

    async def get_by_email(self, email_key: str) -> User | None:
        user_id = self._ids_by_email.get(email_key)
        return None if user_id is None else self.by_id[user_id]

    async def list_users(self, *, scope: str | None = None, limit: int = 100, after: str | None = None) -> list[User]:
        users = sorted(self.by_id.values(), key=lambda user: user.id)
        chosen = [u for u in users if (after is None or u.id > after) and (scope is None or scope in u.scope)]
        return chosen[:limit]

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return self._replace(user_id, password_hash=password_hash)

    async def set_scope(self, user_id: str, scope: tuple[str, ...]) -> bool:
        return self._replace(user_id, scope=scope)

    async def delete(self, user_id: str, *, keep_an_admin: bool = False) -> bool:
        user = self.by_id.get(user_id)
        if user is None:
            return False
        if keep_an_admin and self._is_last_admin(user):
            raise LastAdmin()
        del self.by_id[user_id]
        self._ids_by_username = {key: uid for key, uid in self._ids_by_username.items() if uid != user_id}
        self._ids_by_skeleton = {key: uid for key, uid in self._ids_by_skeleton.items() if uid != user_id}
        self._ids_by_email = {key: uid for key, uid in self._ids_by_email.items() if uid != user_id}
        self._reset_codes.pop(user_id, None)
        return True

    async def find(self, query: UserQuery) -> list[User]:
        username_keys, email_keys = _by_id(self._ids_by_username), _by_id(self._ids_by_email)

        def sort_key(user: User) -> str | int:
            if query.sort == "username":
                return username_keys[user.id]
            if query.sort == "email":
                return email_keys[user.id]
            return user.created

        # Two stable sorts: by id ascending, then by the field in the query's direction; ties keep id order.
        chosen = sorted(self._matching(query), key=lambda user: user.id)
        chosen.sort(key=sort_key, reverse=query.descending)
        return chosen[query.offset : query.offset + query.limit]

    async def count(self, query: UserQuery) -> int:
        return len(self._matching(query))

    async def update(self, user_id: str, changes: UserChanges, *, keep_an_admin: bool = False) -> User | None:
        user = self.by_id.get(user_id)
        if user is None:
            return None
        if changes.username_key is not None and self._ids_by_username.get(changes.username_key, user_id) != user_id:
            raise UsernameTaken()
        if (
            changes.username_skeleton is not None
            and self._ids_by_skeleton.get(changes.username_skeleton, user_id) != user_id
        ):
            raise UsernameConfusable()
        if changes.email_key is not None and self._ids_by_email.get(changes.email_key, user_id) != user_id:
            raise EmailTaken()
        if keep_an_admin and changes.removes_admin and self._is_last_admin(user):
            raise LastAdmin()
        replacements: dict[str, Any] = {
            name: getattr(changes, name)
            for name in ("scope", "vendor", "metadata", "email", "username", "password_hash", "is_active", "plan")
            if getattr(changes, name) is not None
        }
        if changes.revoke_tokens:
            replacements["token_version"] = user.token_version + 1
        if changes.username_key is not None:
            self._ids_by_username = {key: uid for key, uid in self._ids_by_username.items() if uid != user_id}
            self._ids_by_username[changes.username_key] = user_id
            self._ids_by_skeleton = {key: uid for key, uid in self._ids_by_skeleton.items() if uid != user_id}
            if changes.username_skeleton is not None:
                self._ids_by_skeleton[changes.username_skeleton] = user_id
        if changes.email_key is not None:
            self._ids_by_email = {key: uid for key, uid in self._ids_by_email.items() if uid != user_id}
            self._ids_by_email[changes.email_key] = user_id
        updated = dataclasses.replace(user, **replacements)
        self.by_id[user_id] = updated
        return updated

    async def revoke_tokens(self, user_id: str) -> int | None:
        user = self.by_id.get(user_id)
        if user is None:
            return None
        self.by_id[user_id] = dataclasses.replace(user, token_version=user.token_version + 1)
        return user.token_version + 1

    async def put_reset_code(self, user_id: str, code_hash: str, expires_at: int) -> bool:
        if user_id not in self.by_id:
            return False
        self._reset_codes[user_id] = (code_hash, expires_at)
        return True

    async def consume_reset_code(self, code_hash: str, now: int) -> str | None:
        for user_id, (stored_hash, expires_at) in self._reset_codes.items():
            if stored_hash == code_hash:
                del self._reset_codes[user_id]
                return user_id if now < expires_at else None
        return None

    async def save_delete_ticket(self, ticket: DeleteTicket) -> None:
        self._tickets[ticket.id] = ticket
        oldest = ticket.updated - DELETE_TICKET_RETENTION_MS
        self._tickets = {key: kept for key, kept in self._tickets.items() if kept.updated >= oldest}

    async def get_delete_ticket(self, ticket_id: str) -> DeleteTicket | None:
        return self._tickets.get(ticket_id)

    def _matching(self, query: UserQuery) -> list[User]:
        username_keys = _by_id(self._ids_by_username)
        return [
            user
            for user in self.by_id.values()
            if all(name in user.scope for name in query.scope)
            and all(name in user.vendor for name in query.vendor)
            and all(user.plan == plan for plan in query.plan)
            and all(user.is_active == active for active in query.is_active)
            and query.pattern in username_keys[user.id]
        ]

    def _is_last_admin(self, user: User) -> bool:
        return user.is_admin and not any(other.is_admin for other in self.by_id.values() if other.id != user.id)

    def _replace(self, user_id: str, **changes: Any) -> bool:
        if user_id not in self.by_id:
            return False
        self.by_id[user_id] = dataclasses.replace(self.by_id[user_id], **changes)
        return True

    def only_user(self) -> User:
        (user,) = self.by_id.values()
        return user


def _by_id(ids_by_key: dict[str, str]) -> dict[str, str]:
    """Each user's key, from a map of keys to user ids."""
    return {user_id: key for key, user_id in ids_by_key.items()}
