"""AuthService: signing up, signing in, and turning a bearer token into a Principal.

It owns the order of operations (rate limit, validate, hash, store, issue a token), emits one structured
log event per auth event, and raises domain errors only; it knows nothing of HTTP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from server import validation
from server.domain import (
    InsufficientScope,
    InvalidCredentials,
    InvalidToken,
    MissingField,
    MixauthError,
    NewUser,
    Overloaded,
    Principal,
    RateLimiter,
    Rule,
    SignInThrottled,
    SignupEmailRateLimited,
    SignupIpRateLimited,
    User,
    UserStore,
)
from server.hashing import PasswordHasher
from server.security import BCRYPT_MAX_BYTES, TokenCodec, identifier_key, new_user_id

log = structlog.get_logger("mixauth.auth")

ADMIN_SCOPE = "admin"
DEFAULT_SCOPE: tuple[str, ...] = ("user",)


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """The tunable rules the service enforces, taken from Settings by the app factory."""

    signup_email_rule: Rule
    signup_ip_rule: Rule
    signin_account_rule: Rule
    signin_ip_rule: Rule
    create_scopes: frozenset[str] = frozenset()
    password_min_length: int = 6
    default_plan: str = "free"

    @property
    def signup_bypass_scopes(self) -> frozenset[str]:
        return self.create_scopes | {ADMIN_SCOPE}


@dataclass(frozen=True, slots=True)
class SignIn:
    user: User
    token: str


class AuthService:
    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        limiter: RateLimiter,
        policy: AuthPolicy,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._tokens = tokens
        self._limiter = limiter
        self._policy = policy

    async def authenticate(self, token: str) -> Principal:
        """The Principal a bearer token names, with the scopes stored for the user now."""
        try:
            claims = self._tokens.verify(token)
            user = await self._store.get_by_id(claims.user_id)
            if user is None:
                raise InvalidToken("unknown_user")
        except InvalidToken as exc:
            log.warning("token.rejected", reason=exc.reason)
            raise
        structlog.contextvars.bind_contextvars(user_id=user.id)
        return Principal(user)

    def authorize(self, principal: Principal, scopes: frozenset[str]) -> None:
        """Raise InsufficientScope unless ``principal`` holds at least one of ``scopes``."""
        if not principal.has_any_scope(scopes):
            log.warning("authz.denied", required=sorted(scopes), held=sorted(principal.scopes))
            raise InsufficientScope()

    async def sign_up(self, body: Mapping[str, Any], client_ip: str, principal: Principal | None) -> str:
        """Create a user from a signup body and return a token for them.

        Requests that are not made by an admin (or a holder of a create scope) are rate limited first, so
        every attempt counts, valid or not.
        """
        privileged = principal is not None and principal.has_any_scope(self._policy.signup_bypass_scopes)
        if not privileged:
            await self._charge_signup(body, client_ip)
        user = await self.create_user(body, DEFAULT_SCOPE, via="admin_api" if privileged else "api")
        if principal is None:
            structlog.contextvars.bind_contextvars(user_id=user.id)
        return self._tokens.issue(user.id, user.scope)

    async def create_user(self, body: Mapping[str, Any], scope: Sequence[str], via: str) -> User:
        return await register_user(self._store, self._hasher, self._policy, body, scope, via)

    async def sign_in(self, body: Mapping[str, Any], client_ip: str) -> SignIn:
        """Check a username-or-email and password; the same InvalidCredentials for every failure.

        Failures are throttled per account and per client IP. The tokens are taken before the password is
        checked, so concurrent guesses cannot overrun a bucket, and given back when the sign-in succeeds
        (the account's bucket is refilled) or never reached bcrypt (Overloaded).
        """
        password_text = validation.required_string(body, "password")
        username = validation.optional_string(body, "username")
        email = validation.optional_string(body, "email")
        if username is not None and username.strip():
            identified_by, name_key = "username", identifier_key(username)
            user = await self._store.get_by_username(name_key)
        elif email is not None and email.strip():
            identified_by, name_key = "email", identifier_key(email)
            user = await self._store.get_by_email(name_key)
        else:
            raise MissingField("A username or an email is required.")
        password = validation.sign_in_password(password_text)
        user_id = user.id if user is not None else None
        account = (self._policy.signin_account_rule, f"id:{user.id}" if user is not None else f"name:{name_key}")
        address = (self._policy.signin_ip_rule, client_key(client_ip))
        decision = await self._limiter.hit([account, address])
        if not decision.allowed:
            limit = "account" if decision.rule == self._policy.signin_account_rule else "ip"
            log.warning(
                "user.signin.throttled",
                limit=limit,
                identified_by=identified_by,
                user_id=user_id,
                retry_after=round(decision.retry_after, 3),
            )
            raise SignInThrottled(decision.retry_after)
        try:
            if user is None:
                await self._hasher.waste(password)
                matched = False
            else:
                matched = await self._hasher.verify(password, user.password_hash)
        except Overloaded:
            await self._limiter.refund([account, address])
            log.warning("user.signin.overloaded", identified_by=identified_by, user_id=user_id)
            raise
        if user is None:
            self._reject_sign_in("unknown_user", identified_by)
        if not matched:
            reason = "password_too_long" if len(password) > BCRYPT_MAX_BYTES else "wrong_password"
            self._reject_sign_in(reason, identified_by, user.id)
        await self._limiter.reset([account])
        await self._limiter.refund([address])
        structlog.contextvars.bind_contextvars(user_id=user.id)
        log.info("user.signin.succeeded", identified_by=identified_by)
        return SignIn(user, self._tokens.issue(user.id, user.scope))

    @staticmethod
    def _reject_sign_in(reason: str, identified_by: str, user_id: str | None = None) -> NoReturn:
        log.info("user.signin.failed", reason=reason, identified_by=identified_by, user_id=user_id)
        raise InvalidCredentials()

    async def _charge_signup(self, body: Mapping[str, Any], client_ip: str) -> None:
        buckets: list[tuple[Rule, str]] = []
        email = body.get("email")
        if isinstance(email, str) and email.strip():
            buckets.append((self._policy.signup_email_rule, identifier_key(email)))
        buckets.append((self._policy.signup_ip_rule, client_key(client_ip)))
        decision = await self._limiter.hit(buckets)
        if decision.allowed:
            return
        email_limited = decision.rule is not None and decision.rule.name == self._policy.signup_email_rule.name
        log.warning(
            "signup.rate_limited",
            limit="email" if email_limited else "ip",
            retry_after=round(decision.retry_after, 3),
        )
        if email_limited:
            raise SignupEmailRateLimited(decision.retry_after)
        raise SignupIpRateLimited(decision.retry_after)


def client_key(client_ip: str) -> str:
    """The rate-limit key for a client address: IPv6 clients by their /64 network, which one host controls.

    IPv4-mapped IPv6 addresses count as the IPv4 address; anything unparseable is used as given.
    """
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def register_user(
    store: UserStore,
    hasher: PasswordHasher,
    policy: AuthPolicy,
    body: Mapping[str, Any],
    scope: Sequence[str],
    via: str,
) -> User:
    """Validate, hash and store a new user, without rate limiting (admins and the command line)."""
    try:
        username = validation.clean_username(validation.required_string(body, "username"))
        email = validation.clean_email(validation.required_string(body, "email"))
        password = validation.clean_new_password(
            validation.required_string(body, "password"), policy.password_min_length
        )
        metadata = validation.optional_object(body, "metadata")
        password_hash = await hasher.hash(password)
        user = await store.add(
            NewUser(
                id=new_user_id(),
                username=username,
                username_key=identifier_key(username),
                email=email,
                email_key=identifier_key(email),
                password_hash=password_hash,
                scope=tuple(scope),
                plan=policy.default_plan,
                metadata=metadata,
            )
        )
    except MixauthError as exc:
        log.info("user.signup.rejected", reason=exc.code, via=via)
        raise
    log.info("user.created", user_id=user.id, scope=list(user.scope), via=via)
    return user
