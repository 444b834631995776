"""Moving users in and out of a store: the export format, and reading it (or Appmixer's own user documents)
back, every line checked by the signup rules before anything is written.

The export format is JSON Lines (UTF-8, one user a line, in id order): the user API's user object
(``server.views.user_object``) plus two fields that leave the service nowhere else:

- ``password``: the bcrypt hash as stored, so users keep their passwords;
- ``tokenVersion``: the user's revocation state (``domain.User.token_version``), the number every token of
  theirs carries as its ``ver`` claim (absent: 0). Kept, it keeps a token revoked before the export revoked
  after the import, and a valid one valid (with the same JWT secret and the same id).

Import reads that format and Appmixer's user documents (as ``mongoexport`` writes them): ``_id`` as 24 hex
characters or ``{"$oid": ...}``, ``created`` as an ISO 8601 string or ``{"$date": ...}`` (an ISO string, epoch
milliseconds, or ``{"$numberLong": ...}``), ``password`` a bcrypt hash in ``$2a$``, ``$2b$`` or ``$2y$`` form
(kept as it is: bcrypt checks all three), and ``username``, ``email``, ``scope``, ``plan``, ``vendor``,
``isActive``, ``metadata``. Other fields are ignored. Required: the id, ``username``, ``email``, ``password``;
the rest default as for a new user (scope ``user``, the configured plan, inactive, no vendor, no metadata,
created at the id's second, token version 0). Empty metadata is no metadata (the user object shows both as
``{}``).

Checking is all in ``plan_import``; writing is one ``UserStore.add_many``, all or nothing. Conflicts (an id,
username, look-alike username or email that the store or an earlier line already holds) are found against
the keys of every stored user, read once, so each can be named by its line; the store's UNIQUE constraints
still decide, should a user be added in between.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Literal

import structlog

from server import validation
from server.config import SCOPE_PATTERN
from server.domain import (
    BodyNotAnObject,
    InvalidField,
    InvalidRequest,
    MalformedBody,
    MissingField,
    NewUser,
    User,
    UserStore,
)
from server.jsontext import TooDeep, loads_strict
from server.security import build_new_user, email_key, identifier_key, username_skeleton
from server.views import user_object

log = structlog.get_logger("mixauth.transfer")

OnConflict = Literal["fail", "skip"]

EXPORT_PAGE_SIZE = 1000
# A line longer than this cannot be a valid user (metadata is at most 16 KiB), so it is not even parsed.
MAX_LINE_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
PLAN_MAX_CHARS = 128
VENDOR_MAX_CHARS = 128
TOKEN_VERSION_MAX = 2**63 - 1  # a signed 64-bit integer, as databases store it
BCRYPT_HASH_PATTERN = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_HEX_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last millisecond an ISO timestamp (and so the user object's ``created``) can name: 9999-12-31.
_MAX_CREATED_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def export_record(user: User) -> dict[str, Any]:
    """One user as the export writes them: the user object, the hash and the revocation state."""
    return {**user_object(user), "password": user.password_hash, "tokenVersion": user.token_version}


def export_line(user: User) -> bytes:
    """One line of the export, newline included: compact UTF-8 JSON, fields in the user object's order."""
    text = json.dumps(export_record(user), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


async def export_users(store: UserStore, write: Callable[[bytes], object], page_size: int = EXPORT_PAGE_SIZE) -> int:
    """Write every user's export line, in id order, a page at a time; return how many users were written."""
    count = 0
    async for user in _all_users(store, page_size):
        write(export_line(user))
        count += 1
    log.info("users.exported", count=count)
    return count


async def _all_users(store: UserStore, page_size: int = EXPORT_PAGE_SIZE) -> AsyncIterator[User]:
    after: str | None = None
    while True:
        page = await store.list_users(limit=page_size, after=after)
        for user in page:
            yield user
        if len(page) < page_size:
            return
        after = page[-1].id


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's lines, newlines kept; a line longer than MAX_LINE_BYTES comes as its first
    MAX_LINE_BYTES + 1 bytes (which ``parse_line`` refuses), the rest of it read and dropped, so memory stays
    bounded whatever the file holds."""
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield raw


def parse_line(raw: bytes, *, default_plan: str) -> NewUser:
    """The user one line describes, checked by the signup rules; an InvalidRequest whose message says what
    is wrong otherwise (never a value of a password or hash)."""
    document = _json_object(raw)
    user_id = _user_id(document)
    username = validation.clean_username(_required_string(document, "username"))
    email = validation.clean_email(_required_string(document, "email"))
    password_hash = _required_string(document, "password")
    if not BCRYPT_HASH_PATTERN.fullmatch(password_hash):
        raise InvalidField("The password is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04 to 31, then 53 characters).")
    metadata = validation.optional_metadata(document)
    return build_new_user(
        username,
        email,
        password_hash,
        _scope(document.get("scope")),
        _plan(document.get("plan"), default_plan),
        metadata or None,
        user_id=user_id,
        vendor=_vendor(document.get("vendor")),
        created=_created(document.get("created")),
        is_active=_boolean(document, "isActive"),
        token_version=_token_version(document.get("tokenVersion")),
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    """The line as a JSON object: UTF-8, no NaN or infinities, no lone surrogates, at most MAX_JSON_DEPTH deep."""
    if len(raw) > MAX_LINE_BYTES:
        raise MalformedBody(f"The line is longer than {MAX_LINE_BYTES} bytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("The line is not UTF-8 text.") from None
    try:
        document = loads_strict(text, MAX_JSON_DEPTH)
    except TooDeep:
        raise MalformedBody(f"The line's JSON is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except ValueError:
        raise MalformedBody("The line is not valid JSON.") from None
    if not isinstance(document, dict):
        raise BodyNotAnObject("The line is not a JSON object.")
    return document


def _required_string(document: Mapping[str, Any], name: str) -> str:
    value = document.get(name)
    if value is None:
        raise MissingField(f"The {name} field is required.")
    if not isinstance(value, str):
        raise InvalidField(f"The {name} field must be a string.")
    return value


def _user_id(document: Mapping[str, Any]) -> str:
    """``id`` (the export's) or ``_id`` (Appmixer's: a string or ``{"$oid": ...}``), lower-cased."""
    found = [_id_value(document[name], name) for name in ("id", "_id") if document.get(name) is not None]
    if not found:
        raise MissingField("The id field (id or _id) is required.")
    if len(set(found)) > 1:
        raise InvalidField("The id and _id fields name different ids.")
    return found[0]


def _id_value(value: object, name: str) -> str:
    if isinstance(value, dict) and set(value) == {"$oid"}:
        value = value["$oid"]
    if not isinstance(value, str) or not _HEX_ID.fullmatch(value):
        raise InvalidField(f'The {name} field must be a user id: 24 hex characters (or {{"$oid": ...}}).')
    return value.lower()


def _scope(value: object) -> tuple[str, ...]:
    if value is None:
        return ("user",)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise InvalidField("The scope field must be a list of strings.")
    for name in value:
        if not SCOPE_PATTERN.fullmatch(name):
            raise InvalidField(f"{name[:80]!r} is not a valid scope name (letters, digits and _ . : - only, 1 to 64).")
    return tuple(dict.fromkeys(value))


def _plan(value: object, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not 1 <= len(value) <= PLAN_MAX_CHARS:
        raise InvalidField(f"The plan field must be a string of 1 to {PLAN_MAX_CHARS} characters.")
    return value


def _vendor(value: object) -> tuple[str, ...]:
    """Appmixer's vendor is a string or a list of strings; the user object's is a list."""
    names = [value] if isinstance(value, str) else value
    if names is None:
        return ()
    if not isinstance(names, list) or not all(
        isinstance(name, str) and 1 <= len(name) <= VENDOR_MAX_CHARS for name in names
    ):
        raise InvalidField(f"The vendor field must be a name or a list of names, each 1 to {VENDOR_MAX_CHARS} long.")
    return tuple(dict.fromkeys(names))


def _boolean(document: Mapping[str, Any], name: str) -> bool:
    value = document.get(name, False)
    if not isinstance(value, bool):
        raise InvalidField(f"The {name} field must be true or false.")
    return value


def _token_version(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= TOKEN_VERSION_MAX:
        raise InvalidField("The tokenVersion field must be a whole number from 0.")
    return value


def _created(value: object) -> int | None:
    """Milliseconds since the epoch from an ISO 8601 string with a time zone, or MongoDB's ``{"$date": ...}``
    (an ISO string, milliseconds, or ``{"$numberLong": "..."}``); None (the id's second) when absent."""
    if value is None:
        return None
    if isinstance(value, dict) and set(value) == {"$date"}:
        value = value["$date"]
        if isinstance(value, dict) and set(value) == {"$numberLong"} and isinstance(value["$numberLong"], str):
            text = value["$numberLong"]
            value = int(text) if text.lstrip("-").isdigit() and len(text) < 20 else None
        if isinstance(value, int) and not isinstance(value, bool):
            return _bounded_created(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return _bounded_created((moment - _EPOCH) // timedelta(milliseconds=1))
    raise InvalidField(
        'The created field must be an ISO 8601 timestamp with a time zone (2026-11-29T14:00:00.000Z) or {"$date": ...}.'
    )


def _bounded_created(milliseconds: int) -> int:
    if not 0 <= milliseconds <= _MAX_CREATED_MS:
        raise InvalidField("The created field must lie between 1970 and 9999.")
    return milliseconds


@dataclass(frozen=True, slots=True)
class LineProblem:
    """What is wrong with one line (a bad line), or why it was skipped (a conflict with --on-conflict skip)."""

    line: int
    message: str


@dataclass(slots=True)
class ImportPlan:
    """What an import would do: the users to add, in file order, and the lines it refuses or skips."""

    users: list[NewUser] = field(default_factory=list)
    bad: list[LineProblem] = field(default_factory=list)
    skipped: list[LineProblem] = field(default_factory=list)
    lines: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad


class _TakenKeys:
    """Which ids and keys are taken, and by whom (a line number, or 0 for a stored user)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.usernames: dict[str, int] = {}
        self.skeletons: dict[str, int] = {}
        self.emails: dict[str, int] = {}

    def hold(self, user_id: str, username: str, skeleton: str, email: str, line: int) -> None:
        self.ids.setdefault(user_id, line)
        self.usernames.setdefault(username, line)
        self.skeletons.setdefault(skeleton, line)
        self.emails.setdefault(email, line)

    def conflict(self, user: NewUser) -> str | None:
        """Why ``user`` cannot be added beside the holders, or None."""
        checks = (
            (self.ids.get(user.id), f"the id {user.id} is"),
            (self.usernames.get(user.username_key), f"the username {user.username!r} is"),
            # !a: the look-alike's letters escaped, so the operator sees how it differs.
            (self.skeletons.get(user.username_skeleton), f"the username {user.username!a} looks like one"),
            (self.emails.get(user.email_key), "the email address is"),
        )
        for holder, what in checks:
            if holder is not None:
                where = "in the store" if holder == 0 else f"on line {holder}"
                return f"Conflict: {what} already {where}."
        return None


async def stored_keys(store: UserStore) -> _TakenKeys:
    """The ids and keys of every stored user, computed as signup computes them."""
    taken = _TakenKeys()
    async for user in _all_users(store):
        taken.hold(
            user.id,
            identifier_key(user.username),
            username_skeleton(user.username),
            email_key(user.email, strict=False),
            0,
        )
    return taken


async def plan_import(
    store: UserStore | None,
    lines: Iterable[bytes],
    *,
    default_plan: str,
    on_conflict: OnConflict = "fail",
    progress: Callable[[int], None] | None = None,
) -> ImportPlan:
    """Check every line (blank ones are passed over) and decide what an import would add; write nothing.

    ``store`` None is an empty store (a dry run for a database not made yet). ``progress`` is told how many
    bytes each line took, for a progress bar."""
    taken = _TakenKeys() if store is None else await stored_keys(store)
    plan = ImportPlan()
    for number, raw in enumerate(lines, start=1):
        plan.lines = number
        if progress is not None:
            progress(len(raw))
        if not raw.strip():
            continue
        try:
            user = parse_line(raw, default_plan=default_plan)
        except InvalidRequest as exc:
            plan.bad.append(LineProblem(number, exc.message))
            continue
        conflict = taken.conflict(user)
        if conflict is not None:
            (plan.skipped if on_conflict == "skip" else plan.bad).append(LineProblem(number, conflict))
            continue
        taken.hold(user.id, user.username_key, user.username_skeleton, user.email_key, number)
        plan.users.append(user)
    return plan


async def apply_import(store: UserStore, plan: ImportPlan) -> list[User]:
    """Add the plan's users in one atomic write; nothing when any line is bad (ValueError: a caller's bug)."""
    if not plan.ok:
        raise ValueError("an import with bad lines must not be applied")
    added = await store.add_many(plan.users)
    log.info("users.imported", imported=len(added), skipped=len(plan.skipped))
    return added
