"""Security primitives: user ids, identifier keys, bcrypt hashing and HS256 tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import bcrypt
import jwt
import pytest

from server.domain import InvalidEmail, InvalidToken
from server.security import (
    BCRYPT_MAX_BYTES,
    TokenClaims,
    TokenCodec,
    check_password,
    dummy_hash,
    email_key,
    hash_password,
    identifier_key,
    new_user_id,
    password_bytes,
    skeleton_data_version,
    username_skeleton,
)

SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"  # 64 bytes: enough for HS512 too
OTHER_SECRET = b"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
LIFETIME = 3600
USER_ID = "65f1c0de0123456789abcdef"
ROUNDS = 4
BCRYPT_HASH = re.compile(r"^\$2b\$(\d\d)\$[./A-Za-z0-9]{53}$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"id": USER_ID, "scope": ["user"], "iat": now, "exp": now + LIFETIME}
    claims.update(changes)
    return claims


def signed(claims: dict[str, Any], key: bytes = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def rejection(codec: TokenCodec, token: str) -> str:
    """The reason ``codec`` gives for refusing ``token``; fail the test when it is accepted."""
    with pytest.raises(InvalidToken) as caught:
        codec.verify(token)
    # Whatever the reason, the caller sees the same sentence.
    assert caught.value.message == InvalidToken.default_message
    return caught.value.reason


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, LIFETIME)


# User ids


def test_new_user_id_starts_with_the_given_epoch_seconds() -> None:
    user_id = new_user_id(0x5F5E1000 + 0.9)
    assert re.fullmatch(r"[0-9a-f]{24}", user_id)
    assert user_id[:8] == "5f5e1000"
    assert bytes.fromhex(user_id)[:4] == (0x5F5E1000).to_bytes(4, "big")


def test_new_user_id_zero_pads_small_timestamps() -> None:
    assert new_user_id(1)[:8] == "00000001"


def test_new_user_id_defaults_to_now() -> None:
    before = int(time.time())
    user_id = new_user_id()
    after = int(time.time())
    assert re.fullmatch(r"[0-9a-f]{24}", user_id)
    assert before <= int(user_id[:8], 16) <= after


def test_new_user_ids_are_unique_even_in_the_same_second() -> None:
    ids = {new_user_id(1_700_000_000) for _ in range(1000)}
    assert len(ids) == 1000
    assert {user_id[:8] for user_id in ids} == {"6553f100"}


# Identifier keys


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("  Alice  ", "alice"),
        ("Abc@Example.COM", "abc@example.com"),
        ("\tbob\n", "bob"),
        ("Straße", "strasse"),
        ("\uff21\uff22\uff23\uff11\uff12\uff13", "abc123"),
        ("\ufb01le", "file"),
        ("\u212b", "\u00e5"),
        ("A\u030a", "\u00e5"),
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),
        ("with inner  spaces", "with inner  spaces"),
    ],
)
def test_identifier_key(raw: str, key: str) -> None:
    assert identifier_key(raw) == key


def test_identifier_key_makes_lookalikes_equal() -> None:
    assert identifier_key("\u212bngstr\u00f6m") == identifier_key("\u00c5NGSTRO\u0308M ")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        (" idn@B\u00fccher.example ", "idn@xn--bcher-kva.example"),
        ("IDN@XN--BCHER-KVA.EXAMPLE", "idn@xn--bcher-kva.example"),
        ("ss@stra\u00dfe.example", "ss@xn--strae-oqa.example"),  # IDNA 2008: ß is kept, not folded to ss
        ("ss@strasse.example", "ss@strasse.example"),
        ("Stra\u00dfe@example.com", "strasse@example.com"),  # the local part is folded as usernames are
        ("a@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "a@example.com"),  # full-width: UTS #46 mapping
        ("a@b\u3002example", "a@b.example"),  # an ideographic full stop separates labels
        ('"a@b"@example.com', '"a@b"@example.com'),  # the domain follows the last "@"
        ("\u0430dmin@example.com", "\u0430dmin@example.com"),  # local parts are not skeletons: see docs
    ],
)
def test_email_key(raw: str, key: str) -> None:
    assert email_key(raw) == key
    assert email_key(key) == key


@pytest.mark.parametrize(
    "raw", ["no-at-sign", "@example.com", "a@", "a@bad_domain.example", "a@xn--zz.example", "a@-a.example", "a@a..b"]
)
def test_email_key_refuses_what_idna_refuses_unless_lenient(raw: str) -> None:
    with pytest.raises(InvalidEmail):
        email_key(raw)
    assert email_key(raw, strict=False) == identifier_key(raw)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("admin", "\u0430dmin"),  # Cyrillic small a
        ("admin", "\u0410DMIN"),  # Cyrillic capital A: the skeleton is taken of the case-folded key
        ("paypal", "p\u0430yp\u0430l"),
        ("m", "rn"),
        ("alice1", "alicel"),
        ("scope", "\u0455\u0441\u043e\u0440\u0435"),  # all Cyrillic
        ("x", "\u00d7"),  # multiplication sign
    ],
)
def test_look_alike_usernames_share_a_skeleton(left: str, right: str) -> None:
    assert username_skeleton(left) == username_skeleton(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [("admin", "admins"), ("admin", "adm1n"), ("zoe", "zo\u00eb"), ("admin", "\u0430\u0434\u043c\u0438\u043d")],
)
def test_usernames_that_do_not_look_alike_have_different_skeletons(left: str, right: str) -> None:
    assert username_skeleton(left) != username_skeleton(right)


def test_skeleton_data_version_names_the_unicode_version() -> None:
    assert "Unicode " in skeleton_data_version()


# Password hashing


def test_hash_and_check_roundtrip() -> None:
    password_hash = hash_password(b"abc321", ROUNDS)
    match = BCRYPT_HASH.match(password_hash)
    assert match is not None
    assert match.group(1) == "04"
    assert check_password(b"abc321", password_hash)
    assert not check_password(b"abc322", password_hash)
    assert not check_password(b"ABC321", password_hash)
    assert not check_password(b"", password_hash)


def test_hashes_are_salted() -> None:
    assert hash_password(b"abc321", ROUNDS) != hash_password(b"abc321", ROUNDS)


def test_check_against_a_malformed_hash_is_false() -> None:
    assert not check_password(b"abc321", "not-a-bcrypt-hash")
    assert not check_password(b"abc321", "")


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("\u212b-secret", "\u00c5-secret"),  # ANGSTROM SIGN vs LATIN CAPITAL A WITH RING ABOVE
        ("A\u030a-secret", "\u00c5-secret"),  # decomposed vs precomposed
        ("\uff41\uff42\uff43\uff13\uff12\uff11", "abc321"),  # fullwidth vs ASCII
        ("abc\u2075\u2076", "abc56"),  # superscript digits
    ],
)
def test_password_in_another_normal_form_matches(typed: str, stored: str) -> None:
    assert password_bytes(typed) == password_bytes(stored)
    password_hash = hash_password(password_bytes(stored), ROUNDS)
    assert check_password(password_bytes(typed), password_hash)


def test_password_bytes_is_nfkc_utf8() -> None:
    assert password_bytes("\u00c5") == "\u00c5".encode()
    assert password_bytes("A\u030a") == b"\xc3\x85"
    assert password_bytes("abc321") == b"abc321"


def test_password_bytes_refuses_lone_surrogates() -> None:
    with pytest.raises(UnicodeEncodeError):
        password_bytes("abc\ud800")


def test_password_case_is_not_folded() -> None:
    assert password_bytes("Secret") != password_bytes("secret")


def test_exactly_72_bytes_matches() -> None:
    password = b"p" * BCRYPT_MAX_BYTES
    assert check_password(password, hash_password(password, ROUNDS))


def test_over_72_bytes_never_matches_even_with_the_right_prefix() -> None:
    prefix = b"p" * BCRYPT_MAX_BYTES
    password_hash = hash_password(prefix, ROUNDS)
    assert check_password(prefix, password_hash)
    assert not check_password(prefix + b"q", password_hash)
    assert not check_password(prefix + b"p" * 100, password_hash)


def test_dummy_hash_is_a_well_formed_hash_at_that_cost() -> None:
    for rounds in (4, 5, 12):
        dummy = dummy_hash(rounds)
        match = BCRYPT_HASH.match(dummy)
        assert match is not None, dummy
        assert int(match.group(1)) == rounds


def test_dummy_hash_is_accepted_by_bcrypt_and_matches_nothing() -> None:
    for _ in range(20):
        dummy = dummy_hash(ROUNDS)
        # bcrypt runs a full check against it (no ValueError), so it costs what a real check costs.
        assert bcrypt.checkpw(b"abc321", dummy.encode("ascii")) is False
        for password in (b"", b"abc321", b"p" * BCRYPT_MAX_BYTES):
            assert not check_password(password, dummy)


def test_dummy_hashes_differ() -> None:
    assert len({dummy_hash(ROUNDS) for _ in range(10)}) == 10


# Tokens: issuing


def test_issue_and_verify_roundtrip(codec: TokenCodec) -> None:
    now = int(time.time())
    token = codec.issue(USER_ID, ("user", "admin"), now=now)
    assert codec.verify(token) == TokenClaims(USER_ID, ("user", "admin"), now, now + LIFETIME)


def test_issued_token_claims_and_header(codec: TokenCodec) -> None:
    now = int(time.time())
    token = codec.issue(USER_ID, ("user",), now=now + 0.7)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload == {"id": USER_ID, "scope": ["user"], "iat": now, "exp": now + LIFETIME}


def test_issue_defaults_to_now(codec: TokenCodec) -> None:
    before = int(time.time())
    claims = codec.verify(codec.issue(USER_ID, ()))
    after = int(time.time())
    assert before <= claims.issued_at <= after
    assert claims.expires_at == claims.issued_at + LIFETIME
    assert claims.scope == ()


def test_lifetime_comes_from_the_codec() -> None:
    now = int(time.time())
    claims = TokenCodec(SECRET, 30 * 86400).verify(TokenCodec(SECRET, 30 * 86400).issue(USER_ID, (), now=now))
    assert claims.expires_at - claims.issued_at == 30 * 86400


def test_codec_repr_hides_the_secret(codec: TokenCodec) -> None:
    assert SECRET.decode() not in repr(codec)


# Tokens: rejection, with the reason for the log


def test_expired_token_is_rejected(codec: TokenCodec) -> None:
    token = codec.issue(USER_ID, ("user",), now=time.time() - LIFETIME - 60)
    assert rejection(codec, token) == "expired"


def test_token_signed_with_another_key_is_rejected(codec: TokenCodec) -> None:
    token = TokenCodec(OTHER_SECRET, LIFETIME).issue(USER_ID, ("user",))
    assert rejection(codec, token) == "bad_signature"


def test_a_previous_secret_verifies_but_never_signs() -> None:
    """JWT_SECRET_PREVIOUS: tokens signed before a rotation stay valid; new ones carry the new secret only."""
    old_token = TokenCodec(OTHER_SECRET, LIFETIME).issue(USER_ID, ("user",))
    rotated = TokenCodec(SECRET, LIFETIME, previous=[OTHER_SECRET])
    assert rotated.verify(old_token).user_id == USER_ID
    new_token = rotated.issue(USER_ID, ("user",))
    assert rotated.verify(new_token).user_id == USER_ID
    assert rejection(TokenCodec(OTHER_SECRET, LIFETIME), new_token) == "bad_signature"
    # A secret in neither place is still refused, and an expired token signed with a previous one too.
    third = b"x" * 40
    assert rejection(rotated, TokenCodec(third, LIFETIME).issue(USER_ID, ())) == "bad_signature"
    expired = TokenCodec(OTHER_SECRET, LIFETIME).issue(USER_ID, (), now=time.time() - LIFETIME - 60)
    assert rejection(rotated, expired) == "expired"


def test_alg_none_crafted_by_hand_is_rejected(codec: TokenCodec) -> None:
    token = b64url_json({"alg": "none", "typ": "JWT"}) + "." + b64url_json(valid_claims()) + "."
    assert rejection(codec, token) == "algorithm_not_allowed"


def test_alg_none_with_a_copied_signature_is_rejected(codec: TokenCodec) -> None:
    signature = codec.issue(USER_ID, ("user",)).rsplit(".", 1)[1]
    token = b64url_json({"alg": "none", "typ": "JWT"}) + "." + b64url_json(valid_claims()) + "." + signature
    assert rejection(codec, token) == "algorithm_not_allowed"


def test_alg_none_from_pyjwt_is_rejected(codec: TokenCodec) -> None:
    token = jwt.encode(valid_claims(), "", algorithm="none")
    assert rejection(codec, token) == "algorithm_not_allowed"


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_with_the_right_key_are_rejected(codec: TokenCodec, algorithm: str) -> None:
    token = signed(valid_claims(), SECRET, algorithm)
    assert rejection(codec, token) == "algorithm_not_allowed"


@pytest.mark.parametrize("claim", ["exp", "iat", "id"])
def test_missing_required_claim_is_rejected(codec: TokenCodec, claim: str) -> None:
    claims = valid_claims()
    del claims[claim]
    assert rejection(codec, signed(claims)) == "missing_claim"


@pytest.mark.parametrize("exp", ["tomorrow", "1999999999x", None, [1], {"at": 1}])
def test_non_numeric_exp_is_rejected(codec: TokenCodec, exp: object) -> None:
    reason = rejection(codec, signed(valid_claims(exp=exp)))
    assert reason in {"malformed", "missing_claim"}


@pytest.mark.parametrize("iat", ["yesterday", [1]])
def test_non_numeric_iat_is_rejected(codec: TokenCodec, iat: object) -> None:
    assert rejection(codec, signed(valid_claims(iat=iat))) == "malformed"


def test_token_issued_in_the_future_is_rejected(codec: TokenCodec) -> None:
    token = codec.issue(USER_ID, ("user",), now=time.time() + 3600)
    assert rejection(codec, token) == "issued_in_future"


@pytest.mark.parametrize(
    "user_id",
    [
        "zzzzzzzzzzzzzzzzzzzzzzzz",  # not hex
        "65F1C0DE0123456789ABCDEF",  # upper-case hex
        "65f1c0de0123456789abcde",  # 23 characters
        "65f1c0de0123456789abcdef0",  # 25 characters
        "65f1c0de0123456789abcdef\n",  # "$" alone would allow this trailing newline
        "",
        123456789012345678901234,
        ["65f1c0de0123456789abcdef"],
        {"$oid": "65f1c0de0123456789abcdef"},
    ],
)
def test_bad_user_id_is_rejected(codec: TokenCodec, user_id: object) -> None:
    assert rejection(codec, signed(valid_claims(id=user_id))) == "malformed"


def test_null_user_id_is_rejected(codec: TokenCodec) -> None:
    assert rejection(codec, signed(valid_claims(id=None))) in {"malformed", "missing_claim"}


@pytest.mark.parametrize("scope", ["admin", [1], ["user", None], {"admin": True}])
def test_bad_scope_is_rejected(codec: TokenCodec, scope: object) -> None:
    assert rejection(codec, signed(valid_claims(scope=scope))) == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "....",
        "Bearer x.y.z",
        "eyJhbGciOiJIUzI1NiJ9",
        "\u00e9.\u00e9.\u00e9",
    ],
)
def test_garbage_is_rejected(codec: TokenCodec, token: str) -> None:
    assert rejection(codec, token) == "malformed"


def test_validly_signed_payload_that_is_not_json_is_rejected(codec: TokenCodec) -> None:
    signing_input = b64url_json({"alg": "HS256", "typ": "JWT"}) + "." + b64url(b"not json")
    signature = hmac.new(SECRET, signing_input.encode("ascii"), hashlib.sha256).digest()
    assert rejection(codec, f"{signing_input}.{b64url(signature)}") == "malformed"


def test_validly_signed_payload_that_is_not_an_object_is_rejected(codec: TokenCodec) -> None:
    signing_input = b64url_json({"alg": "HS256", "typ": "JWT"}) + "." + b64url_json([USER_ID])
    signature = hmac.new(SECRET, signing_input.encode("ascii"), hashlib.sha256).digest()
    assert rejection(codec, f"{signing_input}.{b64url(signature)}") == "malformed"


def test_tampered_payload_is_rejected(codec: TokenCodec) -> None:
    header, _, signature = codec.issue(USER_ID, ("user",)).split(".")
    forged = b64url_json(valid_claims(scope=["admin"]))
    assert rejection(codec, f"{header}.{forged}.{signature}") == "bad_signature"


def test_tampered_signature_is_rejected(codec: TokenCodec) -> None:
    header, payload, signature = codec.issue(USER_ID, ("user",)).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert rejection(codec, f"{header}.{payload}.{flipped}") == "bad_signature"


def test_header_switched_to_another_algorithm_is_rejected(codec: TokenCodec) -> None:
    _, payload, signature = codec.issue(USER_ID, ("user",)).split(".")
    header = b64url_json({"alg": "HS512", "typ": "JWT"})
    assert rejection(codec, f"{header}.{payload}.{signature}") == "algorithm_not_allowed"


# The cache of verified tokens


class WallClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return original(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def test_a_verified_token_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = TokenCodec(SECRET, LIFETIME)
    token = codec.issue(USER_ID, ("user",))
    decodes = counting_decodes(monkeypatch)
    assert [codec.verify(token) for _ in range(5)] == [codec.verify(token)] * 5
    assert decodes == [token]


def test_a_cached_token_expires_exactly_at_its_exp() -> None:
    clock = WallClock()
    codec = TokenCodec(SECRET, 60, clock=clock)
    token = codec.issue(USER_ID, ("user",), now=clock.now)
    expires_at = codec.verify(token).expires_at
    assert codec.remembered(token) == codec.verify(token)
    clock.now = expires_at - 0.001
    assert codec.verify(token).user_id == USER_ID
    assert codec.remembered(token) == codec.verify(token)
    clock.now = expires_at
    assert codec.remembered(token) is None  # expired: verify says so
    assert rejection(codec, token) == "expired"


def test_a_token_one_byte_away_from_a_cached_one_is_verified_afresh() -> None:
    codec = TokenCodec(SECRET, LIFETIME)
    token = codec.issue(USER_ID, ("user",))
    assert codec.remembered(token) is None  # not verified yet
    codec.verify(token)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert codec.remembered(f"{header}.{payload}.{flipped}") is None
    assert rejection(codec, f"{header}.{payload}.{flipped}") == "bad_signature"
    forged = b64url(json.dumps({"id": USER_ID, "scope": ["admin"], "iat": 1, "exp": 2**40}).encode())
    assert rejection(codec, f"{header}.{forged}.{signature}") == "bad_signature"


def test_refused_tokens_are_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = TokenCodec(SECRET, LIFETIME)
    bad = TokenCodec(OTHER_SECRET, LIFETIME).issue(USER_ID, ("user",))
    decodes = counting_decodes(monkeypatch)
    for _ in range(3):
        rejection(codec, bad)
    assert len(decodes) == 3


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = TokenCodec(SECRET, LIFETIME, cache_size=2)
    tokens = [codec.issue(USER_ID, ("user",), now=time.time() - n) for n in range(3)]
    for token in tokens:
        codec.verify(token)
    decodes = counting_decodes(monkeypatch)
    for token in tokens[1:]:
        codec.verify(token)
    assert decodes == []  # the two newest are remembered
    codec.verify(tokens[0])
    assert decodes == [tokens[0]]  # the oldest was forgotten
