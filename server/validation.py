"""The rules for request fields: presence, types, usernames, email addresses and passwords.

Pure functions that return the cleaned value or raise an InvalidRequest subclass whose message names the
rule that failed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from server.domain import (
    InvalidEmail,
    InvalidField,
    InvalidUsername,
    MissingField,
    PasswordTooLong,
    PasswordTooShort,
)
from server.security import BCRYPT_MAX_BYTES, email_key, password_bytes
from server.security import EMAIL_MAX_CHARS as EMAIL_MAX_CHARS  # part of the field rules, kept with the key

USERNAME_MAX_CHARS = 128
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


def clean_username(value: str) -> str:
    username = value.strip()
    if not username:
        raise InvalidUsername("The username must not be empty.")
    if len(username) > USERNAME_MAX_CHARS:
        raise InvalidUsername(f"The username must be at most {USERNAME_MAX_CHARS} characters long.")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in username):
        raise InvalidUsername("The username must not contain control or invisible characters.")
    return username


def clean_email(value: str) -> str:
    """The address as given (trimmed), once it is known to be a syntactically valid one."""
    email = value.strip()
    if not email:
        raise InvalidEmail("The email must not be empty.")
    if len(email) > EMAIL_MAX_CHARS:
        raise InvalidEmail(f"The email address must be at most {EMAIL_MAX_CHARS} characters long.")
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
    encoded = sign_in_password(value)
    if len(unicodedata.normalize("NFKC", value)) < min_length:
        raise PasswordTooShort(f"The password must be at least {min_length} characters long.")
    if len(encoded) > BCRYPT_MAX_BYTES:
        raise PasswordTooLong(f"The password must be at most {BCRYPT_MAX_BYTES} bytes long in UTF-8.")
    return encoded


def sign_in_password(value: str) -> bytes:
    try:
        return password_bytes(value)
    except UnicodeEncodeError:
        raise InvalidField("The password must be valid Unicode text.") from None
