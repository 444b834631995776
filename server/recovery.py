"""RecoveryService: a forgotten password, from the request for a reset code to the new password.

``forgot`` answers alike, in content and in timing, whether the email names a user or not: both paths take
the same rate-limit tokens, make the same store lookup and make and hash a code; for a known user, storing
the code's hash and handing the code to the notifier (a webhook) happen afterwards, in the background, so
neither the store's write nor the delivery shows in the answer. Only the SHA-256 of a code is stored: a
code carries 256 random bits, so no slow hash is needed to keep it from being guessed back.

``reset`` checks the new password by the signup rules first (a bad one leaves the code usable), hashes it
on the pool, then consumes the code in one atomic store operation (of two resets with one code, one wins),
and stores the new hash together with the revocation of every token of the user. It raises domain errors
only and knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import structlog

from server import validation
from server.config import RESET_CODE_PLACEHOLDER
from server.domain import (
    Background,
    ForgotPasswordEmailRateLimited,
    ForgotPasswordIpRateLimited,
    InvalidResetCode,
    Overloaded,
    PasswordResetIpRateLimited,
    RateLimiter,
    ResetCodeMessage,
    ResetNotifier,
    Rule,
    User,
    UserChanges,
    UserStore,
)
from server.hashing import PasswordHasher
from server.security import email_key
from server.service import UNOBSERVED, EventObserver, account_key, client_key, emit

log = structlog.get_logger("mixauth.recovery")

# secrets.token_urlsafe(32): 256 random bits in 43 URL-safe characters, twice the 128 the contract asks.
CODE_BYTES = 32
# Longer than any code this service makes; a longer one is refused without hashing or a store query.
CODE_MAX_CHARS = 256

WallClock = Callable[[], float]


@dataclass(eq=False, frozen=True, slots=True)
class ForgotPassword:
    """POST /user/forgot-password's body: the address to send a reset code to (as sent, checked for size)."""

    email: str


@dataclass(eq=False, frozen=True, slots=True)
class PasswordReset:
    """POST /user/forgot-password/reset's body: the code a user was sent and their new password."""

    code: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(eq=False, frozen=True, slots=True)
class RecoveryPolicy:
    """The tunable rules of recovery, taken from Settings by the app factory."""

    forgot_email_rule: Rule
    forgot_ip_rule: Rule
    reset_ip_rule: Rule
    # The sign-in throttle's per-account rule: a successful reset refills the account's bucket.
    signin_account_rule: Rule
    code_ttl: int = 3600  # seconds
    link: str = f"http://localhost:8080/reset-password?code={RESET_CODE_PLACEHOLDER}"
    password_min_length: int = 6


def code_hash(code: str) -> str:
    """What the store keeps of a reset code: its SHA-256, in hex."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


class RecoveryService:
    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        limiter: RateLimiter,
        policy: RecoveryPolicy,
        notifier: ResetNotifier,
        background: Background,
        *,
        wall_clock: WallClock = time.time,
        observer: EventObserver = UNOBSERVED,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._limiter = limiter
        self._policy = policy
        self._notifier = notifier
        self._background = background
        self._wall_clock = wall_clock
        self._observer = observer

    async def forgot(self, request: ForgotPassword, client_ip: str) -> None:
        """Start a reset for the user with ``request.email``, if there is one; the same for the caller either way.

        Every request takes a token from the email's bucket (keyed by the address, known or not) and the
        client's; a refusal is the same for a known and an unknown address.
        """
        key = email_key(request.email, strict=False)
        validation.check_identifier_key("email", key)
        buckets = [(self._policy.forgot_email_rule, key), (self._policy.forgot_ip_rule, client_key(client_ip))]
        decision = await self._limiter.hit(buckets)
        if not decision.allowed:
            by_email = decision.rule == self._policy.forgot_email_rule
            emit(
                self._observer,
                "warning",
                "password_reset.rate_limited",
                limit="email" if by_email else "ip",
                retry_after=round(decision.retry_after, 3),
            )
            if by_email:
                raise ForgotPasswordEmailRateLimited(decision.retry_after)
            raise ForgotPasswordIpRateLimited(decision.retry_after)
        user = await self._store.get_by_email(key)
        # Made and hashed for an unknown address too, so that both paths cost the same.
        code = secrets.token_urlsafe(CODE_BYTES)
        hashed = code_hash(code)
        now_ms = int(self._wall_clock() * 1000)
        emit(self._observer, "info", "password_reset.requested", user_id=user.id if user is not None else None)
        if user is not None:
            self._background.spawn(self._issue(user, code, hashed, now_ms))

    async def _issue(self, user: User, code: str, hashed: str, now_ms: int) -> None:
        """Store the code's hash (replacing the user's earlier code), then deliver the code."""
        expires_at = now_ms + self._policy.code_ttl * 1000
        if not await self._store.put_reset_code(user.id, hashed, expires_at):
            log.info("password_reset.abandoned", reason="user_deleted", user_id=user.id)
            return
        link = self._policy.link.replace(RESET_CODE_PLACEHOLDER, code)
        await self._notifier.deliver(
            ResetCodeMessage(code=code, email=user.email, user_id=user.id, created=now_ms, link=link)
        )

    async def reset(self, request: PasswordReset, client_ip: str) -> None:
        """Set a new password with a reset code, and revoke every token of its user."""
        address = [(self._policy.reset_ip_rule, client_key(client_ip))]
        decision = await self._limiter.hit(address)
        if not decision.allowed:
            emit(
                self._observer,
                "warning",
                "password_reset.rate_limited",
                limit="reset_ip",
                retry_after=round(decision.retry_after, 3),
            )
            raise PasswordResetIpRateLimited(decision.retry_after)
        # The password first: a bad one is refused before the code is used up, so the user can try again.
        password = validation.clean_new_password(request.password, self._policy.password_min_length)
        if not 0 < len(request.code) <= CODE_MAX_CHARS:
            self._reject_reset("malformed_code")
        # Hashed before the code is consumed: when the pool refuses (Overloaded, 503), the code still works.
        try:
            password_hash = await self._hasher.hash(password)
        except Overloaded:
            await self._limiter.refund(address)
            raise
        now_ms = int(self._wall_clock() * 1000)
        user_id = await self._store.consume_reset_code(code_hash(request.code), now_ms)
        if user_id is None:
            self._reject_reset("invalid_code")
        user = await self._store.update(user_id, UserChanges(password_hash=password_hash, revoke_tokens=True))
        if user is None:  # deleted since the code was made
            self._reject_reset("user_deleted")
        # The sign-in throttle's account bucket, keyed as AuthService.sign_in keys it for a known user.
        await self._limiter.reset([(self._policy.signin_account_rule, account_key(user.id))])
        emit(self._observer, "info", "password_reset.completed", user_id=user.id)
        emit(self._observer, "info", "user.password_changed", user_id=user.id, via="reset")
        emit(self._observer, "info", "tokens.revoked", user_id=user.id, via="reset", version=user.token_version)

    def _reject_reset(self, reason: str) -> NoReturn:
        emit(self._observer, "info", "password_reset.failed", reason=reason)
        raise InvalidResetCode()
