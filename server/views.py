"""How a user is shown: one function per shape, used by every handler and the admin command line.

- ``user_summary``: the sign-in answer's ``user`` (the seed's fields).
- ``user_details``: ``GET /user`` (the seed's fields with scopes, and metadata when set).
- ``user_object``: the user API's user object, for admins and the command line (every field but the hash).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from server.domain import User


def iso_ms(milliseconds: int) -> str:
    """An ISO 8601 UTC timestamp with milliseconds, as the user object's ``created``: 2026-11-29T14:00:00.000Z."""
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}Z"


def user_summary(user: User) -> dict[str, Any]:
    """The user as sign-in returns it."""
    return {
        "id": user.id,
        "username": user.username,
        "isActive": user.is_active,
        "email": user.email,
        "plan": user.plan,
    }


def user_details(user: User) -> dict[str, Any]:
    """The user as GET /user returns it: the summary with scopes, and metadata when set."""
    details: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "isActive": user.is_active,
        "email": user.email,
        "scope": list(user.scope),
        "plan": user.plan,
    }
    if user.metadata is not None:
        details["metadata"] = user.metadata
    return details


def user_object(user: User) -> dict[str, Any]:
    """The user API's user object: every field but the password hash and the revocation state."""
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "isActive": user.is_active,
        "scope": list(user.scope),
        "plan": user.plan,
        "vendor": list(user.vendor),
        "metadata": dict(user.metadata) if user.metadata is not None else {},
        "created": iso_ms(user.created),
    }
