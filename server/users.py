"""User administration: the one service the admin HTTP calls and the admin command line both change users through.

Each rule an administrator's change meets is written here once, so it holds for both doors:

- the last-admin guard: removing ``admin`` from, or deleting, the last user who holds it is LastAdmin (409),
  decided by the store in the same atomic write (``keep_an_admin``);
- a password an administrator sets follows the signup rules and revokes every token of the user, in the
  same write as the new hash (``UserChanges(revoke_tokens=True)``);
- a new username or email follows the signup rules, and is refused when taken or (a username) when it looks
  like a taken one: the store's unique keys decide (UsernameTaken, UsernameConfusable, EmailTaken);
- scope names, vendor names, plans and metadata are bounded and checked before any hashing.

Inputs are small frozen dataclasses (``UserListing``, ``UserUpdate``, ``PasswordReset``, ``UserCreation``)
that the web layer or the command line builds; the service raises domain errors only and logs one event per
fact (``user.updated`` with the changed field names and never their values, ``user.scope_changed``,
``user.password_changed`` and ``tokens.revoked`` with ``via``, ``user.deleted``); never a password or hash.

A user is named by the command line by id, username or email, matched as sign-in matches them; a name that
fits two different users is refused rather than guessed (AmbiguousUser). The HTTP calls name users by id.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server import validation
from server.config import vendor_name_problem
from server.domain import (
    AmbiguousUser,
    DeleteTicket,
    InvalidField,
    JsonObject,
    NoSuchDeleteTicket,
    NoSuchUser,
    User,
    UserChanges,
    UserQuery,
    UserSortField,
    UserStore,
)
from server.hashing import PasswordHasher
from server.security import USER_ID_PATTERN, email_key, identifier_key, username_skeleton
from server.service import UNOBSERVED, AuthPolicy, EventObserver, emit, register_user

# The contract's scope names: lower case, so that "Admin" is never mistaken for "admin".
SCOPE_NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
PLAN_MAX_CHARS = 128
DEFAULT_PAGE_SIZE = 100
# A deletion is one atomic write today (the user, their reset code and, with them, every token); a ticket
# counts it as one step so that clients written for Appmixer's multi-step deletions read it the same way.
DELETE_STEPS = 1
# Characters a person cannot see: refused in a plan as in a username.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

Clock = Callable[[], float]


@dataclass(eq=False, frozen=True, slots=True)
class UserListing:
    """Which users an admin lists or counts (GET /users, GET /users/count); see ``domain.UserQuery``.

    ``pattern`` is as the caller typed it: the service normalises it as usernames are keyed."""

    scope: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    vendor: tuple[str, ...] = ()
    is_active: tuple[bool, ...] = ()
    pattern: str = ""
    sort: UserSortField = "created"
    descending: bool = True
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0

    def query(self) -> UserQuery:
        return UserQuery(
            scope=self.scope,
            plan=self.plan,
            vendor=self.vendor,
            is_active=self.is_active,
            pattern=pattern_key(self.pattern),
            sort=self.sort,
            descending=self.descending,
            limit=self.limit,
            offset=self.offset,
        )


@dataclass(eq=False, frozen=True, slots=True)
class UserPage:
    """One page of a user listing, and how many users match in all."""

    users: tuple[User, ...]
    total: int


@dataclass(eq=False, frozen=True, slots=True)
class UserUpdate:
    """What an admin changes in one user (PUT /users/:id); a field left None stays as it is."""

    scope: tuple[str, ...] | None = None
    vendor: tuple[str, ...] | None = None
    metadata: JsonObject | None = None
    email: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    is_active: bool | None = None
    plan: str | None = None


@dataclass(eq=False, frozen=True, slots=True)
class PasswordReset:
    """POST /user/reset-password: the user named by ``email`` gets ``password``."""

    email: str
    password: str = field(repr=False)


@dataclass(eq=False, frozen=True, slots=True)
class UserCreation:
    """A user an operator creates (create-user): the signup rules, with the scopes given."""

    username: str
    email: str
    password: str = field(repr=False)
    scope: tuple[str, ...] = ("user",)


def pattern_key(pattern: str) -> str:
    """A listing's pattern normalised as username keys are (``identifier_key``), but not trimmed: a space at
    either end is part of the substring asked for."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", pattern).casefold())


def clean_scopes(scope: Sequence[str]) -> tuple[str, ...]:
    """At least one scope, each a lower-case name (``SCOPE_NAME_PATTERN``), repeats dropped, order kept."""
    cleaned = tuple(dict.fromkeys(scope))
    if not cleaned:
        raise InvalidField("At least one scope is required.")
    for name in cleaned:
        if not SCOPE_NAME_PATTERN.fullmatch(name):
            raise InvalidField(f"{name!r} is not a valid scope name (1 to 64 of a-z, 0-9, _ and - only).")
    return cleaned


def clean_vendors(vendor: Sequence[str]) -> tuple[str, ...]:
    """Vendor names (``config.vendor_name_problem``), repeats dropped; empty clears them."""
    cleaned = tuple(dict.fromkeys(vendor))
    for name in cleaned:
        if problem := vendor_name_problem(name):
            raise InvalidField(f"The vendor field is not valid: {problem}.")
    return cleaned


def clean_plan(plan: str) -> str:
    cleaned = plan.strip()
    if not cleaned or len(cleaned) > PLAN_MAX_CHARS:
        raise InvalidField(f"The plan must be 1 to {PLAN_MAX_CHARS} characters long.")
    if any(unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in cleaned):
        raise InvalidField("The plan must not contain control or invisible characters.")
    return cleaned


class UserAdministration:
    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        policy: AuthPolicy,
        observer: EventObserver = UNOBSERVED,
        wall_clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._policy = policy
        self._observer = observer
        self._wall_clock = wall_clock

    # Finding and listing.

    async def get(self, user_id: str) -> User:
        """The user with this id (24 lower-case hex characters); NoSuchUser for any other id."""
        user = await self._store.get_by_id(user_id) if USER_ID_PATTERN.fullmatch(user_id) else None
        if user is None:
            raise NoSuchUser("No user has this id.")
        return user

    async def find(self, identifier: str) -> User:
        """The one user whose id, username or email is ``identifier`` (in any case, trimmed); NoSuchUser or
        AmbiguousUser otherwise."""
        key = identifier_key(identifier)
        candidates = [
            await self._store.get_by_id(key) if USER_ID_PATTERN.fullmatch(key) else None,
            await self._store.get_by_username(key) if key else None,
            await self._store.get_by_email(email_key(identifier, strict=False)) if key else None,
        ]
        found = list({user.id: user for user in candidates if user is not None}.values())
        if not found:
            raise NoSuchUser(f"no user matches {identifier!r}")
        if len(found) > 1:
            raise AmbiguousUser(identifier, [user.id for user in found])
        return found[0]

    async def list_users(self, listing: UserListing) -> UserPage:
        """One page of the users ``listing`` selects, and how many it selects in all."""
        query = listing.query()
        users = await self._store.find(query)
        # An empty page past the end still says how many there are; a full first page needs the count too.
        total = await self._store.count(query)
        return UserPage(tuple(users), total)

    async def count_users(self, listing: UserListing) -> int:
        return await self._store.count(listing.query())

    async def page(
        self, *, scope: str | None = None, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> list[User]:
        """Up to ``limit`` users in id (creation) order after the id ``after`` (the command line's cursor)."""
        return await self._store.list_users(scope=scope, limit=limit, after=after)

    # Changing.

    async def create(self, creation: UserCreation, *, via: str) -> User:
        """A new user under the signup rules, with the scopes given, the default plan and vendor."""
        scope = clean_scopes(creation.scope)
        body = {"username": creation.username, "email": creation.email, "password": creation.password}
        return await register_user(self._store, self._hasher, self._policy, body, scope, via, self._observer)

    async def update(self, user_id: str, update: UserUpdate, *, via: str) -> User:
        """Apply ``update`` in one atomic write and return the user as now stored.

        Every value is checked before the password is hashed; the last-admin guard and the uniqueness of the
        username, its look-alikes and the email are decided by the store in the write itself."""
        before = await self.get(user_id)
        changes = await self._changes(update)
        after = await self._store.update(before.id, changes, keep_an_admin=True)
        if after is None:
            raise NoSuchUser("No user has this id.")
        self._log_changes(before, after, update, via)
        return after

    async def set_password(self, user_id: str, password: str, *, via: str) -> User:
        return await self.update(user_id, UserUpdate(password=password), via=via)

    async def set_scope(self, user_id: str, scope: Sequence[str], *, via: str) -> User:
        return await self.update(user_id, UserUpdate(scope=tuple(scope)), via=via)

    async def reset_password(self, reset: PasswordReset, *, via: str) -> User:
        """Give the user with this email a new password (revoking their tokens); NoSuchUser when none has it."""
        validation.clean_new_password(reset.password, self._policy.password_min_length)
        validation.check_raw_identifier("email", reset.email)
        user = await self._store.get_by_email(email_key(reset.email, strict=False))
        if user is None:
            raise NoSuchUser("No user has this email address.")
        return await self.update(user.id, UserUpdate(password=reset.password), via=via)

    async def delete(self, user_id: str, *, via: str) -> DeleteTicket:
        """Delete the user at once and keep a completed ticket. Their tokens name no user from then on, which
        ``AuthService.authenticate`` refuses: the deletion is their revocation (``user.deleted`` says so)."""
        if not USER_ID_PATTERN.fullmatch(user_id) or not await self._store.delete(user_id, keep_an_admin=True):
            raise NoSuchUser("No user has this id.")
        ticket = DeleteTicket(
            id=str(uuid.uuid4()),
            user_id=user_id,
            status="completed",
            steps_done=DELETE_STEPS,
            steps_total=DELETE_STEPS,
            updated=int(self._wall_clock() * 1000),
        )
        await self._store.save_delete_ticket(ticket)
        emit(self._observer, "info", "user.deleted", user_id=user_id, ticket=ticket.id, via=via)
        return ticket

    async def delete_status(self, user_id: str, ticket_id: str) -> DeleteTicket:
        """The ticket of a deletion of this user; NoSuchDeleteTicket for an unknown one or another user's."""
        ticket = await self._store.get_delete_ticket(ticket_id) if len(ticket_id) <= 64 else None
        if ticket is None or ticket.user_id != user_id:
            raise NoSuchDeleteTicket()
        return ticket

    async def _changes(self, update: UserUpdate) -> UserChanges:
        """The store's changes for ``update``: every value checked and keyed, then the password hashed."""
        values: dict[str, Any] = {}
        if update.username is not None:
            username = validation.clean_username(update.username)
            values.update(
                username=username, username_key=identifier_key(username), username_skeleton=username_skeleton(username)
            )
        if update.email is not None:
            email = validation.clean_email(update.email)
            values.update(email=email, email_key=email_key(email))
        if update.scope is not None:
            values["scope"] = clean_scopes(update.scope)
        if update.vendor is not None:
            values["vendor"] = clean_vendors(update.vendor)
        if update.plan is not None:
            values["plan"] = clean_plan(update.plan)
        if update.metadata is not None:
            values["metadata"] = validation.optional_metadata({"metadata": update.metadata}) or {}
        if update.is_active is not None:
            values["is_active"] = update.is_active
        if update.password is not None:
            encoded = validation.clean_new_password(update.password, self._policy.password_min_length)
            values.update(password_hash=await self._hasher.hash(encoded), revoke_tokens=True)
        return UserChanges(**values)

    def _log_changes(self, before: User, after: User, update: UserUpdate, via: str) -> None:
        changed = [
            name
            for name, differs in (
                ("username", after.username != before.username),
                ("email", after.email != before.email),
                ("scope", after.scope != before.scope),
                ("vendor", after.vendor != before.vendor),
                ("plan", after.plan != before.plan),
                ("metadata", dict(after.metadata or {}) != dict(before.metadata or {})),
                ("isActive", after.is_active != before.is_active),
                ("password", update.password is not None),
            )
            if differs
        ]
        if not changed:
            return
        emit(self._observer, "info", "user.updated", user_id=after.id, fields=changed, via=via)
        if "scope" in changed:
            # Who holds which privilege is the audit trail's point; scope names are no secret.
            emit(
                self._observer,
                "info",
                "user.scope_changed",
                user_id=after.id,
                scope=list(after.scope),
                previous_scope=list(before.scope),
                via=via,
            )
        if update.password is not None:
            emit(self._observer, "info", "user.password_changed", user_id=after.id, via=via)
            emit(
                self._observer,
                "info",
                "tokens.revoked",
                user_id=after.id,
                version=after.token_version,  # "version": a field named like a token is redacted from the log
                reason="password_set",
                via=via,
            )
