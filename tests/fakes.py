"""In-memory fakes of the domain Protocols, for tests of the layers above storage."""

from __future__ import annotations

import dataclasses
from typing import Any

from server.domain import EmailTaken, NewUser, User, UsernameConfusable, UsernameTaken


class FakeUserStore:
    """A UserStore in dicts, with the uniqueness a real backend enforces: username key, username skeleton
    (look-alikes) and email key."""

    def __init__(self) -> None:
        self.by_id: dict[str, User] = {}
        self._ids_by_username: dict[str, str] = {}
        self._ids_by_skeleton: dict[str, str] = {}
        self._ids_by_email: dict[str, str] = {}

    async def add(self, user: NewUser) -> User:
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

    async def delete(self, user_id: str) -> bool:
        user = self.by_id.pop(user_id, None)
        if user is None:
            return False
        self._ids_by_username = {key: uid for key, uid in self._ids_by_username.items() if uid != user_id}
        self._ids_by_skeleton = {key: uid for key, uid in self._ids_by_skeleton.items() if uid != user_id}
        self._ids_by_email = {key: uid for key, uid in self._ids_by_email.items() if uid != user_id}
        return True

    def _replace(self, user_id: str, **changes: Any) -> bool:
        if user_id not in self.by_id:
            return False
        self.by_id[user_id] = dataclasses.replace(self.by_id[user_id], **changes)
        return True

    def only_user(self) -> User:
        (user,) = self.by_id.values()
        return user
