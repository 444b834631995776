"""Request field rules: presence and types, usernames, email addresses, new passwords and metadata, and the
size bounds that hold before any normalising or hashing, through HTTP too."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient

from server import security
from server.domain import (
    InvalidEmail,
    InvalidField,
    InvalidRequest,
    InvalidUsername,
    MissingField,
    PasswordTooLong,
    PasswordTooShort,
)
from server.jsontext import nested_deeper_than
from server.validation import (
    EMAIL_MAX_CHARS,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    PASSWORD_RAW_MAX_CHARS,
    RAW_SLACK,
    USERNAME_MAX_CHARS,
    clean_email,
    clean_new_password,
    clean_username,
    optional_metadata,
    optional_object,
    optional_string,
    required_string,
    sign_in_password,
)
from server.web.bodies import MAX_BODY_BYTES, MAX_JSON_DEPTH
from tests.conftest import PASSWORD, sign_up

# A syntactically valid address of exactly 254 characters.
LONGEST_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"


# Field presence and types


def test_required_string_returns_the_value_untouched() -> None:
    assert required_string({"username": "  alice "}, "username") == "  alice "
    assert required_string({"username": ""}, "username") == ""


@pytest.mark.parametrize("body", [{}, {"username": None}, {"other": "x"}])
def test_required_string_missing(body: dict[str, Any]) -> None:
    with pytest.raises(MissingField) as caught:
        required_string(body, "username")
    assert "username" in caught.value.message
    assert caught.value.code == "missing_field"


@pytest.mark.parametrize("value", [5, 1.5, True, False, ["alice"], {"name": "alice"}, b"alice"])
def test_required_string_wrong_type(value: object) -> None:
    with pytest.raises(InvalidField) as caught:
        required_string({"password": value}, "password")
    assert "password" in caught.value.message
    assert "string" in caught.value.message
    assert caught.value.code == "invalid_field"


def test_optional_string() -> None:
    assert optional_string({}, "email") is None
    assert optional_string({"email": None}, "email") is None
    assert optional_string({"email": "a@example.com"}, "email") == "a@example.com"
    assert optional_string({"email": ""}, "email") == ""


@pytest.mark.parametrize("value", [0, True, ["a@example.com"], {"a": 1}])
def test_optional_string_wrong_type(value: object) -> None:
    with pytest.raises(InvalidField, match="email"):
        optional_string({"email": value}, "email")


def test_optional_object() -> None:
    assert optional_object({}, "metadata") is None
    assert optional_object({"metadata": None}, "metadata") is None
    assert optional_object({"metadata": {}}, "metadata") == {}
    metadata = {"team": "ops", "nested": {"n": [1, 2]}}
    assert optional_object({"metadata": metadata}, "metadata") == metadata


@pytest.mark.parametrize("value", ["{}", 1, True, [], [{"a": 1}]])
def test_optional_object_wrong_type(value: object) -> None:
    with pytest.raises(InvalidField) as caught:
        optional_object({"metadata": value}, "metadata")
    assert "metadata" in caught.value.message
    assert "object" in caught.value.message


def test_field_errors_are_bad_requests() -> None:
    for error in (InvalidField, MissingField, InvalidUsername, InvalidEmail, PasswordTooShort, PasswordTooLong):
        assert issubclass(error, InvalidRequest)
        assert error.status == 400


# Usernames


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("alice", "alice"),
        ("  alice  ", "alice"),
        ("\talice\n", "alice"),
        ("Alice Smith", "Alice Smith"),
        ("José  Müller", "José  Müller"),
        ("张伟", "张伟"),
        ("Ólafur Arnalds", "Ólafur Arnalds"),
        ("abc@example.com", "abc@example.com"),
        ("user.name-1_2", "user.name-1_2"),
        ("Zoë 😀", "Zoë 😀"),
        ("a\u00a0b", "a\u00a0b"),  # a no-break space is a visible space
        ("a", "a"),
    ],
)
def test_clean_username_accepts(raw: str, clean: str) -> None:
    assert clean_username(raw) == clean


def test_clean_username_keeps_case() -> None:
    assert clean_username("MiXeD") == "MiXeD"


@pytest.mark.parametrize("raw", ["", " ", "\t\n ", "\u3000"])
def test_clean_username_refuses_empty(raw: str) -> None:
    with pytest.raises(InvalidUsername, match="empty"):
        clean_username(raw)


def test_clean_username_length_limit_is_in_characters() -> None:
    assert clean_username("a" * USERNAME_MAX_CHARS) == "a" * USERNAME_MAX_CHARS
    assert clean_username("é" * USERNAME_MAX_CHARS) == "é" * USERNAME_MAX_CHARS  # 256 bytes, 128 characters
    assert clean_username("  " + "a" * USERNAME_MAX_CHARS + "  ") == "a" * USERNAME_MAX_CHARS
    with pytest.raises(InvalidUsername, match="128"):
        clean_username("a" * (USERNAME_MAX_CHARS + 1))


@pytest.mark.parametrize(
    "raw",
    [
        "al\nice",
        "al\x00ice",
        "al\tice",
        "al\x7fice",
        "al\x1bice",
        "al\u0085ice",  # NEXT LINE (C1 control)
        "al\u200bice",  # ZERO WIDTH SPACE
        "al\u200dice",  # ZERO WIDTH JOINER
        "al\ufeffice",  # ZERO WIDTH NO-BREAK SPACE
        "\u202eecila",  # RIGHT-TO-LEFT OVERRIDE
        "al\u2066ice",  # LEFT-TO-RIGHT ISOLATE
        "al\u00adice",  # SOFT HYPHEN
        "al\ue000ice",  # private use
        "al\U000f0000ice",  # supplementary private use
        "al\u2028ice",  # LINE SEPARATOR
        "al\u2029ice",  # PARAGRAPH SEPARATOR
        "al\ud800ice",  # lone surrogate
        "al\u0378ice",  # unassigned
        "\u200b",
    ],
)
def test_clean_username_refuses_control_and_invisible_characters(raw: str) -> None:
    with pytest.raises(InvalidUsername, match="control or invisible"):
        clean_username(raw)


# Email addresses


@pytest.mark.parametrize(
    "raw",
    ["abc@example.com", "first.last+tag@sub.example.co.uk", "Abc.Def@Example.COM", "josé@exämple.com", LONGEST_EMAIL],
)
def test_clean_email_accepts_and_keeps_the_address_as_given(raw: str) -> None:
    assert clean_email(raw) == raw


def test_clean_email_trims() -> None:
    assert clean_email("  Abc@Example.com\n") == "Abc@Example.com"


@pytest.mark.parametrize(
    "raw",
    [
        "not-an-email",
        "a@",
        "@example.com",
        "a b@example.com",
        "a@b@example.com",
        "abc@example..com",
        "abc@-example.com",
        "abc.@example.com",
        "abc@localhost",
        "abc@example.com\n.evil",
        "abc\x00@example.com",
        "abc\ud800@example.com",
    ],
)
def test_clean_email_refuses_invalid(raw: str) -> None:
    with pytest.raises(InvalidEmail, match="not valid"):
        clean_email(raw)


@pytest.mark.parametrize("raw", ["", "   "])
def test_clean_email_refuses_empty(raw: str) -> None:
    with pytest.raises(InvalidEmail, match="empty"):
        clean_email(raw)


def test_clean_email_refuses_over_254_characters() -> None:
    assert len(LONGEST_EMAIL) == EMAIL_MAX_CHARS
    too_long = "a" + LONGEST_EMAIL
    with pytest.raises(InvalidEmail, match="254"):
        clean_email(too_long)


def test_clean_email_counts_length_after_trimming() -> None:
    assert clean_email("  " + LONGEST_EMAIL + "  ") == LONGEST_EMAIL


# New passwords


def test_clean_new_password_returns_the_bytes_to_hash() -> None:
    assert clean_new_password("abc321", 6) == b"abc321"
    assert clean_new_password("pässwörd", 6) == "pässwörd".encode()


def test_clean_new_password_normalises_to_nfkc() -> None:
    assert clean_new_password("\uff41\uff42\uff43\uff13\uff12\uff11", 6) == b"abc321"
    assert clean_new_password("A\u030a" * 6, 6) == "\u00c5".encode() * 6


def test_clean_new_password_keeps_spaces_and_case() -> None:
    assert clean_new_password(" Abc 321 ", 6) == b" Abc 321 "


@pytest.mark.parametrize("password", ["", "a", "abc32", "     "])
def test_clean_new_password_default_minimum_is_six(password: str) -> None:
    with pytest.raises(PasswordTooShort) as caught:
        clean_new_password(password, 6)
    assert "6" in caught.value.message


def test_clean_new_password_raised_minimum() -> None:
    with pytest.raises(PasswordTooShort) as caught:
        clean_new_password("abc321xyz", 10)
    assert "10" in caught.value.message
    assert clean_new_password("abc321wxyz", 10) == b"abc321wxyz"


def test_clean_new_password_minimum_counts_characters_not_bytes() -> None:
    assert clean_new_password("éééééé", 6) == "éééééé".encode()  # 6 characters, 12 bytes
    for short in ("ééééé", "😀" * 5, "€€€€€"):  # 5 characters, 10 to 20 bytes
        with pytest.raises(PasswordTooShort):
            clean_new_password(short, 6)


def test_clean_new_password_minimum_counts_characters_after_nfkc() -> None:
    with pytest.raises(PasswordTooShort):
        clean_new_password("e\u0301" * 5, 6)  # 10 code points typed, 5 characters after NFKC


def test_clean_new_password_exactly_72_bytes_is_accepted() -> None:
    assert clean_new_password("a" * 72, 6) == b"a" * 72
    assert clean_new_password("é" * 36, 6) == "é".encode() * 36
    assert clean_new_password("€" * 24, 6) == "€".encode() * 24


@pytest.mark.parametrize("password", ["a" * 73, "a" * 1000, "é" * 37, "€" * 25, "a" * 71 + "é", "😀" * 19])
def test_clean_new_password_over_72_bytes_is_refused(password: str) -> None:
    assert len(password) <= 72 or password.isascii()
    with pytest.raises(PasswordTooLong) as caught:
        clean_new_password(password, 6)
    assert "72" in caught.value.message
    assert "bytes" in caught.value.message


def test_clean_new_password_maximum_counts_bytes_after_nfkc() -> None:
    # 37 decomposed "é" are 111 bytes as typed but 74 after NFKC composes them: still too long.
    with pytest.raises(PasswordTooLong):
        clean_new_password("e\u0301" * 37, 6)
    # 36 decomposed "é" are 108 bytes as typed but exactly 72 after NFKC.
    assert clean_new_password("e\u0301" * 36, 6) == "é".encode() * 36


@pytest.mark.parametrize("password", ["abc321\ud800", "\udfff" * 10, "ab\ud83d"])
def test_clean_new_password_refuses_lone_surrogates(password: str) -> None:
    with pytest.raises(InvalidField, match="Unicode"):
        clean_new_password(password, 6)


def test_sign_in_password() -> None:
    assert sign_in_password("\uff41\uff42\uff43") == b"abc"
    assert sign_in_password("") == b""  # no length rules when signing in
    with pytest.raises(InvalidField):
        sign_in_password("\ud800")


# Size bounds that hold before any work grows with the input. U+FDFA is one character NFKC makes 18.

EXPANDING = "\ufdfa"


@pytest.fixture
def normalised(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every string NFKC-normalised while the test runs."""
    lengths: list[int] = []
    original = unicodedata.normalize

    def recording(form: Literal["NFC", "NFD", "NFKC", "NFKD"], text: str) -> str:
        lengths.append(len(text))
        return original(form, text)

    monkeypatch.setattr(unicodedata, "normalize", recording)
    return lengths


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every bcrypt function the hashing pool runs while the test runs."""
    calls: list[str] = []

    def counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            calls.append(name)
            return function(*args)

        return counted

    for name in ("hash_password", "check_password"):
        monkeypatch.setattr(security, name, counting(name, getattr(security, name)))
    return calls


def nested(depth: int) -> dict[str, Any]:
    """An object whose objects nest ``depth`` levels deep, itself the first."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("clean", "value", "error", "message"),
    [
        # Valid once trimmed, but longer raw than any value needs: refused unread.
        (clean_username, " " * (RAW_SLACK * USERNAME_MAX_CHARS) + "bob", InvalidUsername, "at most 128 characters"),
        (clean_email, " " * (RAW_SLACK * EMAIL_MAX_CHARS) + "a@example.com", InvalidEmail, "at most 254 characters"),
        (clean_username, EXPANDING * 2500, InvalidUsername, "at most 128 characters"),
        (clean_email, EXPANDING * 2500 + "@example.com", InvalidEmail, "at most 254 characters"),
    ],
    ids=["padded username", "padded email", "expanding username", "expanding email"],
)
def test_an_identifier_too_long_raw_is_refused_before_it_is_normalised(
    normalised: list[int], clean: Callable[[str], str], value: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        clean(value)
    assert normalised == []


@pytest.mark.parametrize(
    ("clean", "value", "error"),
    [
        (clean_username, EXPANDING * 100, InvalidUsername),  # 100 characters, a 1,800-character key
        (clean_email, EXPANDING * 60 + "@example.com", InvalidEmail),
    ],
    ids=["username", "email"],
)
def test_an_identifier_whose_key_nfkc_grows_past_the_bound_is_refused(
    clean: Callable[[str], str], value: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match="once normalised"):
        clean(value)


def test_identifiers_with_room_to_spare_are_accepted() -> None:
    assert clean_username("  " + "ß" * USERNAME_MAX_CHARS + "  ") == "ß" * USERNAME_MAX_CHARS  # key: 256 "s"
    assert clean_email(" " * 100 + LONGEST_EMAIL) == LONGEST_EMAIL


def test_a_new_password_too_long_raw_is_refused_before_it_is_normalised(normalised: list[int]) -> None:
    with pytest.raises(PasswordTooLong, match="72 bytes"):
        clean_new_password(EXPANDING * 2500, 6)
    assert normalised == []


def test_a_sign_in_password_too_long_raw_is_not_normalised_and_cannot_match(normalised: list[int]) -> None:
    password = sign_in_password(EXPANDING * (PASSWORD_RAW_MAX_CHARS + 1))
    assert normalised == []
    assert len(password) > security.BCRYPT_MAX_BYTES  # which check_password never matches
    assert sign_in_password("\u2167" * PASSWORD_RAW_MAX_CHARS) == b"VIII" * PASSWORD_RAW_MAX_CHARS  # NFKC within it


def test_metadata_as_deep_as_allowed_is_kept() -> None:
    metadata = nested(METADATA_MAX_DEPTH)
    assert optional_metadata({"metadata": metadata}) is metadata
    assert optional_metadata({}) is None


@pytest.mark.parametrize("shape", ["objects", "arrays"])
def test_metadata_too_deep_is_refused_naming_the_rule(shape: str) -> None:
    metadata = nested(METADATA_MAX_DEPTH + 1) if shape == "objects" else {"a": [[[1]]] * 1}
    if shape == "arrays":
        inner: list[Any] = []
        metadata = {"a": inner}
        for _ in range(METADATA_MAX_DEPTH - 1):
            inner.append([])
            inner = inner[0]
    with pytest.raises(InvalidField, match=f"at most {METADATA_MAX_DEPTH} levels deep"):
        optional_metadata({"metadata": metadata})


def test_metadata_larger_than_the_body_limit_as_json_is_refused() -> None:
    # 1e15 takes 5 bytes in a body and 19 as JSON written back (1000000000000000.0): fits a body, not the rule.
    metadata = {"n": [1e15] * 1000}
    assert len(json.dumps({"metadata": metadata}).replace("1000000000000000.0", "1e15")) < MAX_BODY_BYTES
    with pytest.raises(InvalidField, match=f"at most {METADATA_MAX_BYTES} bytes"):
        optional_metadata({"metadata": metadata})
    assert METADATA_MAX_BYTES == MAX_BODY_BYTES


def test_nested_deeper_than_counts_objects_and_arrays_not_scalars() -> None:
    assert not nested_deeper_than({"a": 1, "b": [1, "x"]}, 2)
    assert nested_deeper_than({"a": 1, "b": [1, ["x"]]}, 2)
    assert not nested_deeper_than("scalar", 0)
    assert nested_deeper_than(nested(100_000), 99_999)  # iterative: no depth exhausts the stack


async def test_sign_in_with_an_identifier_too_long_raw_gets_400_and_no_bcrypt(
    client: TestClient[Any, Any], bcrypt_calls: list[str], normalised: list[int]
) -> None:
    for field, code in (("username", "invalid_username"), ("email", "invalid_email")):
        response = await client.post("/user/auth", json={field: EXPANDING * 2500, "password": PASSWORD})
        assert response.status == 400
        assert (await response.json())["code"] == code
    assert bcrypt_calls == []
    assert max(normalised, default=0) <= RAW_SLACK * EMAIL_MAX_CHARS


async def test_sign_in_with_a_key_nfkc_grows_past_the_bound_gets_400_and_no_bcrypt(
    client: TestClient[Any, Any], bcrypt_calls: list[str]
) -> None:
    response = await client.post("/user/auth", json={"username": EXPANDING * 100, "password": PASSWORD})
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_username"
    assert bcrypt_calls == []


async def test_signup_with_an_identifier_too_long_raw_gets_400_and_no_bcrypt(
    client: TestClient[Any, Any], bcrypt_calls: list[str], normalised: list[int]
) -> None:
    padded = " " * (RAW_SLACK * EMAIL_MAX_CHARS) + "new@example.com"  # valid once trimmed
    response = await client.post("/user", json={"username": "new", "email": padded, "password": PASSWORD})
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_email"
    response = await client.post(
        "/user", json={"username": "new", "email": EXPANDING * 2500 + "@example.com", "password": PASSWORD}
    )
    assert response.status == 400
    assert bcrypt_calls == []
    assert max(normalised, default=0) <= RAW_SLACK * EMAIL_MAX_CHARS


@pytest.mark.parametrize(
    "metadata",
    [json.dumps(nested(METADATA_MAX_DEPTH + 1)), '{"n":[' + ",".join(["1e15"] * 1000) + "]}"],
    ids=["too deep", "too large as JSON"],
)
async def test_signup_with_metadata_too_deep_or_large_gets_400_and_no_bcrypt(
    client: TestClient[Any, Any], bcrypt_calls: list[str], metadata: str
) -> None:
    raw = f'{{"username":"meta","email":"meta@example.com","password":"{PASSWORD}","metadata":{metadata}}}'
    response = await client.post("/user", data=raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status == 400
    error = await response.json()
    assert error["code"] == "invalid_field"
    assert "metadata must be" in error["message"]
    assert bcrypt_calls == []


async def test_signup_with_metadata_as_deep_as_allowed_is_kept(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client, metadata=nested(METADATA_MAX_DEPTH))
    response = await client.get("/user", headers={"Authorization": f"Bearer {token}"})
    assert (await response.json())["metadata"] == nested(METADATA_MAX_DEPTH)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, *range(960, 1001, 5), 5000])
async def test_a_body_nested_too_deep_gets_400_at_parse_time(
    client: TestClient[Any, Any], bcrypt_calls: list[str], depth: int
) -> None:
    """Around 975 levels a body once passed the parser and failed in storage with a RecursionError (500)."""
    # Depth counts the body itself: an object holding arrays, as metadata or as a field the API ignores.
    for field in ("metadata", "unknown"):
        inner = '{"a":' + "[" * (depth - 2) + "]" * (depth - 2) + "}"
        raw = f'{{"username":"deep","email":"deep@example.com","password":"{PASSWORD}","{field}":{inner}}}'
        response = await client.post("/user", data=raw.encode(), headers={"Content-Type": "application/json"})
        assert response.status == 400, (field, response.status)
        error = await response.json()
        assert error["code"] == "malformed_body"
        assert f"at most {MAX_JSON_DEPTH} levels" in error["message"]
    assert bcrypt_calls == []


async def test_a_body_as_deep_as_allowed_is_parsed(client: TestClient[Any, Any]) -> None:
    inner = "{" + '"a":{' * (MAX_JSON_DEPTH - 2) + "}" * (MAX_JSON_DEPTH - 1)
    raw = f'{{"username":"deep","email":"deep@example.com","password":"{PASSWORD}","unknown":{inner}}}'
    response = await client.post("/user", data=raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status == 200
