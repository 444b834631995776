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
    │   └── InvalidForwardedFor (400 invalid_forwarded_for)
    ├── AuthenticationRequired (401 authentication_required)
    │   └── InvalidToken (401 invalid_token)
    ├── InsufficientScope (403 insufficient_scope)
    ├── InvalidCredentials (403 invalid_credentials)
    ├── Conflict (409 conflict)
    │   ├── UsernameTaken (409 username_taken)
    │   └── EmailTaken (409 email_taken)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    │   └── UnsupportedContentEncoding (415 unsupported_content_encoding)
    ├── RateLimited (429 rate_limited)
    │   ├── SignupEmailRateLimited (429 signup_email_rate_limited)
    │   ├── SignupIpRateLimited (429 signup_ip_rate_limited)
    │   └── SignInThrottled (429 signin_throttled)
    ├── Overloaded (503 overloaded)
    └── NotReady (503 not_ready)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

JsonObject = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class User:
    """A stored user. The password hash never leaves the service layer and is kept out of reprs."""

    id: str
    username: str
    email: str
    scope: tuple[str, ...]
    plan: str
    is_active: bool
    password_hash: str = field(repr=False)
    metadata: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class NewUser:
    """What the service hands the store to insert; keys are the normalised, unique forms."""

    id: str
    username: str
    username_key: str
    email: str
    email_key: str
    password_hash: str = field(repr=False)
    scope: tuple[str, ...]
    plan: str
    metadata: JsonObject | None = None

    def as_user(self) -> User:
        """The User a store holds for this one right after adding it (new users start inactive)."""
        return User(
            id=self.id,
            username=self.username,
            email=self.email,
            scope=self.scope,
            plan=self.plan,
            is_active=False,
            password_hash=self.password_hash,
            metadata=self.metadata,
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


class Conflict(MixauthError):
    status = 409
    code = "conflict"
    default_message = "The resource already exists."


class UsernameTaken(Conflict):
    code = "username_taken"
    default_message = "This username is already taken."


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "A user with this email address already exists."


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


class Overloaded(MixauthError):
    """Password hashing is saturated: the request was refused at once rather than queued without end."""

    status = 503
    code = "overloaded"
    default_message = "The server is busy. Please try again shortly."
    retry_after = 1

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotReady(MixauthError):
    """The readiness probe: the database did not answer."""

    status = 503
    code = "not_ready"
    default_message = "The database does not answer."


class UserStore(Protocol):
    """Where users live. Uniqueness of ``username_key`` and ``email_key`` is the backend's job."""

    async def add(self, user: NewUser) -> User:
        """Insert ``user``; raise UsernameTaken or EmailTaken when a key is already used."""
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

    async def delete(self, user_id: str) -> bool:
        """Remove the user (freeing their username and email); False when no user has ``user_id``."""
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
