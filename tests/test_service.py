"""AuthService with an in-memory UserStore, the real limiter on a fake clock, and bcrypt at its minimum cost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.domain import (
    EmailTaken,
    InsufficientScope,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    MissingField,
    PasswordTooShort,
    Principal,
    RateLimited,
    Rule,
    SignupEmailRateLimited,
    SignupIpRateLimited,
    User,
    UsernameTaken,
)
from server.hashing import PasswordHasher
from server.limits.memory import MemoryRateLimiter
from server.security import TokenCodec, new_user_id
from server.service import AuthPolicy, AuthService
from server.storage.cached import CachedUserStore
from tests.conftest import FakeClock
from tests.fakes import FakeUserStore

SECRET = b"service-test-secret-that-is-long-enough-0123456789"
PASSWORD = "correct-horse-battery"
IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
HOUR = 3600.0


class CountingHasher(PasswordHasher):
    """Counts bcrypt checks: ``verify`` runs one; ``waste`` runs one through ``verify``."""

    def __init__(self, rounds: int) -> None:
        super().__init__(rounds, workers=2)
        self.verify_calls = 0
        self.waste_calls = 0

    async def verify(self, password: bytes, password_hash: str) -> bool:
        self.verify_calls += 1
        return await super().verify(password, password_hash)

    async def waste(self, password: bytes) -> None:
        self.waste_calls += 1
        await super().waste(password)


def policy(
    email_capacity: int = 10,
    ip_capacity: int = 50,
    account_capacity: int = 100,
    signin_ip_capacity: int = 300,
    **changes: Any,
) -> AuthPolicy:
    return AuthPolicy(
        signup_email_rule=Rule("signup_email", email_capacity, HOUR),
        signup_ip_rule=Rule("signup_ip", ip_capacity, HOUR),
        signin_account_rule=Rule("signin_account", account_capacity, HOUR),
        signin_ip_rule=Rule("signin_ip", signin_ip_capacity, HOUR),
        **changes,
    )


MakeService = Callable[..., AuthService]


@pytest.fixture
async def hasher() -> AsyncIterator[CountingHasher]:
    counting = CountingHasher(rounds=4)
    yield counting
    counting.close()


@pytest.fixture
def store() -> FakeUserStore:
    return FakeUserStore()


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, lifetime_seconds=3600)


@pytest.fixture
def make_service(store: FakeUserStore, hasher: CountingHasher, codec: TokenCodec, clock: FakeClock) -> MakeService:
    """An AuthService over the shared fakes, with the policy built by ``policy(**kwargs)``."""

    def make(**kwargs: Any) -> AuthService:
        return AuthService(store, hasher, codec, MemoryRateLimiter(clock), policy(**kwargs))

    return make


@pytest.fixture
def service(make_service: MakeService) -> AuthService:
    return make_service()


def body(
    username: str = "Alice", email: str = "Alice@Example.com", password: str = PASSWORD, **extra: Any
) -> dict[str, Any]:
    return {"username": username, "email": email, "password": password, **extra}


def principal_with(*scope: str) -> Principal:
    return Principal(
        User(
            id=new_user_id(),
            username="operator",
            email="operator@example.com",
            scope=scope,
            plan="free",
            is_active=True,
            password_hash="$2b$04$unused",
        )
    )


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def walk(value: Any) -> Iterator[str]:
    """Every string in a log value, however deeply nested, and the repr of everything else."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk(key)
            yield from walk(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from walk(item)
    else:
        yield repr(value)


# Signing up.


async def test_sign_up_returns_a_token_for_the_new_user_with_scope_user(
    service: AuthService, store: FakeUserStore, codec: TokenCodec
) -> None:
    token = await service.sign_up(body(metadata={"team": {"size": 3}}), IP, None)
    user = store.only_user()
    claims = codec.verify(token)
    assert claims.user_id == user.id
    assert claims.scope == ("user",)
    assert user.scope == ("user",)
    assert user.username == "Alice"
    assert user.email == "Alice@Example.com"
    assert user.is_active is False
    assert user.metadata == {"team": {"size": 3}}
    assert user.password_hash != PASSWORD
    assert user.password_hash.startswith("$2b$04$")


async def test_sign_up_ignores_server_owned_fields_in_the_body(service: AuthService, store: FakeUserStore) -> None:
    await service.sign_up(body(id="0" * 24, scope=["admin"], plan="enterprise", isActive=True), IP, None)
    user = store.only_user()
    assert user.id != "0" * 24
    assert user.scope == ("user",)
    assert user.plan == "free"
    assert user.is_active is False


@pytest.mark.parametrize("plan", ["free", "team"])
async def test_the_plan_comes_from_the_policy_default(
    make_service: MakeService, store: FakeUserStore, plan: str
) -> None:
    await make_service(default_plan=plan).sign_up(body(), IP, None)
    assert store.only_user().plan == plan


async def test_a_taken_username_or_email_is_a_conflict(service: AuthService) -> None:
    await service.sign_up(body("Alice", "alice@example.com"), IP, None)
    with pytest.raises(UsernameTaken):
        await service.sign_up(body(" ALICE ", "other@example.com"), IP, None)
    with pytest.raises(EmailTaken):
        await service.sign_up(body("Bob", "ALICE@example.com"), IP, None)


# Signing in.


@pytest.mark.parametrize(
    "identifier",
    [
        {"username": "Alice"},
        {"username": "  aLiCe \t"},
        {"email": "alice@example.com"},
        {"email": " ALICE@EXAMPLE.COM\n"},
    ],
    ids=["username", "username-case-and-space", "email", "email-case-and-space"],
)
async def test_sign_in_by_username_or_email_ignores_case_and_space(
    service: AuthService, store: FakeUserStore, codec: TokenCodec, identifier: dict[str, str]
) -> None:
    await service.sign_up(body("Alice", "Alice@Example.com"), IP, None)
    result = await service.sign_in({**identifier, "password": PASSWORD}, IP)
    user = store.only_user()
    assert result.user == user
    claims = codec.verify(result.token)
    assert claims.user_id == user.id
    assert claims.scope == ("user",)


async def test_a_username_wins_over_an_email(service: AuthService, store: FakeUserStore) -> None:
    await service.sign_up(body("Alice", "alice@example.com"), IP, None)
    result = await service.sign_in({"username": "alice", "email": "nobody@example.com", "password": PASSWORD}, IP)
    assert result.user == store.only_user()


async def test_sign_in_without_an_identifier_is_a_missing_field(service: AuthService) -> None:
    with pytest.raises(MissingField):
        await service.sign_in({"password": PASSWORD, "username": "  "}, IP)


async def test_an_unknown_user_is_invalid_credentials_after_one_bcrypt_check(
    service: AuthService, hasher: CountingHasher
) -> None:
    await service.sign_up(body(), IP, None)
    with pytest.raises(InvalidCredentials):
        await service.sign_in({"username": "nobody", "password": PASSWORD}, IP)
    assert hasher.waste_calls == 1
    assert hasher.verify_calls == 1  # the dummy check, run through verify


async def test_a_wrong_password_is_the_same_invalid_credentials(service: AuthService, hasher: CountingHasher) -> None:
    await service.sign_up(body(), IP, None)
    with pytest.raises(InvalidCredentials) as wrong_password:
        await service.sign_in({"username": "alice", "password": PASSWORD + "!"}, IP)
    assert hasher.verify_calls == 1
    assert hasher.waste_calls == 0
    with pytest.raises(InvalidCredentials) as unknown_user:
        await service.sign_in({"username": "nobody", "password": PASSWORD}, IP)
    assert str(wrong_password.value) == str(unknown_user.value)


@pytest.mark.parametrize(
    "password",
    ["a" * 72 + "b", "é" * 37, "x" * 10_000],
    ids=["73-bytes-matching-prefix", "74-bytes-utf8", "10000-bytes"],
)
async def test_a_password_over_72_bytes_is_invalid_credentials(
    service: AuthService, hasher: CountingHasher, password: str
) -> None:
    # The stored password is exactly bcrypt's 72 bytes, so the first case matches it after truncation.
    await service.sign_up(body(password="a" * 72), IP, None)
    for identifier in ({"username": "alice"}, {"username": "nobody"}):
        with pytest.raises(InvalidCredentials):
            await service.sign_in({**identifier, "password": password}, IP)
    assert hasher.verify_calls == 2
    assert hasher.waste_calls == 1


# Authentication and authorization.


async def test_authenticate_gives_the_scopes_stored_now(
    service: AuthService, store: FakeUserStore, codec: TokenCodec
) -> None:
    token = await service.sign_up(body(), IP, None)
    user_id = store.only_user().id
    principal = await service.authenticate(token)
    assert principal.user == store.only_user()
    assert principal.scopes == frozenset({"user"})

    assert await store.set_scope(user_id, ("admin", "billing"))
    principal = await service.authenticate(token)
    assert codec.verify(token).scope == ("user",)
    assert principal.user.id == user_id
    assert principal.scopes == frozenset({"admin", "billing"})


async def test_authenticate_now_answers_as_authenticate_once_nothing_needs_a_wait(
    store: FakeUserStore, hasher: CountingHasher, codec: TokenCodec, clock: FakeClock
) -> None:
    cached = CachedUserStore(store, clock=clock)
    service = AuthService(cached, hasher, codec, MemoryRateLimiter(clock), policy())
    token = await service.sign_up(body(), IP, None)
    assert service.authenticate_now(token) is None  # neither the token verified nor the user read yet
    principal = await service.authenticate(token)
    assert service.authenticate_now(token) == principal
    for refused in ("not.a.jwt", codec.issue(new_user_id(), ("user",))):  # malformed; of an unknown user
        assert service.authenticate_now(refused) is None
        with pytest.raises(InvalidToken):
            await service.authenticate(refused)
        assert service.authenticate_now(refused) is None
    await cached.revoke_tokens(principal.user.id)  # a newer token_version: the old token is refused
    assert service.authenticate_now(token) is None
    with pytest.raises(InvalidToken):
        await service.authenticate(token)
    # Over a store without a cache, every check reads the store: authenticate does.
    assert AuthService(store, hasher, codec, MemoryRateLimiter(clock), policy()).authenticate_now(token) is None


async def test_a_token_for_an_unknown_user_is_invalid(service: AuthService, codec: TokenCodec) -> None:
    token = codec.issue(new_user_id(), ("admin",))
    with pytest.raises(InvalidToken) as info:
        await service.authenticate(token)
    assert info.value.reason == "unknown_user"


async def test_a_malformed_or_foreign_token_is_invalid(service: AuthService) -> None:
    with pytest.raises(InvalidToken) as malformed:
        await service.authenticate("not.a.jwt")
    assert malformed.value.reason == "malformed"
    foreign = TokenCodec(b"another-secret-that-is-also-long-enough-0123", 3600).issue(new_user_id(), ("user",))
    with pytest.raises(InvalidToken) as wrongly_signed:
        await service.authenticate(foreign)
    assert wrongly_signed.value.reason == "bad_signature"


def test_authorize_requires_one_of_the_scopes(service: AuthService) -> None:
    user = principal_with("user")
    service.authorize(user, frozenset({"user", "admin"}))
    with pytest.raises(InsufficientScope):
        service.authorize(user, frozenset({"admin"}))
    with pytest.raises(InsufficientScope):
        service.authorize(principal_with(), frozenset({"user"}))


# Signup rate limiting.


async def test_the_email_bucket_empties_after_its_capacity(make_service: MakeService) -> None:
    service = make_service(email_capacity=3)
    # Different IPs and usernames, one email in different spellings: one bucket, and failures count too.
    await service.sign_up(body("user0", "Alice@Example.com"), "192.0.2.0", None)
    for n, spelling in enumerate(["  alice@EXAMPLE.com", "ALICE@example.COM\t"], start=1):
        with pytest.raises(EmailTaken):
            await service.sign_up(body(f"user{n}", spelling), f"192.0.2.{n}", None)
    with pytest.raises(SignupEmailRateLimited) as info:
        await service.sign_up(body("user9", "alice@example.com"), "192.0.2.9", None)
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(HOUR / 3)
    assert info.value.headers() == {"Retry-After": "1200"}
    assert info.value.message == "Too many signup attempts for this email address. Please try again later."


async def test_the_ip_bucket_empties_after_its_capacity(make_service: MakeService) -> None:
    service = make_service(ip_capacity=4)
    for n in range(4):
        await service.sign_up(body(f"user{n}", f"user{n}@example.com"), IP, None)
    with pytest.raises(SignupIpRateLimited) as info:
        await service.sign_up(body("user9", "user9@example.com"), IP, None)
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(HOUR / 4)
    assert info.value.message == "Too many signup attempts from your IP address. Please try again later."
    # Another IP is not affected.
    await service.sign_up(body("user9", "user9@example.com"), OTHER_IP, None)


async def test_the_email_bucket_is_checked_first(make_service: MakeService) -> None:
    service = make_service(email_capacity=2, ip_capacity=2)
    for n in range(2):
        with pytest.raises(PasswordTooShort):
            await service.sign_up(body(f"user{n}", "same@example.com", password="short"), IP, None)
    with pytest.raises(SignupEmailRateLimited):
        await service.sign_up(body("user9", "same@example.com"), IP, None)


async def test_a_request_refused_by_its_ip_takes_no_email_token(
    make_service: MakeService, store: FakeUserStore
) -> None:
    service = make_service(email_capacity=1, ip_capacity=1)
    await service.sign_up(body("first", "first@example.com"), IP, None)
    with pytest.raises(SignupIpRateLimited):
        await service.sign_up(body("second", "second@example.com"), IP, None)
    # second@example.com still holds its one token.
    await service.sign_up(body("second", "second@example.com"), OTHER_IP, None)
    assert {user.username for user in store.by_id.values()} == {"first", "second"}


async def test_a_request_refused_by_its_email_takes_no_ip_token(make_service: MakeService) -> None:
    service = make_service(email_capacity=1, ip_capacity=2)
    await service.sign_up(body("first", "first@example.com"), OTHER_IP, None)
    for _ in range(3):
        with pytest.raises(SignupEmailRateLimited):
            await service.sign_up(body("again", "first@example.com"), IP, None)
    # IP has spent nothing yet: two signups still fit.
    await service.sign_up(body("second", "second@example.com"), IP, None)
    await service.sign_up(body("third", "third@example.com"), IP, None)
    with pytest.raises(SignupIpRateLimited):
        await service.sign_up(body("fourth", "fourth@example.com"), IP, None)


@pytest.mark.parametrize(
    "invalid",
    [
        body(password="short"),
        body(email="not-an-email"),
        {"email": "Alice@Example.com"},
        body(username="\u200b"),
    ],
    ids=["password-too-short", "bad-email", "missing-fields", "invisible-username"],
)
async def test_invalid_bodies_still_count_as_attempts(make_service: MakeService, invalid: dict[str, Any]) -> None:
    service = make_service(ip_capacity=1)
    with pytest.raises(InvalidRequest):
        await service.sign_up(invalid, IP, None)
    with pytest.raises(SignupIpRateLimited):
        await service.sign_up(body(), IP, None)


async def test_a_too_short_password_takes_an_email_token(make_service: MakeService) -> None:
    service = make_service(email_capacity=1)
    with pytest.raises(PasswordTooShort):
        await service.sign_up(body(password="abc"), IP, None)
    with pytest.raises(SignupEmailRateLimited):
        await service.sign_up(body(), OTHER_IP, None)


@pytest.mark.parametrize("scope", [("admin",), ("creator",), ("user", "creator")])
async def test_admins_and_create_scope_holders_bypass_the_limiter(
    make_service: MakeService, store: FakeUserStore, scope: tuple[str, ...]
) -> None:
    service = make_service(email_capacity=1, ip_capacity=1, create_scopes=frozenset({"creator"}))
    operator = principal_with(*scope)
    for n in range(5):
        await service.sign_up(body(f"user{n}", "shared@example.com" if n == 0 else f"u{n}@example.com"), IP, operator)
    with pytest.raises(EmailTaken):
        await service.sign_up(body("user9", "shared@example.com"), IP, operator)
    assert len(store.by_id) == 5
    assert all(user.scope == ("user",) for user in store.by_id.values())
    # Nothing was taken from the IP's bucket: an anonymous request still gets its one token.
    await service.sign_up(body("anonymous", "anonymous@example.com"), IP, None)
    with pytest.raises(SignupIpRateLimited):
        await service.sign_up(body("anonymous2", "anonymous2@example.com"), IP, None)


async def test_a_principal_without_a_bypass_scope_is_limited(make_service: MakeService) -> None:
    service = make_service(ip_capacity=1, create_scopes=frozenset({"creator"}))
    operator = principal_with("user", "billing")
    await service.sign_up(body("one", "one@example.com"), IP, operator)
    with pytest.raises(SignupIpRateLimited):
        await service.sign_up(body("two", "two@example.com"), IP, operator)


async def test_the_buckets_refill_with_the_clock(make_service: MakeService, clock: FakeClock) -> None:
    service = make_service(email_capacity=2)
    for n in range(2):
        with pytest.raises(PasswordTooShort):
            await service.sign_up(body(f"user{n}", "alice@example.com", password="abc"), IP, None)
    with pytest.raises(SignupEmailRateLimited) as info:
        await service.sign_up(body(), IP, None)
    assert info.value.retry_after == pytest.approx(HOUR / 2)
    clock.advance(HOUR / 2 - 1)
    with pytest.raises(SignupEmailRateLimited) as info:
        await service.sign_up(body(), IP, None)
    assert info.value.retry_after == pytest.approx(1.0)
    clock.advance(1.5)
    await service.sign_up(body(), IP, None)
    with pytest.raises(RateLimited):
        await service.sign_up(body("bob", "alice@example.com"), IP, None)


# Logs.


async def test_sign_up_logs_user_created(service: AuthService, store: FakeUserStore) -> None:
    with capture_logs() as logs:
        await service.sign_up(body(), IP, None)
    assert [entry["event"] for entry in logs] == ["user.created"]
    (created,) = logs
    assert created["user_id"] == store.only_user().id
    assert created["scope"] == ["user"]
    assert created["log_level"] == "info"


async def test_sign_in_logs_success_and_each_failure_reason(service: AuthService, store: FakeUserStore) -> None:
    await service.sign_up(body(), IP, None)
    user_id = store.only_user().id
    with capture_logs() as logs:
        await service.sign_in({"email": "alice@example.com", "password": PASSWORD}, IP)
    assert [(entry["event"], entry["identified_by"]) for entry in logs] == [("user.signin.succeeded", "email")]

    attempts = [
        ({"username": "nobody", "password": PASSWORD}, "unknown_user", None),
        ({"username": "alice", "password": "wrong-password"}, "wrong_password", user_id),
        ({"username": "alice", "password": "p" * 73}, "password_too_long", user_id),
    ]
    for attempt, reason, logged_user_id in attempts:
        with capture_logs() as logs, pytest.raises(InvalidCredentials):
            await service.sign_in(attempt, IP)
        assert [entry["event"] for entry in logs] == ["user.signin.failed"]
        assert logs[0]["reason"] == reason
        assert logs[0]["identified_by"] == "username"
        assert logs[0]["user_id"] == logged_user_id


async def test_rate_limited_signups_log_which_limit(make_service: MakeService) -> None:
    service = make_service(email_capacity=1, ip_capacity=1)
    await service.sign_up(body(), IP, None)
    with capture_logs() as logs:
        with pytest.raises(SignupEmailRateLimited):
            await service.sign_up(body("bob", "alice@example.com"), OTHER_IP, None)
        with pytest.raises(SignupIpRateLimited):
            await service.sign_up(body("carol", "carol@example.com"), IP, None)
    assert [(entry["event"], entry["limit"]) for entry in logs] == [
        ("signup.rate_limited", "email"),
        ("signup.rate_limited", "ip"),
    ]
    assert all(entry["retry_after"] == pytest.approx(HOUR) for entry in logs)
    assert all(entry["log_level"] == "warning" for entry in logs)


async def test_rejected_tokens_and_denied_scopes_are_logged(service: AuthService, codec: TokenCodec) -> None:
    with capture_logs() as logs:
        with pytest.raises(InvalidToken):
            await service.authenticate(codec.issue(new_user_id(), ("user",)))
        with pytest.raises(InvalidToken):
            await service.authenticate("garbage")
        with pytest.raises(InsufficientScope):
            service.authorize(principal_with("user"), frozenset({"admin", "creator"}))
    assert [entry["event"] for entry in logs] == ["token.rejected", "token.rejected", "authz.denied"]
    assert [entry.get("reason") for entry in logs[:2]] == ["unknown_user", "malformed"]
    assert logs[2]["required"] == ["admin", "creator"]
    assert logs[2]["held"] == ["user"]


async def test_no_event_holds_a_password_token_or_hash(
    make_service: MakeService, store: FakeUserStore, codec: TokenCodec
) -> None:
    service = make_service(email_capacity=2)
    long_password = PASSWORD + "-" + "z" * 80
    with capture_logs() as logs:
        token = await service.sign_up(body(), IP, None)
        signed_in = await service.sign_in({"username": "alice", "password": PASSWORD}, IP)
        for attempt in (
            {"username": "alice", "password": "wrong-" + PASSWORD},
            {"email": "nobody@example.com", "password": PASSWORD},
            {"username": "alice", "password": long_password},
        ):
            with pytest.raises(InvalidCredentials):
                await service.sign_in(attempt, IP)
        with pytest.raises(PasswordTooShort):
            await service.sign_up(body("bob", "alice@example.com", password="abc"), IP, None)
        with pytest.raises(SignupEmailRateLimited):
            await service.sign_up(body("carol", "alice@example.com", password="carol-password"), IP, None)
        principal = await service.authenticate(token)
        with pytest.raises(InsufficientScope):
            service.authorize(principal, frozenset({"admin"}))
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(InvalidToken):
            await service.authenticate(tampered)
    password_hash = store.only_user().password_hash
    secrets = [PASSWORD, long_password, "carol-password", token, signed_in.token, tampered, password_hash]
    secrets += [SECRET.decode(), password_hash[7:]]  # the hash's salt-and-digest part, too
    assert {entry["event"] for entry in logs} >= {
        "user.created",
        "user.signin.succeeded",
        "user.signin.failed",
        "user.signup.rejected",
        "signup.rate_limited",
        "authz.denied",
        "token.rejected",
    }
    for entry in logs:
        for text in walk(entry):
            for secret in secrets:
                assert secret not in text, (entry["event"], secret)
