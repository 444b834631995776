"""Pure, synchronous security primitives: identifiers, password hashing (bcrypt) and tokens (PyJWT, HS256).

Identifiers: the keys usernames and emails are kept unique and matched by (``identifier_key``,
``email_key``), and the confusable skeleton that keeps look-alike usernames apart (``username_skeleton``).

bcrypt here is deliberately slow and blocking; callers in async code run it on a worker thread (see
``server.hashing``). PyJWT errors are translated to ``InvalidToken`` at this boundary.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import re
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bcrypt

from server.domain import InvalidEmail, InvalidToken, JsonObject, NewUser

BCRYPT_MAX_BYTES = 72
EMAIL_MAX_CHARS = 254  # RFC 5321's limit on a path, less its angle brackets
TOKEN_ALGORITHM = "HS256"  # noqa: S105 (an algorithm name, not a secret)
USER_ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_user_id(now: float | None = None) -> str:
    """24 lower-case hex characters: 4 bytes of seconds since the epoch, then 8 random bytes."""
    seconds = int(time.time() if now is None else now) & 0xFFFFFFFF
    return seconds.to_bytes(4, "big").hex() + os.urandom(8).hex()


def build_new_user(
    username: str,
    email: str,
    password_hash: str,
    scope: tuple[str, ...],
    plan: str,
    metadata: JsonObject | None = None,
    *,
    user_id: str | None = None,
    created: int | None = None,
    vendor: tuple[str, ...] = (),
    is_active: bool = False,
    token_version: int = 0,
) -> NewUser:
    """A user to add, with the unique keys derived from the username and the email in this one place.

    Without ``user_id`` the user is new: a fresh id, and ``created`` now in milliseconds (the id holds whole
    seconds), so users made in one second sort in order. An import passes the id and the rest it kept.
    """
    if user_id is None:
        now = time.time()
        user_id = new_user_id(now)
        created = int(now * 1000) if created is None else created
    return NewUser(
        id=user_id,
        username=username,
        username_key=identifier_key(username),
        username_skeleton=username_skeleton(username),
        email=email,
        email_key=email_key(email),
        password_hash=password_hash,
        scope=scope,
        plan=plan,
        metadata=metadata,
        vendor=vendor,
        created=created,
        is_active=is_active,
        token_version=token_version,
    )


def identifier_key(value: str) -> str:
    """The form usernames and emails are matched and kept unique by: NFKC, case-folded, NFKC again, trimmed.

    Normalising first and trimming last makes the key the same for every normal form (NFKC can turn a
    character into white space and a combining mark); the second NFKC because case folding can leave a
    string that is no longer normalised (some Greek letters). ``identifier_key(identifier_key(x))`` is
    ``identifier_key(x)``.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold()).strip()


def email_key(email: str, *, strict: bool = True) -> str:
    """The form emails are matched and kept unique by: ``identifier_key`` of the local part, "@", and the
    domain's ASCII form (A-labels) under IDNA 2008 with UTS #46 mapping, lower-cased.

    So ``bücher.example`` and ``xn--bcher-kva.example`` are one domain, as they are one in DNS, while
    ``straße.example`` and ``strasse.example`` stay two (IDNA 2008 keeps ß; case folding alone made it ss).
    The local part is matched as usernames are (NFKC, case-folded): mail systems treat it case-insensitively
    in practice, and nothing provider-specific (dots, ``+tags``) is removed, since only the provider knows.

    An address without "@", longer than ``EMAIL_MAX_CHARS`` or whose domain IDNA refuses, raises
    InvalidEmail; with ``strict=False`` it gets ``identifier_key(email)`` instead, for keys that must exist
    for any text (sign-in, rate limits). The length bound comes first: IDNA costs about 4 us a character,
    and no stored address is longer.
    """
    # Imported on first use, like email_validator (which depends on it): start-up does not need it.
    import idna

    address = email.strip()
    local, at, domain = address.rpartition("@")
    try:
        if not at or len(address) > EMAIL_MAX_CHARS or not (local_key := identifier_key(local)):
            raise ValueError("not an address")
        ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii").lower()
    except (UnicodeError, ValueError):  # idna.IDNAError is both
        if strict:
            raise InvalidEmail("The email address is not valid.") from None
        return identifier_key(email)
    return f"{local_key}@{ascii_domain}"


def username_skeleton(username: str) -> str:
    """The confusable skeleton (Unicode UTS #39, section 4) of the username's key: two usernames whose
    skeletons are equal look alike (``admin`` and ``\u0430dmin`` with a Cyrillic a; ``m`` and ``rn``).

    Taken of ``identifier_key``, so case never makes two names confusable that the key already makes equal
    or different. ICU's SpoofChecker computes it with the confusables data of the ICU it bundles; stored
    skeletons are recomputed when that data changes (``skeleton_data_version``).
    """
    return str(_spoof_checker().getSkeleton(0, identifier_key(username)))


def skeleton_data_version() -> str:
    """Which confusables data ``username_skeleton`` uses: skeletons made with another are recomputed."""
    import icu

    return f"ICU {icu.ICU_VERSION}, Unicode {icu.UNICODE_VERSION}"


def skeleton_data_fingerprint() -> str:
    """The installed ICU extension module (its path, size and modification time), found without loading it;
    "" when there is none to find.

    Loading ICU costs about 12 ms of start-up, where only a signup needs it: a store that noted this
    fingerprint beside ``skeleton_data_version`` when it last made skeletons knows, while the fingerprint is
    unchanged, that the confusables data is too. Another ICU (an upgrade, or a PyICU built against another
    system ICU) is another file.
    """
    spec = importlib.util.find_spec("icu")
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.startswith("_icu_") and name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                path = os.path.join(directory, name)
                try:
                    status = os.stat(path)
                except OSError:
                    continue
                return f"{path}:{status.st_size}:{status.st_mtime_ns}"
    return ""


@functools.cache
def _spoof_checker() -> Any:
    # Built on first use: importing ICU maps its data (about 11 MiB resident), which only signups need.
    import icu

    return icu.SpoofChecker()


def password_bytes(password: str) -> bytes:
    """The bytes bcrypt sees: NFKC-normalised UTF-8, so visually identical passwords hash alike.

    Raises UnicodeEncodeError for strings that are not valid Unicode text (lone surrogates).
    """
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def hash_password(password: bytes, rounds: int) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode("ascii")


def check_password(password: bytes, password_hash: str) -> bool:
    """True when ``password`` matches. Over 72 bytes never matches, yet costs the same as a real check."""
    too_long = len(password) > BCRYPT_MAX_BYTES
    try:
        matched = bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], password_hash.encode("ascii"))
    except ValueError:
        return False
    return matched and not too_long


def hash_cost(password_hash: str) -> int | None:
    """The cost of a ``$2?$NN$`` bcrypt hash; None for anything else."""
    cost = password_hash[4:6]
    return int(cost) if password_hash[:2] == "$2" and password_hash[3:4] == "$" and cost.isdigit() else None


def needs_rehash(password_hash: str, rounds: int) -> bool:
    """True when a hash that just matched should be stored anew: its cost is not ``rounds``, or it is in
    another form than ``$2b$`` (``$2a$`` and ``$2y$`` from other implementations, which bcrypt checks alike)."""
    return not password_hash.startswith("$2b$") or hash_cost(password_hash) != rounds


def dummy_hash(rounds: int) -> str:
    """A well-formed bcrypt hash at ``rounds`` that no password matches, for checks against unknown users.

    Its salt is real, so checking against it costs exactly what a real check at that cost does, but no
    hash is computed up front (which would delay start-up by one full bcrypt run).
    """
    salt = bcrypt.gensalt(rounds).decode("ascii")
    return salt + "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says: whose it is, its scopes, when it was issued and when it expires."""

    user_id: str
    scope: tuple[str, ...]
    issued_at: int
    expires_at: int
    # The user's token_version when the token was issued (the ``ver`` claim; absent: 0).
    version: int = 0


class TokenCodec:
    """Issues and verifies HS256 JWTs with the claims ``id``, ``scope``, ``iat`` and ``exp``, and ``ver``.

    ``ver`` is the user's ``token_version`` when the token was issued (see ``domain.User``); it is left out
    when 0, so a never-revoked user's token carries the contract's four claims only, and a token without it
    is read as version 0.

    Verifying costs about 60 us of HMAC and JSON, on the event loop, for every authenticated request, so
    the claims of tokens that verified are remembered, keyed by the whole token (signature included: a
    token that differs by one byte is verified afresh) and only until the token's own ``exp``. At most
    ``cache_size`` tokens are remembered; the oldest is forgotten first.
    """

    def __init__(
        self,
        secret: bytes,
        lifetime_seconds: int,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        previous: Sequence[bytes] = (),
    ) -> None:
        self._secret = secret
        # Earlier secrets (JWT_SECRET_PREVIOUS): tokens they signed still verify; nothing new is signed with them.
        self._keys = (secret, *previous)
        self._lifetime = lifetime_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()

    def __repr__(self) -> str:
        return f"TokenCodec(lifetime_seconds={self._lifetime})"

    @property
    def cached(self) -> int:
        """Verified tokens remembered now."""
        return len(self._verified)

    def issue(self, user_id: str, scope: tuple[str, ...], now: float | None = None, *, version: int = 0) -> str:
        """A token for the user, carrying ``version``: their ``token_version`` now."""
        issued_at = int(self._clock() if now is None else now)
        claims = {"id": user_id, "scope": list(scope), "iat": issued_at, "exp": issued_at + self._lifetime}
        if version:
            claims["ver"] = version
        import jwt  # PyJWT, at the first token issued or checked (see _decode): not before the first answer

        return jwt.encode(claims, self._secret, algorithm=TOKEN_ALGORITHM)

    def remembered(self, token: str) -> TokenClaims | None:
        """The claims of a token verified before and not expired since; None for any other (``verify`` tells)."""
        claims = self._verified.get(token)
        if claims is not None and claims.expires_at > self._clock():
            return claims
        return None

    def verify(self, token: str) -> TokenClaims:
        """Return the claims of a valid token; raise InvalidToken (with a reason for the log) otherwise."""
        if not token.isascii():
            # A JWT is ASCII; aiohttp hands other header bytes over as lone surrogates, which PyJWT cannot encode.
            raise InvalidToken("malformed")
        claims = self._verified.get(token)
        if claims is not None:
            # PyJWT's own rule: a token is expired once ``exp <= now``.
            if claims.expires_at > self._clock():
                return claims
            del self._verified[token]
            raise InvalidToken("expired")
        claims = self._decode(token)
        if self._cache_size > 0:
            if len(self._verified) >= self._cache_size:
                self._verified.popitem(last=False)
            self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> TokenClaims:
        # PyJWT is imported here and in issue, at first use: its import (with its JWKS client's HTTP modules)
        # would be a tenth of the server's start-up, before the first answer, which needs no token.
        import jwt

        try:
            claims = self._claims(token)
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad_signature") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("issued_in_future") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("algorithm_not_allowed") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken("missing_claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        # PyJWT compares int(exp) and int(iat), which a string of digits passes; RFC 7519 wants numbers.
        if any(isinstance(claims[name], bool) or not isinstance(claims[name], int | float) for name in ("exp", "iat")):
            raise InvalidToken("malformed")
        user_id = claims["id"]
        scope = claims.get("scope", [])
        if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
            raise InvalidToken("malformed")
        if not isinstance(scope, list) or not all(isinstance(item, str) for item in scope):
            raise InvalidToken("malformed")
        version = claims.get("ver", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidToken("malformed")
        return TokenClaims(user_id, tuple(scope), int(claims["iat"]), int(claims["exp"]), version)

    def _claims(self, token: str) -> dict[str, Any]:
        """The token's claims under the first key whose signature matches (the current secret, then earlier ones)."""
        import jwt

        for key in self._keys[:-1]:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, self._keys[-1])

    @staticmethod
    def _decode_with(token: str, key: bytes) -> dict[str, Any]:
        import jwt

        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[TOKEN_ALGORITHM], options={"require": ["id", "iat", "exp"]}
        )
        return claims
