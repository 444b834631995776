"""The vocabulary every layer shares: users, principals, errors and the storage and limiter Protocols.

The error tree (each class carries its HTTP status and a stable machine-readable code; the web layer maps
them to the contract's JSON body by walking the class's MRO, so a new subclass needs no new mapping):

    MixauthError (500 internal_error)
    ├── InvalidRequest (400 invalid_request)
    │   ├── MalformedBody (400 malformed_body)
    │   ├── BodyNotAnObject (400 invalid_body)
    │   ├── InvalidField (400 invalid_field)
    │   ├── MissingField (400 missing_field)
    │   ├── InvalidUsername (400 invalid_username)
    │   ├── InvalidEmail (400 invalid_email)
    │   ├── PasswordTooShort (400 password_too_short)
    │   ├── PasswordTooLong (400 password_too_long)
    │   ├── InvalidParameter (400 invalid_parameter)
    │   ├── InvalidForwardedFor (400 invalid_forwarded_for)
    │   └── InvalidResetCode (400 invalid_reset_code)
    ├── AuthenticationRequired (401 authentication_required)
    │   └── InvalidToken (401 invalid_token)
    ├── InsufficientScope (403 insufficient_scope)
    ├── InvalidCredentials (403 invalid_credentials)
    ├── NotFound (404 not_found)
    │   ├── NoSuchUser (404 user_not_found)
    │   └── NoSuchDeleteTicket (404 delete_ticket_not_found)
    ├── Conflict (409 conflict)
    │   ├── LastAdmin (409 last_admin)
    │   ├── AmbiguousUser (409 user_ambiguous)
    │   ├── UsernameTaken (409 username_taken)
    │   │   └── UsernameConfusable (409 username_confusable)
    │   ├── EmailTaken (409 email_taken)
    │   └── UserIdTaken (409 user_id_taken)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    │   └── UnsupportedContentEncoding (415 unsupported_content_encoding)
    ├── RateLimited (429 rate_limited)
    │   ├── SignupEmailRateLimited (429 signup_email_rate_limited)
    │   ├── SignupIpRateLimited (429 signup_ip_rate_limited)
    │   ├── SignInThrottled (429 signin_throttled)
    │   ├── ForgotPasswordEmailRateLimited (429 forgot_password_email_rate_limited)
    │   ├── ForgotPasswordIpRateLimited (429 forgot_password_ip_rate_limited)
    │   └── PasswordResetIpRateLimited (429 password_reset_ip_rate_limited)
    ├── Unavailable (503 unavailable)
    │   ├── Overloaded (503 overloaded)
    │   ├── DatabaseUnavailable (503 database_unavailable)
    │   └── RateLimiterUnavailable (503 rate_limiter_unavailable)
    └── NotReady (503 not_ready)
"""

from __future__ import annotations

import math
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

JsonObject = Mapping[str, Any]

ADMIN_SCOPE = "admin"


def created_from_id(user_id: str) -> int:
    """Milliseconds since the epoch that a user id's first 4 bytes (whole seconds) name; 0 for a malformed id.

    The ``created`` of users stored before ``created`` was (and of users added without one)."""
    try:
        return int(user_id[:8], 16) * 1000
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class User:
    """A stored user. The password hash never leaves the service layer and is kept out of reprs.

    ``created`` is in milliseconds since the epoch (ids carry whole seconds only); left out, it is the id's.
    ``vendor`` is a list of names, empty when none.

    ``token_version`` is the user's revocation state: a token is valid only while the version it carries (a
    claim beside the contract's four; a token without it carries 0) equals the stored one, and revoking
    every token of the user is one atomic increment. Chosen over a "tokens valid after" timestamp because:

    - it is exact by construction: a token issued before the increment carries the old number, one issued
      after carries the new, however close together (a timestamp ties within its resolution, and a
      change-password answer issues its fresh token in the same millisecond as the revocation);
    - it does not depend on clocks: servers whose clocks differ, or a clock stepped back, neither revive a
      revoked token nor refuse a fresh one;
    - it costs nothing on ``GET /user``: the user is loaded anyway, and the check is an integer comparison;
    - it is one integer to export and import, and tokens issued before the move are judged the same after it.

    A token whose version is greater than the stored one was issued after a change this copy of the user has
    not seen yet (a cache in another process): the reader should reload the user once before refusing.
    """

    id: str
    username: str
    email: str
    scope: tuple[str, ...]
    plan: str
    is_active: bool
    password_hash: str = field(repr=False)
    metadata: JsonObject | None = None
    vendor: tuple[str, ...] = ()
    created: int = -1
    token_version: int = 0

    def __post_init__(self) -> None:
        if self.created < 0:
            object.__setattr__(self, "created", created_from_id(self.id))

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scope


@dataclass(frozen=True, slots=True)
class NewUser:
    """What the service hands the store to insert; keys are the normalised, unique forms."""

    id: str
    username: str
    username_key: str
    username_skeleton: str
    email: str
    email_key: str
    password_hash: str = field(repr=False)
    scope: tuple[str, ...]
    plan: str
    metadata: JsonObject | None = None
    # What an import carries over; a signup leaves the defaults (inactive, no vendor, version 0, and the
    # id's creation second when ``created`` is not given).
    vendor: tuple[str, ...] = ()
    created: int | None = None
    is_active: bool = False
    token_version: int = 0

    def as_user(self) -> User:
        """The User a store holds for this one right after adding it."""
        return User(
            id=self.id,
            username=self.username,
            email=self.email,
            scope=self.scope,
            plan=self.plan,
            is_active=self.is_active,
            password_hash=self.password_hash,
            metadata=self.metadata,
            vendor=self.vendor,
            created=created_from_id(self.id) if self.created is None else self.created,
            token_version=self.token_version,
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the user a valid bearer token names, with the scopes stored for them now."""

    user: User

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.user.scope)

    def has_any_scope(self, wanted: frozenset[str]) -> bool:
        return not self.scopes.isdisjoint(wanted)


class MixauthError(Exception):
    """Base of every error the service raises on purpose; the message is one sentence for a person."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "An unexpected error occurred."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def headers(self) -> Mapping[str, str]:
        return {}


class InvalidRequest(MixauthError):
    status = 400
    code = "invalid_request"
    default_message = "The request is not valid."


class MalformedBody(InvalidRequest):
    code = "malformed_body"
    default_message = "The request body is not valid JSON."


class BodyNotAnObject(InvalidRequest):
    code = "invalid_body"
    default_message = "The request body must be a JSON object."


class InvalidField(InvalidRequest):
    code = "invalid_field"


class MissingField(InvalidRequest):
    code = "missing_field"


class InvalidUsername(InvalidRequest):
    code = "invalid_username"


class InvalidEmail(InvalidRequest):
    code = "invalid_email"


class PasswordTooShort(InvalidRequest):
    code = "password_too_short"


class PasswordTooLong(InvalidRequest):
    code = "password_too_long"


class InvalidParameter(InvalidRequest):
    """A query parameter is malformed, or names a field the call does not know; the message names it."""

    code = "invalid_parameter"


class InvalidForwardedFor(InvalidRequest):
    """A trusted proxy sent an X-Forwarded-For header that does not parse as a list of IP addresses."""

    code = "invalid_forwarded_for"
    default_message = "The X-Forwarded-For header is malformed."


class AuthenticationRequired(MixauthError):
    status = 401
    code = "authentication_required"
    default_message = "Authentication is required: send a valid Bearer token."

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="mixauth"'}


class InvalidToken(AuthenticationRequired):
    """The token is malformed, tampered, expired, wrongly signed or names no user.

    The message is the same whatever the cause, so a caller learns nothing about why; the cause goes to
    the log as ``reason``.
    """

    code = "invalid_token"
    default_message = "The access token is invalid or has expired."

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="mixauth", error="invalid_token"'}


class InsufficientScope(MixauthError):
    status = 403
    code = "insufficient_scope"
    default_message = "Your access token does not have the scope this operation requires."


class InvalidCredentials(MixauthError):
    status = 403
    code = "invalid_credentials"
    default_message = "Invalid username, email or password."


class NotFound(MixauthError):
    status = 404
    code = "not_found"
    default_message = "No resource matches this path."


class NoSuchUser(NotFound):
    """No user has the id, username or email named (the admin calls and the command line)."""

    code = "user_not_found"
    default_message = "No user matches."


class NoSuchDeleteTicket(NotFound):
    """No delete ticket has this id for this user (never made, or forgotten after its retention)."""

    code = "delete_ticket_not_found"
    default_message = "No delete ticket has this id for this user."


class Conflict(MixauthError):
    status = 409
    code = "conflict"
    default_message = "The resource already exists."


class LastAdmin(Conflict):
    """The change would leave no user holding the ``admin`` scope."""

    code = "last_admin"
    default_message = "This is the last user with the admin scope: the change would leave no admin."


class AmbiguousUser(Conflict):
    """A name an operator gave is one user's username and another's email (or id): refused, not guessed."""

    code = "user_ambiguous"

    def __init__(self, identifier: str, user_ids: Sequence[str]) -> None:
        super().__init__(f"{identifier!r} matches more than one user ({', '.join(user_ids)}); name the user by id")
        self.identifier = identifier


class UsernameTaken(Conflict):
    code = "username_taken"
    default_message = "This username is already taken."


class UsernameConfusable(UsernameTaken):
    """The username looks like one already taken (their UTS #39 confusable skeletons are equal)."""

    code = "username_confusable"
    default_message = "This username is too similar to one already taken."


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "A user with this email address already exists."


class UserIdTaken(Conflict):
    """A user added with an id of their own (an import) whose id another user already has."""

    code = "user_id_taken"
    default_message = "A user with this id already exists."


class UnsupportedMediaType(MixauthError):
    status = 415
    code = "unsupported_media_type"
    default_message = "The request body must be JSON (Content-Type: application/json)."


class UnsupportedContentEncoding(UnsupportedMediaType):
    code = "unsupported_content_encoding"
    default_message = "The request body must not be compressed (Content-Encoding: identity only)."


class RateLimited(MixauthError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests. Please try again later."

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> Mapping[str, str]:
        # Whole seconds, rounded up; the epsilon keeps 72.0000000001 s of float noise from becoming 73.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after - 1e-6)))}


class SignupEmailRateLimited(RateLimited):
    code = "signup_email_rate_limited"
    default_message = "Too many signup attempts for this email address. Please try again later."


class SignupIpRateLimited(RateLimited):
    code = "signup_ip_rate_limited"
    default_message = "Too many signup attempts from your IP address. Please try again later."


class SignInThrottled(RateLimited):
    code = "signin_throttled"
    default_message = "Too many failed sign-in attempts. Please try again later."


class Unavailable(MixauthError):
    """A 503 that tells the client when to try again (Retry-After): nothing was done, and the same request may
    be repeated."""

    status = 503
    code = "unavailable"
    default_message = "The service is unavailable. Please try again shortly."
    retry_after = 1

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Overloaded(Unavailable):
    """Password hashing is saturated: the request was refused at once rather than queued without end."""

    code = "overloaded"
    default_message = "The server is busy. Please try again shortly."


class NotReady(MixauthError):
    """The readiness probe: the database did not answer."""

    status = 503
    code = "not_ready"
    default_message = "The database does not answer."


class DatabaseUnavailable(Unavailable):
    """The database (PostgreSQL) cannot be reached or stopped answering mid-request: nothing was changed
    that the caller was told about, and the same request may be sent again."""

    code = "database_unavailable"
    default_message = "The database does not answer. Please try again shortly."


class RateLimiterUnavailable(Unavailable):
    """The shared rate limiter (Redis) does not answer, and the server is set to refuse rate-limited calls
    rather than count them on its own (RATE_LIMIT_REDIS_FAILURE=deny)."""

    code = "rate_limiter_unavailable"
    default_message = "The rate limiter is unavailable. Please try again shortly."


UserSortField = Literal["created", "username", "email"]
USER_SORT_FIELDS: tuple[UserSortField, ...] = ("created", "username", "email")


@dataclass(frozen=True, slots=True)
class UserQuery:
    """Which users to list or count, in what order, and which page (offset paging).

    Filters: each field holds the values of its filters, and every value must hold (``scope=("a", "b")``:
    users holding both). ``scope`` and ``vendor`` match a name held in the user's list; ``plan`` and
    ``is_active`` match the value exactly. ``pattern`` is a literal substring of the username's key (no
    wildcards of any kind), so the caller passes it normalised as keys are (``identifier_key`` without
    the trim); empty matches every user.

    Order: ``sort`` (``created``, or ``username`` and ``email`` by their keys, which compare by code point,
    a database's binary collation), then id ascending for ties, so pages never overlap or skip. ``count``
    ignores the order, ``limit`` and ``offset``.
    """

    scope: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    vendor: tuple[str, ...] = ()
    is_active: tuple[bool, ...] = ()
    pattern: str = ""
    sort: UserSortField = "created"
    descending: bool = True
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.sort not in USER_SORT_FIELDS:
            raise ValueError(f"cannot sort users by {self.sort!r}")
        if self.limit < 0 or self.offset < 0:
            raise ValueError(f"limit and offset must not be negative, got {self.limit} and {self.offset}")


@dataclass(frozen=True, slots=True)
class UserChanges:
    """What to change in one user, in one atomic write; a field left None stays as it is.

    A new ``email`` or ``username`` comes with its key (the unique, normalised form), and a new username with
    its confusable skeleton too, as in NewUser.
    ``metadata`` replaces the stored object (pass ``{}`` to clear it). ``revoke_tokens`` also revokes every
    token of the user (see ``User.token_version``), in the same write: a new password and the revocation
    land together or not at all.
    """

    scope: tuple[str, ...] | None = None
    vendor: tuple[str, ...] | None = None
    metadata: JsonObject | None = None
    email: str | None = None
    email_key: str | None = None
    username: str | None = None
    username_key: str | None = None
    username_skeleton: str | None = None
    password_hash: str | None = field(default=None, repr=False)
    is_active: bool | None = None
    plan: str | None = None
    revoke_tokens: bool = False

    def __post_init__(self) -> None:
        if (self.email is None) != (self.email_key is None):
            raise ValueError("a new email comes with its key")
        if not (self.username is None) == (self.username_key is None) == (self.username_skeleton is None):
            raise ValueError("a new username comes with its key and its skeleton")

    @property
    def removes_admin(self) -> bool:
        """True when the change leaves the user without the ``admin`` scope (whether they held it or not)."""
        return self.scope is not None and ADMIN_SCOPE not in self.scope


DeleteStatus = Literal["in-progress", "completed", "failed"]

# How long a delete ticket stays readable after its last update; the contract asks for at least 24 hours.
DELETE_TICKET_RETENTION_MS = 48 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class DeleteTicket:
    """The progress of deleting one user, kept in the store so any instance can answer for it.

    ``updated`` (milliseconds since the epoch) is when it was last saved; a ticket is kept at least
    ``DELETE_TICKET_RETENTION_MS`` after that, and it outlives the user it names.
    """

    id: str
    user_id: str
    status: DeleteStatus
    steps_done: int
    steps_total: int
    updated: int


class UserStore(Protocol):
    """Where users live. Uniqueness of ``username_key``, ``username_skeleton`` and ``email_key`` is the
    backend's job."""

    async def add(self, user: NewUser) -> User:
        """Insert ``user``; raise UsernameTaken, UsernameConfusable (another user's username has the same
        skeleton) or EmailTaken when a key is already used."""
        ...

    async def get_by_id(self, user_id: str) -> User | None: ...

    async def get_by_username(self, username_key: str) -> User | None: ...

    async def get_by_email(self, email_key: str) -> User | None: ...

    async def list_users(self, *, scope: str | None = None, limit: int = 100, after: str | None = None) -> list[User]:
        """Up to ``limit`` users in id order (ids are time-ordered, so creation order), those with ids greater
        than ``after`` when it is given (a cursor: pass the last id of one page to get the next); with
        ``scope``, only the users who hold that scope."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace the user's password hash; False when no user has ``user_id``. One atomic write."""
        ...

    async def set_scope(self, user_id: str, scope: tuple[str, ...]) -> bool:
        """Replace the user's scopes with ``scope``; False when no user has ``user_id``. One atomic write."""
        ...

    async def delete(self, user_id: str, *, keep_an_admin: bool = False) -> bool:
        """Remove the user (freeing their username and email, dropping their reset code); False when no user
        has ``user_id``. With ``keep_an_admin``, raise LastAdmin instead when the user is the last one
        holding ``admin``, decided in the same atomic write (two racing deletions of the last two admins:
        one of them is refused)."""
        ...

    async def find(self, query: UserQuery) -> list[User]:
        """The page of users ``query`` selects, in its order."""
        ...

    async def count(self, query: UserQuery) -> int:
        """How many users ``query``'s filters and pattern select (order, limit and offset ignored)."""
        ...

    async def update(self, user_id: str, changes: UserChanges, *, keep_an_admin: bool = False) -> User | None:
        """Apply ``changes`` in one atomic write; return the user as now stored, None when no user has
        ``user_id``. Raise UsernameTaken or EmailTaken as ``add`` does (and change nothing); with
        ``keep_an_admin``, raise LastAdmin (changing nothing) when the change would leave no user
        holding ``admin``, decided in the same write."""
        ...

    async def revoke_tokens(self, user_id: str) -> int | None:
        """Revoke every token of the user (one atomic increment of ``token_version``); return the new
        version, which tokens issued from now on carry; None when no user has ``user_id``."""
        ...

    async def put_reset_code(self, user_id: str, code_hash: str, expires_at: int) -> bool:
        """Keep ``code_hash`` as the user's one live password-reset code until ``expires_at`` (milliseconds
        since the epoch), replacing any earlier code; False when no user has ``user_id``."""
        ...

    async def consume_reset_code(self, code_hash: str, now: int) -> str | None:
        """Use up the code whose hash is ``code_hash``: the id of its user when it is live at ``now``,
        None when it is unknown, used, replaced or expired. Atomic: of two concurrent consumers of one
        code, exactly one gets the id."""
        ...

    async def save_delete_ticket(self, ticket: DeleteTicket) -> None:
        """Create the ticket, or replace the one with its id; tickets not saved for longer than
        ``DELETE_TICKET_RETENTION_MS`` before ``ticket.updated`` may be forgotten."""
        ...

    async def get_delete_ticket(self, ticket_id: str) -> DeleteTicket | None: ...

    async def add_many(self, users: Sequence[NewUser]) -> list[User]:
        """Insert every user in ``users`` in one atomic write, or none of them (an import): raise
        UserIdTaken, UsernameTaken, UsernameConfusable or EmailTaken, adding nothing, when an id or a key is
        already used, by a stored user or by another in ``users``. Return the users as stored, in order."""
        ...


@dataclass(frozen=True, slots=True)
class Rule:
    """A token-bucket policy: ``capacity`` tokens, refilled continuously over ``window`` seconds."""

    name: str
    capacity: int
    window: float

    @property
    def refill_per_second(self) -> float:
        return self.capacity / self.window


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one ``hit``: allowed, or refused by ``rule`` until ``retry_after`` seconds pass."""

    allowed: bool
    rule: Rule | None = None
    retry_after: float = 0.0


ALLOWED = Decision(allowed=True)


class RateLimiter(Protocol):
    """Token buckets keyed by (rule, key).

    ``hit`` is one atomic operation over all the buckets it names: when every bucket holds a token, one is
    taken from each; otherwise nothing is taken and the first empty bucket, in the order given, is reported.
    A Redis backend does the same in one script.
    """

    async def hit(self, buckets: Sequence[tuple[Rule, str]]) -> Decision: ...

    async def refund(self, buckets: Sequence[tuple[Rule, str]]) -> None:
        """Give one token back to each bucket (never above capacity): for a hit that turned out not to count."""
        ...

    async def reset(self, buckets: Sequence[tuple[Rule, str]]) -> None:
        """Refill each bucket to capacity."""
        ...


# Password recovery (POST /user/forgot-password and /user/forgot-password/reset)


class InvalidResetCode(InvalidRequest):
    """The reset code is unknown, expired, already used or replaced by a newer one: one answer for all."""

    code = "invalid_reset_code"
    default_message = "The reset code is invalid, expired or already used."


class ForgotPasswordEmailRateLimited(RateLimited):
    code = "forgot_password_email_rate_limited"
    default_message = "Too many password reset requests for this email address. Please try again later."


class ForgotPasswordIpRateLimited(RateLimited):
    code = "forgot_password_ip_rate_limited"
    default_message = "Too many password reset requests from your IP address. Please try again later."


class PasswordResetIpRateLimited(RateLimited):
    code = "password_reset_ip_rate_limited"
    default_message = "Too many password reset attempts from your IP address. Please try again later."


@dataclass(eq=False, frozen=True, slots=True)
class ResetCodeMessage:
    """A reset code on its way to its user: what the forgot-password webhook carries.

    ``created`` is in milliseconds since the epoch; ``link`` is FORGOT_PASSWORD_LINK with the code in it.
    The code (and so the link) is kept out of reprs: it is a password until it is used.
    """

    code: str = field(repr=False)
    email: str
    user_id: str
    created: int
    link: str = field(repr=False)


class ResetNotifier(Protocol):
    """Hands reset codes to whoever passes them on to the user (a webhook)."""

    async def deliver(self, message: ResetCodeMessage) -> None:
        """Deliver ``message``, retrying as the transport sees fit; failures are logged (never the code),
        not raised."""
        ...


class Background(Protocol):
    """Work that runs after the answer it was started for, owned (and waited for at shutdown) by the app."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on its own; the caller does not wait for it, and its failures are logged."""
        ...
