"""Parsing the admin calls' requests into the user service's typed inputs (``server.users``).

Only shapes and types are decided here (which parameters and fields exist, strings, booleans, lists, whole
numbers in range); the rules about values (scope names, username, email, password, metadata bounds) are the
service's, so the command line meets them too. A malformed query parameter is InvalidParameter naming it; a
body field of the wrong type, or one the call does not know, is InvalidField naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

from multidict import MultiMapping

from server.domain import BodyNotAnObject, InvalidField, InvalidParameter, MissingField, UserSortField
from server.users import PasswordReset, UserListing, UserUpdate
from server.validation import RAW_SLACK, USERNAME_MAX_CHARS

MAX_LIMIT = 1000
# Far beyond any store's size, and within every database's 64-bit OFFSET.
MAX_OFFSET = 1_000_000_000_000
# A filter's value, and a pattern, longer than any name they could match is refused before any work.
MAX_FILTER_CHARS = 256
MAX_PATTERN_CHARS = RAW_SLACK * USERNAME_MAX_CHARS
FILTER_FIELDS = ("scope", "plan", "isActive", "vendor")
SORT_FIELDS: tuple[UserSortField, ...] = get_args(UserSortField)
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,13}$")
# Parameters given at most once; ``filter`` may repeat.
_SINGLE_PARAMETERS = ("pattern", "sort", "limit", "offset")
# The PUT body's fields, by their name in the API, and the UserUpdate attribute each sets.
UPDATE_FIELDS = {
    "scope": "scope",
    "vendor": "vendor",
    "metadata": "metadata",
    "email": "email",
    "username": "username",
    "password": "password",
    "isActive": "is_active",
    "plan": "plan",
}


def parse_listing(query: MultiMapping[str], *, paged: bool = True) -> UserListing:
    """GET /users (``paged``) or GET /users/count: filters, pattern, and with ``paged`` sort, limit and offset.

    Parameters the API does not know are ignored (Appmixer's clients send more); GET /users/count ignores
    sort, limit and offset as unknown to it."""
    for name in _SINGLE_PARAMETERS if paged else ("pattern",):
        if len(query.getall(name, ())) > 1:
            raise InvalidParameter(f"The {name} parameter may be given once.")
    filters: dict[str, list[Any]] = {name: [] for name in FILTER_FIELDS}
    for text in query.getall("filter", ()):
        field, colon, value = text.partition(":")
        if not colon or not value:
            raise InvalidParameter("The filter parameter must be FIELD:VALUE, e.g. filter=scope:admin.")
        if field not in filters:
            raise InvalidParameter(f"The filter parameter's field must be one of {', '.join(FILTER_FIELDS)}.")
        if len(value) > MAX_FILTER_CHARS:
            raise InvalidParameter(f"The filter parameter's value must be at most {MAX_FILTER_CHARS} characters.")
        if field == "isActive":
            if value not in ("true", "false"):
                raise InvalidParameter("The filter parameter's isActive value must be true or false.")
            filters[field].append(value == "true")
        else:
            filters[field].append(value)
    pattern = query.get("pattern", "")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidParameter(f"The pattern parameter must be at most {MAX_PATTERN_CHARS} characters.")
    listing = UserListing(
        scope=tuple(filters["scope"]),
        plan=tuple(filters["plan"]),
        vendor=tuple(filters["vendor"]),
        is_active=tuple(filters["isActive"]),
        pattern=pattern,
    )
    if not paged:
        return listing
    sort, descending = _sort(query.get("sort"))
    limit = _whole_number(query, "limit", 1, MAX_LIMIT, listing.limit)
    offset = _whole_number(query, "offset", 0, MAX_OFFSET, listing.offset)
    return UserListing(
        scope=listing.scope,
        plan=listing.plan,
        vendor=listing.vendor,
        is_active=listing.is_active,
        pattern=listing.pattern,
        sort=sort,
        descending=descending,
        limit=limit,
        offset=offset,
    )


def _sort(text: str | None) -> tuple[UserSortField, bool]:
    if text is None:
        return "created", True
    field, colon, direction = text.partition(":")
    if not colon or direction not in ("1", "-1"):
        raise InvalidParameter("The sort parameter must be FIELD:1 or FIELD:-1, e.g. sort=username:1.")
    for name in SORT_FIELDS:
        if field == name:
            return name, direction == "-1"
    raise InvalidParameter(f"The sort parameter's field must be one of {', '.join(SORT_FIELDS)}.")


def _whole_number(query: MultiMapping[str], name: str, low: int, high: int, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidParameter(f"The {name} parameter must be a whole number from {low} to {high}.")
    return int(text)


def parse_update(body: Mapping[str, Any]) -> UserUpdate:
    """PUT /users/:id: at least one known field, each of its type; an unknown field is refused by name."""
    for name in body:
        if name not in UPDATE_FIELDS:
            raise InvalidField(f"The field {name!r} cannot be changed (known: {', '.join(UPDATE_FIELDS)}).")
    if not body:
        raise MissingField(f"Name at least one field to change: {', '.join(UPDATE_FIELDS)}.")
    values: dict[str, Any] = {}
    for name, value in body.items():
        values[UPDATE_FIELDS[name]] = _update_value(name, value)
    return UserUpdate(**values)


def _update_value(name: str, value: Any) -> Any:
    if name == "scope":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidField("The scope field must be a list of strings.")
        return tuple(value)
    if name == "vendor":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidField("The vendor field must be a string or a list of strings.")
        return tuple(value)
    if name == "metadata":
        if not isinstance(value, dict):
            raise InvalidField("The metadata field must be a JSON object.")
        return value
    if name == "isActive":
        if not isinstance(value, bool):
            raise InvalidField("The isActive field must be true or false.")
        return value
    if not isinstance(value, str):
        raise InvalidField(f"The {name} field must be a string.")
    return value


def parse_password_reset(body: Mapping[str, Any]) -> PasswordReset:
    """POST /user/reset-password: ``email`` and ``password``, both strings."""
    if not isinstance(body, Mapping):
        raise BodyNotAnObject()
    fields: dict[str, str] = {}
    for name in ("email", "password"):
        value = body.get(name)
        if value is None:
            raise MissingField(f"The {name} field is required.")
        if not isinstance(value, str):
            raise InvalidField(f"The {name} field must be a string.")
        fields[name] = value
    return PasswordReset(email=fields["email"], password=fields["password"])
