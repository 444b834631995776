"""The rules for request fields: presence, types, usernames, email addresses, passwords and metadata.

Pure functions that return the cleaned value or raise an InvalidRequest subclass whose message names the
rule that failed.

Every field's size is bounded before any work that grows with it. NFKC normalisation can make a string 18
times longer (U+FDFA), so an identifier or password longer than ``RAW_SLACK`` times its field's maximum is
refused (or, for a password at sign-in, checked without being normalised) before NFKC runs, and an
identifier's normalised key is bounded after; metadata is bounded in depth and size before any hashing.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any

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
from server.security import BCRYPT_MAX_BYTES, email_key, identifier_key, password_bytes
from server.security import EMAIL_MAX_CHARS as EMAIL_MAX_CHARS  # part of the field rules, kept with the key

USERNAME_MAX_CHARS = 128
# How many times its field's maximum a raw identifier or password may be long, and an identifier's normalised
# key too. Generous: a valid value needs slack only for the white space trimmed around it and, a password,
# for combining marks that NFKC composes (at most four characters into one of three bytes). Beyond it a value
# cannot be valid, and it is not worth normalising, looking up or keeping.
RAW_SLACK = 4
PASSWORD_RAW_MAX_CHARS = RAW_SLACK * BCRYPT_MAX_BYTES
# Metadata is a user's profile data, a few flat fields in Appmixer's own use. 16 levels is far beyond that
# and far below every recursive step it meets (the JSON encoders' ~1000 frames, orjson's 255). 16 KiB is the
# request body limit (server.web.bodies.MAX_BODY_BYTES): what a body carried fits, unless serialising it
# grew it (``1e15`` is written back as ``1000000000000000.0``) or it came from elsewhere.
METADATA_MAX_DEPTH = 16
METADATA_MAX_BYTES = 16 * 1024
_IDENTIFIERS: dict[str, tuple[int, type[InvalidRequest], str]] = {
    "username": (USERNAME_MAX_CHARS, InvalidUsername, "username"),
    "email": (EMAIL_MAX_CHARS, InvalidEmail, "email address"),
}
# Control, format (zero-width and direction marks), surrogate, private-use and unassigned code points, and the
# line and paragraph separators: characters a person cannot see or type reliably in a name.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def optional_string(body: Mapping[str, Any], name: str) -> str | None:
    """The field's value when it is a string, None when absent or null; InvalidField for any other type."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"The {name} field must be a string.")
    return value


def required_string(body: Mapping[str, Any], name: str) -> str:
    value = optional_string(body, name)
    if value is None:
        raise MissingField(f"The {name} field is required.")
    return value


def optional_object(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField(f"The {name} field must be a JSON object.")
    return value


def optional_metadata(body: Mapping[str, Any], name: str = "metadata") -> dict[str, Any] | None:
    """The field as a JSON object at most ``METADATA_MAX_DEPTH`` levels deep (the object itself is the first)
    and ``METADATA_MAX_BYTES`` long as compact UTF-8 JSON."""
    value = optional_object(body, name)
    if value is None:
        return None
    if nested_deeper_than(value, METADATA_MAX_DEPTH):
        raise InvalidField(f"The {name} must be nested at most {METADATA_MAX_DEPTH} levels deep.")
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):  # not JSON at all: only a caller other than the body parser could pass it
        raise InvalidField(f"The {name} field must be a JSON object.") from None
    if size > METADATA_MAX_BYTES:
        raise InvalidField(f"The {name} must be at most {METADATA_MAX_BYTES} bytes long as JSON.")
    return value


def optional_identifier(body: Mapping[str, Any], name: str) -> str | None:
    """``optional_string`` for ``username`` or ``email``, refused with the field's 400 when it is too long to
    normalise (``check_raw_identifier``)."""
    value = optional_string(body, name)
    if value is not None:
        check_raw_identifier(name, value)
    return value


def identifier_or_none(body: Mapping[str, Any], name: str) -> str | None:
    """The ``username`` or ``email`` field when it is a string short enough to normalise, else None, for
    callers that must not refuse (rate limiting counts every attempt); the field's own rule refuses it."""
    value = body.get(name)
    if not isinstance(value, str) or len(value) > RAW_SLACK * _IDENTIFIERS[name][0]:
        return None
    return value


def check_raw_identifier(name: str, value: str) -> None:
    """Refuse, before it is normalised, a ``username`` or ``email`` no trimming could bring within its
    field's maximum: longer than ``RAW_SLACK`` times it."""
    max_chars, error, label = _IDENTIFIERS[name]
    if len(value) > RAW_SLACK * max_chars:
        raise error(f"The {label} must be at most {max_chars} characters long.")


def check_identifier_key(name: str, key: str) -> None:
    """Refuse a ``username`` or ``email`` whose normalised key is longer than ``RAW_SLACK`` times the field's
    maximum: NFKC grew it far beyond what any real name becomes."""
    max_chars, error, label = _IDENTIFIERS[name]
    if len(key) > RAW_SLACK * max_chars:
        raise error(f"The {label} must be at most {RAW_SLACK * max_chars} characters long once normalised (NFKC).")


def clean_username(value: str) -> str:
    check_raw_identifier("username", value)
    username = value.strip()
    if not username:
        raise InvalidUsername("The username must not be empty.")
    if len(username) > USERNAME_MAX_CHARS:
        raise InvalidUsername(f"The username must be at most {USERNAME_MAX_CHARS} characters long.")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in username):
        raise InvalidUsername("The username must not contain control or invisible characters.")
    check_identifier_key("username", identifier_key(username))
    return username


def clean_email(value: str) -> str:
    """The address as given (trimmed), once it is known to be a syntactically valid one."""
    check_raw_identifier("email", value)
    email = value.strip()
    if not email:
        raise InvalidEmail("The email must not be empty.")
    if len(email) > EMAIL_MAX_CHARS:
        raise InvalidEmail(f"The email address must be at most {EMAIL_MAX_CHARS} characters long.")
    check_identifier_key("email", identifier_key(email))
    # Imported on first use: email_validator (with idna) is a third of what start-up imports beyond aiohttp.
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        raise InvalidEmail("The email address is not valid.") from None
    except UnicodeError:
        raise InvalidEmail("The email address is not valid.") from None
    email_key(email)  # the address's unique key needs its domain in IDNA form: InvalidEmail when there is none
    return email


def clean_new_password(value: str, min_length: int) -> bytes:
    """The bytes to hash for a new password, after NFKC normalisation and the length rules."""
    if len(value) > PASSWORD_RAW_MAX_CHARS:
        raise PasswordTooLong(f"The password must be at most {BCRYPT_MAX_BYTES} bytes long in UTF-8.")
    encoded = sign_in_password(value)
    if len(unicodedata.normalize("NFKC", value)) < min_length:
        raise PasswordTooShort(f"The password must be at least {min_length} characters long.")
    if len(encoded) > BCRYPT_MAX_BYTES:
        raise PasswordTooLong(f"The password must be at most {BCRYPT_MAX_BYTES} bytes long in UTF-8.")
    return encoded


def sign_in_password(value: str) -> bytes:
    """The bytes to check a password as. One too long to be valid is not normalised (NFKC could grow it
    18-fold) but encoded as sent: over ``BCRYPT_MAX_BYTES``, it never matches, yet costs a check like any."""
    try:
        if len(value) > PASSWORD_RAW_MAX_CHARS:
            return value.encode("utf-8")
        return password_bytes(value)
    except UnicodeEncodeError:
        raise InvalidField("The password must be valid Unicode text.") from None
