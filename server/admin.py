"""User administration for operators (the ``python -m server`` admin commands): find, list, change, remove.

These run beside the server, against the same store, with no rate limit and no token: whoever can run them
can already read the database. They reuse the signup rules (``server.validation``) and the password hasher,
raise domain errors only, and log one structured event per change (``user.password_changed``,
``user.scope_changed``, ``user.deleted``) with ``via``; never a password or a hash.

A user is named by id, username or email, matched as sign-in matches them (``identifier_key``, ``email_key``).
A name that fits two different users (one's username is another's email, say) is refused rather than guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from server import validation
from server.config import SCOPE_PATTERN
from server.domain import InvalidField, MixauthError, User, UserStore
from server.hashing import PasswordHasher
from server.security import USER_ID_PATTERN, email_key, identifier_key

log = structlog.get_logger("mixauth.admin")

DEFAULT_PAGE_SIZE = 100


# Only the admin operations raise these two; they would join the tree in server.domain if an HTTP admin API
# ever did too (the statuses are what it would answer).
class NoSuchUser(MixauthError):
    """No user has the id, username or email an operator named."""

    status = 404
    code = "user_not_found"

    def __init__(self, identifier: str) -> None:
        super().__init__(f"no user matches {identifier!r}")
        self.identifier = identifier


class AmbiguousUser(MixauthError):
    """The name is one user's username and another's email (or id): refused rather than guessed."""

    status = 409
    code = "user_ambiguous"

    def __init__(self, identifier: str, users: Sequence[User]) -> None:
        ids = ", ".join(user.id for user in users)
        super().__init__(f"{identifier!r} matches more than one user ({ids}); name the user by id")
        self.identifier = identifier


async def find_user(store: UserStore, identifier: str) -> User:
    """The one user whose id, username or email is ``identifier``; NoSuchUser or AmbiguousUser otherwise."""
    key = identifier_key(identifier)
    candidates = [
        await store.get_by_id(key) if USER_ID_PATTERN.fullmatch(key) else None,
        await store.get_by_username(key) if key else None,
        await store.get_by_email(email_key(identifier, strict=False)) if key else None,
    ]
    found = list({user.id: user for user in candidates if user is not None}.values())
    if not found:
        raise NoSuchUser(identifier)
    if len(found) > 1:
        raise AmbiguousUser(identifier, found)
    return found[0]


async def list_users(
    store: UserStore, *, scope: str | None = None, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
) -> list[User]:
    """One page of users in id (creation) order; see ``UserStore.list_users``."""
    return await store.list_users(scope=scope, limit=limit, after=after)


async def change_password(
    store: UserStore, hasher: PasswordHasher, user: User, password: str, *, min_length: int, via: str
) -> None:
    """Give ``user`` a new password, under the same rules as signup, hashed at the hasher's current cost."""
    encoded = validation.clean_new_password(password, min_length)
    password_hash = await hasher.hash(encoded)
    if not await store.set_password_hash(user.id, password_hash):
        raise NoSuchUser(user.id)
    log.info("user.password_changed", user_id=user.id, via=via)


async def change_scope(store: UserStore, user: User, scope: Sequence[str], *, via: str) -> User:
    """Replace ``user``'s scopes (at least one, each a valid scope name); return the user as now stored."""
    cleaned = tuple(dict.fromkeys(scope))
    if not cleaned:
        raise InvalidField("At least one scope is required.")
    for name in cleaned:
        if not SCOPE_PATTERN.fullmatch(name):
            raise InvalidField(f"{name!r} is not a valid scope name (letters, digits and _ . : - only).")
    if not await store.set_scope(user.id, cleaned):
        raise NoSuchUser(user.id)
    log.info("user.scope_changed", user_id=user.id, scope=list(cleaned), previous_scope=list(user.scope), via=via)
    return dataclasses.replace(user, scope=cleaned)


async def remove_user(store: UserStore, user: User, *, via: str) -> None:
    """Delete ``user``; a server using ``store`` refuses their tokens on the next request (one using another
    connection to the same database, within a second: see server.storage.cached)."""
    if not await store.delete(user.id):
        raise NoSuchUser(user.id)
    log.info("user.deleted", user_id=user.id, via=via)


def created_at(user: User) -> datetime:
    """When the user was created: the first 4 bytes of an id are its creation time in seconds (UTC)."""
    return datetime.fromtimestamp(int(user.id[:8], 16), tz=UTC)
