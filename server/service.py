"""AuthService: signing up, signing in, turning a bearer token into a Principal, and a user's own password
and tokens (change the password, log out everywhere).

It owns the order of operations (rate limit, validate, hash, store, issue a token), emits one structured
log event per auth event, and raises domain errors only; it knows nothing of HTTP.

Revocation (``domain.User.token_version``): every token is issued with the user's version as stored at that
moment, and ``authenticate`` refuses a token whose version is not the stored one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, runtime_checkable

import structlog

from server import validation
from server.domain import (
    AuthenticationRequired,
    InsufficientScope,
    InvalidCredentials,
    InvalidToken,
    MissingField,
    MixauthError,
    Overloaded,
    Principal,
    RateLimiter,
    Rule,
    SignInThrottled,
    SignupEmailRateLimited,
    SignupIpRateLimited,
    User,
    UserChanges,
    UserStore,
)
from server.hashing import PasswordHasher
from server.logs import context_field
from server.security import (
    BCRYPT_MAX_BYTES,
    TokenCodec,
    build_new_user,
    email_key,
    hash_cost,
    identifier_key,
    needs_rehash,
)

log = structlog.get_logger("mixauth.auth")

# The field that tells each auth event's outcome, counted by observers (metrics) beside the event's name.
# Only outcomes the caller already knows, or that are alike for every account, belong here: a failed
# sign-in's reason (unknown_user, wrong_password, password_too_long) would tell a scraper whether the
# account exists, so it is counted without one and stays in the log, which is the operator's.
OUTCOME_FIELDS = {
    "user.created": "via",
    "user.signup.rejected": "reason",
    "user.signin.throttled": "limit",
    "signup.rate_limited": "limit",
    "token.rejected": "reason",
    "authz.denied": "reason",
    "user.password_changed": "via",
    "tokens.revoked": "via",
    "user.updated": "via",
    "user.deleted": "via",
    "password_reset.rate_limited": "limit",
    "password_reset.failed": "reason",
    # Not password_reset.requested: it is alike for a known and an unknown address, outcome and all.
}


class EventObserver(Protocol):
    """Told of every auth event as it is logged: its name and its outcome (``OUTCOME_FIELDS``)."""

    def auth_event(self, event: str, outcome: str) -> None: ...


class _Unobserved:
    def auth_event(self, event: str, outcome: str) -> None:
        pass


UNOBSERVED: EventObserver = _Unobserved()


def emit(observer: EventObserver, level: str, event: str, **fields: Any) -> None:
    """Log one auth event as one structured line at ``level``, and tell ``observer``."""
    getattr(log, level)(event, **fields)
    outcome = fields.get(OUTCOME_FIELDS.get(event, ""))
    observer.auth_event(event, "" if outcome is None else str(outcome))


ADMIN_SCOPE = "admin"
DEFAULT_SCOPE: tuple[str, ...] = ("user",)


@dataclass(eq=False, frozen=True, slots=True)
class AuthPolicy:
    """The tunable rules the service enforces, taken from Settings by the app factory."""

    signup_email_rule: Rule
    signup_ip_rule: Rule
    signin_account_rule: Rule
    signin_ip_rule: Rule
    create_scopes: frozenset[str] = frozenset()
    password_min_length: int = 6
    default_plan: str = "free"
    default_vendor: tuple[str, ...] = ()

    @property
    def signup_bypass_scopes(self) -> frozenset[str]:
        return self.create_scopes | {ADMIN_SCOPE}


@dataclass(eq=False, frozen=True, slots=True)
class SignIn:
    """A successful sign-in: the user and their new token."""

    user: User
    token: str


@dataclass(eq=False, frozen=True, slots=True)
class PasswordChange:
    """A user's request to replace their own password (POST /user/change-password)."""

    old_password: str = field(repr=False)
    new_password: str = field(repr=False)


@runtime_checkable
class FreshReads(Protocol):
    """A store that may answer ``get_by_id`` from a cache, can read one user past it, and tells the user it
    remembers without waiting."""

    async def get_fresh_by_id(self, user_id: str) -> User | None: ...

    def remembered(self, user_id: str) -> User | None: ...


def _nothing_remembered(user_id: str) -> None:
    return None


# How many users' principals authenticate_now keeps made (about as many as a user cache holds).
MAX_PRINCIPALS = 10_000


class AuthService:
    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        limiter: RateLimiter,
        policy: AuthPolicy,
        observer: EventObserver = UNOBSERVED,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._tokens = tokens
        self._limiter = limiter
        self._policy = policy
        self._observer = observer
        self._get_fresh: Callable[[str], Awaitable[User | None]] = store.get_by_id
        self._remembered: Callable[[str], User | None] = _nothing_remembered
        if isinstance(store, FreshReads):
            self._get_fresh, self._remembered = store.get_fresh_by_id, store.remembered
        # Password writes of one user, one at a time in this process: a hash upgrade computed from the old
        # password must never land after a change of password (it would bring the old password back).
        self._password_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The log context's user_id, bound for the rest of the request once a user is known.
        self._user_id_field = context_field("user_id")
        # authenticate_now's principal of each remembered user, made once for the user as remembered.
        self._principals: dict[str, Principal] = {}

    async def authenticate(self, token: str) -> Principal:
        """The Principal a bearer token names, with the scopes stored for the user now.

        The token's version must be the user's stored ``token_version``. A token newer than the user as
        remembered was issued after a change this process has not seen yet (a cache that another process's
        revocation made stale), so the user is read once more from the store before it is judged.
        """
        try:
            claims = self._tokens.verify(token)
            user = await self._store.get_by_id(claims.user_id)
            if user is not None and claims.version > user.token_version:
                user = await self._get_fresh(claims.user_id)
            if user is None:
                raise InvalidToken("unknown_user")
            if claims.version != user.token_version:
                raise InvalidToken("revoked")
        except InvalidToken as exc:
            emit(self._observer, "warning", "token.rejected", reason=exc.reason)
            raise
        self._user_id_field.set(user.id)
        return Principal(user)

    def authenticate_now(self, token: str) -> Principal | None:
        """``authenticate(token)`` when it needs no wait, as for most requests: a token verified before, whose
        user is remembered at the token's version. None when it would wait (a token not seen yet, a user to
        read from the store) or refuse the token: ``authenticate`` then does, and logs why."""
        claims = self._tokens.remembered(token)
        if claims is None:
            return None
        user = self._remembered(claims.user_id)
        if user is None or claims.version != user.token_version:
            return None
        self._user_id_field.set(user.id)
        principal = self._principals.get(user.id)
        if principal is None or principal.user is not user:
            if len(self._principals) >= MAX_PRINCIPALS:
                self._principals.clear()
            principal = self._principals[user.id] = Principal(user)
        return principal

    def authorize(self, principal: Principal | None, scopes: frozenset[str], route: str | None = None) -> None:
        """Raise AuthenticationRequired without a principal, and InsufficientScope unless it holds one of
        ``scopes`` (when there are any)."""
        if principal is None:
            emit(self._observer, "info", "authz.denied", reason="no_token", route=route)
            raise AuthenticationRequired()
        if scopes and not principal.has_any_scope(scopes):
            emit(
                self._observer,
                "warning",
                "authz.denied",
                reason="insufficient_scope",
                route=route,
                required=sorted(scopes),
                held=sorted(principal.scopes),
            )
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
            self._user_id_field.set(user.id)
        return self._issue(user)

    async def create_user(self, body: Mapping[str, Any], scope: Sequence[str], via: str) -> User:
        return await register_user(self._store, self._hasher, self._policy, body, scope, via, self._observer)

    async def sign_in(self, body: Mapping[str, Any], client_ip: str) -> SignIn:
        """Check a username-or-email and password; the same InvalidCredentials for every failure.

        Failures are throttled per account and per client IP. The tokens are taken before the password is
        checked, so concurrent guesses cannot overrun a bucket, and given back when the sign-in succeeds
        (the account's bucket is refilled) or never reached bcrypt (Overloaded).
        """
        password_text = validation.required_string(body, "password")
        # Refused before NFKC runs when too long to be anyone's (``validation.RAW_SLACK``), and again after.
        username = validation.optional_identifier(body, "username")
        email = validation.optional_identifier(body, "email")
        if username is not None and username.strip():
            identified_by, name_key = "username", identifier_key(username)
            user = await self._store.get_by_username(name_key)
        elif email is not None and email.strip():
            identified_by, name_key = "email", email_key(email, strict=False)
            user = await self._store.get_by_email(name_key)
        else:
            raise MissingField("A username or an email is required.")
        validation.check_identifier_key(identified_by, name_key)
        password = validation.sign_in_password(password_text)
        user_id = user.id if user is not None else None
        key = account_key(user.id) if user is not None else f"name:{name_key}"
        account, address = await self._charge_sign_in(key, client_ip, identified_by, user_id)
        try:
            if user is None:
                await self._hasher.waste(password)
                matched = False
            else:
                matched = await self._hasher.verify(password, user.password_hash)
        except Overloaded:
            await self._limiter.refund([account, address])
            emit(self._observer, "warning", "user.signin.overloaded", identified_by=identified_by, user_id=user_id)
            raise
        if user is None:
            self._reject_sign_in("unknown_user", identified_by)
        if not matched:
            reason = "password_too_long" if len(password) > BCRYPT_MAX_BYTES else "wrong_password"
            self._reject_sign_in(reason, identified_by, user.id)
        await self._limiter.reset([account])
        await self._limiter.refund([address])
        self._user_id_field.set(user.id)
        emit(self._observer, "info", "user.signin.succeeded", identified_by=identified_by)
        if needs_rehash(user.password_hash, self._hasher.rounds):
            user = await self._upgrade_hash(user, password)
        return SignIn(user, self._issue(user))

    async def change_password(self, principal: Principal, change: PasswordChange, client_ip: str) -> str:
        """Replace the caller's password, revoking every token they hold; return a token of the new version.

        The new password follows the signup rules (checked first, taking nothing from the throttle). A wrong
        old password counts as a failed sign-in of the account: it takes a token from the account's and the
        client IP's sign-in buckets, and an empty bucket refuses even the right one. The user is read afresh
        (past any cache) before the old password is checked, so a token revoked meanwhile cannot change it.
        """
        new_password = validation.clean_new_password(change.new_password, self._policy.password_min_length)
        old_password = validation.sign_in_password(change.old_password)
        user_id = principal.user.id
        account, address = await self._charge_sign_in(account_key(user_id), client_ip, "token", user_id)
        async with self._password_lock(user_id):
            try:
                user = await self._get_fresh(user_id)
                if user is None:
                    self._reject_token("unknown_user")
                if user.token_version != principal.user.token_version:
                    self._reject_token("revoked")
                if not await self._hasher.verify(old_password, user.password_hash):
                    reason = "password_too_long" if len(old_password) > BCRYPT_MAX_BYTES else "wrong_password"
                    self._reject_sign_in(reason, "token", user_id)
                password_hash = await self._hasher.hash(new_password)
            except (InvalidToken, Overloaded):
                await self._limiter.refund([account, address])
                raise
            updated = await self._store.update(user_id, UserChanges(password_hash=password_hash, revoke_tokens=True))
        if updated is None:
            self._reject_token("unknown_user")
        await self._limiter.reset([account])
        await self._limiter.refund([address])
        emit(self._observer, "info", "user.password_changed", via="self", user_id=user_id)
        emit(self._observer, "info", "tokens.revoked", via="password_change", user_id=user_id)
        return self._issue(updated)

    async def log_out(self, principal: Principal) -> None:
        """Revoke every token of the caller, the one this request carried included."""
        user_id = principal.user.id
        if await self._store.revoke_tokens(user_id) is None:
            self._reject_token("unknown_user")
        emit(self._observer, "info", "tokens.revoked", via="logout", user_id=user_id)

    def _issue(self, user: User) -> str:
        """A token for ``user`` as just stored: it carries the user's current ``token_version``."""
        return self._tokens.issue(user.id, user.scope, version=user.token_version)

    async def _upgrade_hash(self, user: User, password: bytes) -> User:
        """Store the password just checked at the current cost (and in ``$2b$`` form), tokens untouched.

        Best effort: skipped when hashing is saturated, and when the stored hash changed while the new one
        was computed (storing it would bring back the password that was just replaced).
        """
        try:
            password_hash = await self._hasher.hash(password)
        except Overloaded:
            emit(self._observer, "info", "user.password_rehash_skipped", reason="overloaded", user_id=user.id)
            return user
        async with self._password_lock(user.id):
            current = await self._get_fresh(user.id)
            if current is None or current.password_hash != user.password_hash:
                emit(self._observer, "info", "user.password_rehash_skipped", reason="changed", user_id=user.id)
                return user
            updated = await self._store.update(user.id, UserChanges(password_hash=password_hash))
        emit(
            self._observer,
            "info",
            "user.password_rehashed",
            user_id=user.id,
            from_cost=hash_cost(user.password_hash),
            to_cost=self._hasher.rounds,
        )
        return user if updated is None else updated

    def _password_lock(self, user_id: str) -> asyncio.Lock:
        lock = self._password_locks.get(user_id)
        if lock is None:
            lock = self._password_locks[user_id] = asyncio.Lock()
        return lock

    async def _charge_sign_in(
        self, account_key: str, client_ip: str, identified_by: str, user_id: str | None
    ) -> tuple[tuple[Rule, str], tuple[Rule, str]]:
        """Take a token from the account's and the client IP's sign-in buckets, and return both buckets;
        SignInThrottled when either is empty."""
        account = (self._policy.signin_account_rule, account_key)
        address = (self._policy.signin_ip_rule, client_key(client_ip))
        decision = await self._limiter.hit([account, address])
        if not decision.allowed:
            limit = "account" if decision.rule == self._policy.signin_account_rule else "ip"
            emit(
                self._observer,
                "warning",
                "user.signin.throttled",
                limit=limit,
                identified_by=identified_by,
                user_id=user_id,
                retry_after=round(decision.retry_after, 3),
            )
            raise SignInThrottled(decision.retry_after)
        return account, address

    def _reject_sign_in(self, reason: str, identified_by: str, user_id: str | None = None) -> NoReturn:
        emit(self._observer, "info", "user.signin.failed", reason=reason, identified_by=identified_by, user_id=user_id)
        raise InvalidCredentials()

    def _reject_token(self, reason: str) -> NoReturn:
        emit(self._observer, "warning", "token.rejected", reason=reason)
        raise InvalidToken(reason)

    async def _charge_signup(self, body: Mapping[str, Any], client_ip: str) -> None:
        buckets: list[tuple[Rule, str]] = []
        email = validation.identifier_or_none(body, "email")  # None when too long: clean_email refuses it
        if isinstance(email, str) and email.strip():
            buckets.append((self._policy.signup_email_rule, email_key(email, strict=False)))
        buckets.append((self._policy.signup_ip_rule, client_key(client_ip)))
        decision = await self._limiter.hit(buckets)
        if decision.allowed:
            return
        email_limited = decision.rule is not None and decision.rule.name == self._policy.signup_email_rule.name
        emit(
            self._observer,
            "warning",
            "signup.rate_limited",
            limit="email" if email_limited else "ip",
            retry_after=round(decision.retry_after, 3),
        )
        if email_limited:
            raise SignupEmailRateLimited(decision.retry_after)
        raise SignupIpRateLimited(decision.retry_after)


def account_key(user_id: str) -> str:
    """The sign-in throttle's key for a known account, however the caller named it (username, email, token)."""
    return f"id:{user_id}"


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
    observer: EventObserver = UNOBSERVED,
) -> User:
    """Validate, hash and store a new user, without rate limiting (admins and the command line)."""
    try:
        username = validation.clean_username(validation.required_string(body, "username"))
        email = validation.clean_email(validation.required_string(body, "email"))
        password = validation.clean_new_password(
            validation.required_string(body, "password"), policy.password_min_length
        )
        metadata = validation.optional_metadata(body)
        password_hash = await hasher.hash(password)
        user = await store.add(
            build_new_user(
                username,
                email,
                password_hash,
                tuple(scope),
                policy.default_plan,
                metadata,
                vendor=policy.default_vendor,
            )
        )
    except MixauthError as exc:
        emit(observer, "info", "user.signup.rejected", reason=exc.code, via=via)
        raise
    emit(observer, "info", "user.created", user_id=user.id, scope=list(user.scope), via=via)
    return user
