"""Request field rules: presence and types, usernames, email addresses and new passwords."""

from __future__ import annotations

from typing import Any

import pytest

from server.domain import (
    InvalidEmail,
    InvalidField,
    InvalidRequest,
    InvalidUsername,
    MissingField,
    PasswordTooLong,
    PasswordTooShort,
)
from server.validation import (
    EMAIL_MAX_CHARS,
    USERNAME_MAX_CHARS,
    clean_email,
    clean_new_password,
    clean_username,
    optional_object,
    optional_string,
    required_string,
    sign_in_password,
)

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
