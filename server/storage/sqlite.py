"""The SQLite UserStore: aiosqlite, WAL, ``synchronous=FULL``, versioned schema.

Two connections: one writer and one reader. Both run in autocommit mode, so every write is a single
statement and therefore its own transaction: a failed insert (say, a taken username) rolls back only itself
and can never undo another request's write, as an explicit ROLLBACK on a shared connection would. The reader
sees every committed write (WAL) without queueing behind the writer's fsyncs.
Before they open, the schema is migrated on a connection of its own, in one call to a worker thread
(not a trip to a connection's thread per statement: a first start creates the whole schema).

Operations that must decide and write at once are one statement each, so SQLite's single writer makes them
atomic without a lock in Python: an update returns the row it wrote (RETURNING); a reset code is consumed by
the DELETE that returns it; the last-admin guard is a condition of the UPDATE or DELETE itself.

Uniqueness is the database's job: ``username_key``, ``username_skeleton`` (the UTS #39 confusable skeleton,
so look-alike usernames are refused too) and ``email_key`` carry UNIQUE constraints, and the driver's
IntegrityError is translated here into UsernameTaken, UsernameConfusable or EmailTaken. Skeletons depend on
the confusables data of the ICU in use; the version they were made with is stored, and they are recomputed
whenever it changes (``_refresh_username_skeletons``). Beside it, the ICU module's fingerprint: a start with
the same module loads no ICU.

The admin command line opens its own store on the same file while the server runs. Every connection sets
``busy_timeout``, so a write that meets another process's write lock waits for it (up to
``BUSY_TIMEOUT_MS``) instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from server.domain import (
    DELETE_TICKET_RETENTION_MS,
    DeleteTicket,
    EmailTaken,
    LastAdmin,
    NewUser,
    User,
    UserChanges,
    UserIdTaken,
    UsernameConfusable,
    UsernameTaken,
    UserQuery,
)
from server.security import (
    email_key,
    identifier_key,
    username_skeleton,
)
from server.storage import StorageError, prepare_data_dir, skeletons

DATABASE_FILE = "mixauth.sqlite3"
BUSY_TIMEOUT_MS = 5000


def _rekey_identifiers(connection: sqlite3.Connection) -> None:
    """Recompute every username and email key after ``identifier_key`` began normalising before trimming.

    Only names with rare characters change. A new key that another user already holds is left as it was
    (UPDATE OR IGNORE) rather than stopping start-up; that user still signs in by the old spelling.
    """
    rows = connection.execute("SELECT id, username, email, username_key, email_key FROM users").fetchall()
    for user_id, username, email, old_username_key, old_email_key in rows:
        if identifier_key(username) != old_username_key:
            connection.execute(
                "UPDATE OR IGNORE users SET username_key = ? WHERE id = ?", (identifier_key(username), user_id)
            )
        if identifier_key(email) != old_email_key:
            connection.execute(
                "UPDATE OR IGNORE users SET email_key = ? WHERE id = ?", (identifier_key(email), user_id)
            )


def _rekey_email_domains(connection: sqlite3.Connection) -> None:
    """Recompute every email key after ``email_key`` began keying domains by their IDNA (A-label) form.

    Only addresses whose domain is not plain ASCII change (and those where case folding changed the domain,
    such as ß to ss). When the new key is another user's already (one mailbox, two accounts, made before
    this), the key is left as it was (UPDATE OR IGNORE) rather than stopping start-up: sign-in by that email,
    in any spelling, then finds the other account, and this one signs in by its username.
    """
    rows = connection.execute("SELECT id, email, email_key FROM users ORDER BY created_at, id").fetchall()
    for user_id, email, old_key in rows:
        new_key = email_key(email, strict=False)
        if new_key != old_key:
            connection.execute("UPDATE OR IGNORE users SET email_key = ? WHERE id = ?", (new_key, user_id))


def _add_username_skeletons(connection: sqlite3.Connection) -> None:
    """A UNIQUE confusable skeleton per username, filled for the users there are (see the next function)."""
    connection.execute("ALTER TABLE users ADD COLUMN username_skeleton TEXT")
    connection.execute("CREATE UNIQUE INDEX users_username_skeleton ON users (username_skeleton)")
    connection.execute("CREATE TABLE username_skeleton_data (version TEXT NOT NULL) STRICT")
    connection.execute("INSERT INTO username_skeleton_data (version) VALUES ('')")
    _refresh_username_skeletons(connection)


def _refresh_username_skeletons(connection: sqlite3.Connection) -> None:
    """Recompute every username's skeleton when the confusables data differs from the one they were made with.

    Users are taken in the order they were created, so when two existing usernames look alike the earlier
    keeps its skeleton and the later gets none (NULL, which the UNIQUE index lets repeat): both keep their
    accounts, and a new look-alike of the two is still refused, through the earlier one's equal skeleton.
    """
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'username_skeleton_data'").fetchone() is None:
        return  # a schema from before the skeletons (a migration test's)
    row = connection.execute("SELECT version FROM username_skeleton_data").fetchone()
    note = str(row[0]) if row is not None else ""
    if skeletons.noted_module_is_current(note):
        return
    rows = connection.execute("SELECT id, username FROM users ORDER BY created_at, id").fetchall()
    new_note = skeletons.current_note(has_users=bool(rows))
    if rows and skeletons.noted_version(note) != skeletons.noted_version(new_note):
        connection.execute("UPDATE users SET username_skeleton = NULL")
        for user_id, username in rows:
            connection.execute(
                "UPDATE OR IGNORE users SET username_skeleton = ? WHERE id = ?", (username_skeleton(username), user_id)
            )
    connection.execute("UPDATE username_skeleton_data SET version = ?", (new_note,))


Migration = str | Callable[[sqlite3.Connection], None]

# The user API's storage: creation time in milliseconds (users stored before it get their id's second),
# vendor, the revocation state (see User.token_version), reset codes (one a user, gone with the user: the
# primary key and the cascade) and delete tickets (kept past the user they name). ``users_created`` serves
# the default order, newest first with ties by id, and ``users_plan`` the plan filter in that order; username
# and email orders use their UNIQUE key indexes. Scope, vendor and pattern filters scan (an admin's listing).
# (The UPDATE reads an id's first 8 hex digits, its creation second: SQLite has no hex-to-integer function.)
_USER_API_SCHEMA = """
    ALTER TABLE users ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET created_ms = 1000 * (
        (instr('0123456789abcdef', substr(id, 1, 1)) - 1) * 268435456
        + (instr('0123456789abcdef', substr(id, 2, 1)) - 1) * 16777216
        + (instr('0123456789abcdef', substr(id, 3, 1)) - 1) * 1048576
        + (instr('0123456789abcdef', substr(id, 4, 1)) - 1) * 65536
        + (instr('0123456789abcdef', substr(id, 5, 1)) - 1) * 4096
        + (instr('0123456789abcdef', substr(id, 6, 1)) - 1) * 256
        + (instr('0123456789abcdef', substr(id, 7, 1)) - 1) * 16
        + (instr('0123456789abcdef', substr(id, 8, 1)) - 1)
    );
    ALTER TABLE users ADD COLUMN vendor TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX users_created ON users (created_ms DESC, id);
    CREATE INDEX users_plan ON users (plan, created_ms DESC, id);
    CREATE TABLE reset_codes (
        user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        code_hash  TEXT NOT NULL UNIQUE,
        expires_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE delete_tickets (
        id          TEXT PRIMARY KEY,
        user_id     TEXT NOT NULL,
        status      TEXT NOT NULL,
        steps_done  INTEGER NOT NULL,
        steps_total INTEGER NOT NULL,
        updated     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX delete_tickets_updated ON delete_tickets (updated);
"""

# Each entry moves the schema from version N to N + 1 (SQL statements, or a function for data changes);
# all pending ones are applied in one transaction.
MIGRATIONS: tuple[Migration, ...] = (
    """
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL,
        username_key  TEXT NOT NULL,
        email         TEXT NOT NULL,
        email_key     TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        scope         TEXT NOT NULL,
        plan          TEXT NOT NULL,
        is_active     INTEGER NOT NULL DEFAULT 0,
        metadata      TEXT,
        created_at    INTEGER NOT NULL DEFAULT (unixepoch())
    ) STRICT;
    CREATE UNIQUE INDEX users_username_key ON users (username_key);
    CREATE UNIQUE INDEX users_email_key ON users (email_key);
    """,
    _rekey_identifiers,
    _rekey_email_domains,
    _add_username_skeletons,
    _USER_API_SCHEMA,
)

_SELECT = (
    "SELECT id, username, email, scope, plan, is_active, password_hash, metadata, vendor, created_ms, token_version"
    " FROM users WHERE "
)
_USER_COLUMNS = _SELECT.removeprefix("SELECT ").removesuffix(" FROM users WHERE ")  # what _user_from_row reads
_SELECT_BY_ID = _SELECT + "id = ?"
_SELECT_BY_USERNAME_KEY = _SELECT + "username_key = ?"
_SELECT_BY_EMAIL_KEY = _SELECT + "email_key = ?"
# Keyset paging: every id is greater than "", so the first page needs no second form of the query.
_SELECT_PAGE = _SELECT + "id > ? ORDER BY id LIMIT ?"
_HOLDS_SCOPE = "EXISTS (SELECT 1 FROM json_each(users.scope) WHERE json_each.value = ?)"
_SELECT_PAGE_WITH_SCOPE = _SELECT + "id > ? AND " + _HOLDS_SCOPE + " ORDER BY id LIMIT ?"
_HOLDS_VENDOR = "EXISTS (SELECT 1 FROM json_each(users.vendor) WHERE json_each.value = ?)"


# True unless the row is the last user holding admin (ADMIN_SCOPE, spelled out to keep the statement a
# constant). It is part of the statement that changes the row, so two racing writes (SQLite runs one writer
# at a time) cannot both remove the last two admins. The instr test on the raw JSON rules out most rows
# before json_each parses any.
_NOT_THE_LAST_ADMIN = """(
    NOT (instr(users.scope, '"admin"') > 0
         AND EXISTS (SELECT 1 FROM json_each(users.scope) WHERE json_each.value = 'admin'))
    OR EXISTS (SELECT 1 FROM users AS other WHERE other.id <> users.id
               AND instr(other.scope, '"admin"') > 0
               AND EXISTS (SELECT 1 FROM json_each(other.scope) WHERE json_each.value = 'admin'))
)"""
_SORT_COLUMNS = {"created": "created_ms", "username": "username_key", "email": "email_key"}


class SqliteUserStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def add(self, user: NewUser) -> User:
        stored = user.as_user()
        try:
            await self._writer.execute(_INSERT_ONE, _insert_row(user, stored))
        except sqlite3.IntegrityError as exc:
            raise await self._taken(exc, user.username_key) from None
        return stored

    async def add_many(self, users: Sequence[NewUser]) -> list[User]:
        # One statement, so one transaction without an explicit BEGIN on the shared writer (see the module
        # docstring): the rows travel as one JSON array, unpacked by json_each, and a UNIQUE violation by any
        # of them aborts the statement, adding none.
        stored = [user.as_user() for user in users]
        if not stored:
            return []
        rows = json.dumps([_insert_row(user, kept) for user, kept in zip(users, stored, strict=True)])
        try:
            await self._writer.execute(_INSERT_MANY, (rows,))
        except sqlite3.IntegrityError as exc:
            raise _translate_integrity_error(exc) from None
        return stored

    async def _taken(self, exc: sqlite3.IntegrityError, username_key: str | None) -> Exception:
        """The domain error for a UNIQUE violation by a write that sets ``username_key`` (when not None)."""
        error = _translate_integrity_error(exc)
        if isinstance(error, UsernameConfusable) and username_key and await self.get_by_username(username_key):
            # SQLite names one violated index, not always the key's when both are: the same name is taken.
            return UsernameTaken()
        return error

    async def get_by_id(self, user_id: str) -> User | None:
        return await self._one(_SELECT_BY_ID, user_id)

    async def get_by_username(self, username_key: str) -> User | None:
        return await self._one(_SELECT_BY_USERNAME_KEY, username_key)

    async def get_by_email(self, email_key: str) -> User | None:
        return await self._one(_SELECT_BY_EMAIL_KEY, email_key)

    async def list_users(self, *, scope: str | None = None, limit: int = 100, after: str | None = None) -> list[User]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        query, parameters = _SELECT_PAGE, [after or "", limit]
        if scope is not None:
            query, parameters = _SELECT_PAGE_WITH_SCOPE, [after or "", scope, limit]
        rows = await self._reader.execute_fetchall(query, parameters)
        return [_user_from_row(row) for row in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return await self._write("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    async def set_scope(self, user_id: str, scope: tuple[str, ...]) -> bool:
        return await self._write("UPDATE users SET scope = ? WHERE id = ?", (json.dumps(list(scope)), user_id))

    async def delete(self, user_id: str, *, keep_an_admin: bool = False) -> bool:
        if not keep_an_admin:
            return await self._write("DELETE FROM users WHERE id = ?", (user_id,))
        statement = "DELETE FROM users WHERE id = ? AND " + _NOT_THE_LAST_ADMIN  # noqa: S608 - a constant
        if await self._write(statement, (user_id,)):
            return True
        if await self.get_by_id(user_id) is None:
            return False
        raise LastAdmin()

    async def find(self, query: UserQuery) -> list[User]:
        where, parameters = _where(query)
        order = _SORT_COLUMNS[query.sort] + (" DESC" if query.descending else " ASC")
        statement = _SELECT + where + " ORDER BY " + order + ", id ASC LIMIT ? OFFSET ?"
        rows = await self._reader.execute_fetchall(statement, [*parameters, query.limit, query.offset])
        return [_user_from_row(row) for row in rows]

    async def count(self, query: UserQuery) -> int:
        where, parameters = _where(query)
        statement = "SELECT count(*) FROM users WHERE " + where  # noqa: S608 - see _where
        rows = list(await self._reader.execute_fetchall(statement, parameters))
        return int(rows[0][0])

    async def update(self, user_id: str, changes: UserChanges, *, keep_an_admin: bool = False) -> User | None:
        assignments, parameters = _assignments(changes)
        if not assignments:
            return await self.get_by_id(user_id)
        guarded = keep_an_admin and changes.removes_admin
        condition = "id = ?" + (" AND " + _NOT_THE_LAST_ADMIN if guarded else "")
        # Column names come from _assignments' fixed list; every value is a bound parameter.
        statement = "UPDATE users SET " + ", ".join(assignments) + " WHERE " + condition  # noqa: S608
        statement += " RETURNING " + _USER_COLUMNS
        try:
            rows = list(await self._writer.execute_fetchall(statement, [*parameters, user_id]))
        except sqlite3.IntegrityError as exc:
            raise await self._taken(exc, changes.username_key) from None
        if rows:
            return _user_from_row(rows[0])
        if guarded and await self.get_by_id(user_id) is not None:
            raise LastAdmin()
        return None

    async def revoke_tokens(self, user_id: str) -> int | None:
        rows = list(
            await self._writer.execute_fetchall(
                "UPDATE users SET token_version = token_version + 1 WHERE id = ? RETURNING token_version", (user_id,)
            )
        )
        return int(rows[0][0]) if rows else None

    async def put_reset_code(self, user_id: str, code_hash: str, expires_at: int) -> bool:
        try:
            return await self._write(
                "INSERT INTO reset_codes (user_id, code_hash, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at",
                (user_id, code_hash, expires_at),
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                return False
            raise

    async def consume_reset_code(self, code_hash: str, now: int) -> str | None:
        # One statement finds and removes the code: of two racing consumers, only one gets the row back.
        # An expired code is removed too, and answers None.
        rows = list(
            await self._writer.execute_fetchall(
                "DELETE FROM reset_codes WHERE code_hash = ? RETURNING user_id, expires_at", (code_hash,)
            )
        )
        if not rows:
            return None
        user_id, expires_at = rows[0]
        return str(user_id) if now < int(expires_at) else None

    async def save_delete_ticket(self, ticket: DeleteTicket) -> None:
        await self._write(
            "INSERT OR REPLACE INTO delete_tickets (id, user_id, status, steps_done, steps_total, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ticket.id, ticket.user_id, ticket.status, ticket.steps_done, ticket.steps_total, ticket.updated),
        )
        # Its own statement: forgetting old tickets needs no atomicity with saving this one.
        await self._write(
            "DELETE FROM delete_tickets WHERE updated < ?", (ticket.updated - DELETE_TICKET_RETENTION_MS,)
        )

    async def get_delete_ticket(self, ticket_id: str) -> DeleteTicket | None:
        rows = list(
            await self._reader.execute_fetchall(
                "SELECT id, user_id, status, steps_done, steps_total, updated FROM delete_tickets WHERE id = ?",
                (ticket_id,),
            )
        )
        if not rows:
            return None
        ticket, user_id, status, steps_done, steps_total, updated = rows[0]
        return DeleteTicket(ticket, user_id, status, int(steps_done), int(steps_total), int(updated))

    async def data_version(self) -> int:
        """A number that changes whenever another connection commits: another process (the admin command
        line), or this store's own writer. One cheap query; readiness checks use it too."""
        rows = list(await self._reader.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0]) if rows else 0

    async def _write(self, statement: str, parameters: tuple[Any, ...]) -> bool:
        """Run one statement (autocommit: its own transaction); True when it matched a row."""
        async with self._writer.execute(statement, parameters) as cursor:
            return cursor.rowcount > 0

    async def _one(self, query: str, value: str) -> User | None:
        # One hop to the database thread and back (execute, fetch and close in one), not three.
        rows = list(await self._reader.execute_fetchall(query, (value,)))
        return _user_from_row(rows[0]) if rows else None


def _user_from_row(row: sqlite3.Row | tuple[Any, ...]) -> User:
    user_id, username, email, scope, plan, is_active, password_hash, metadata, vendor, created, token_version = row
    return User(
        id=user_id,
        username=username,
        email=email,
        scope=tuple(json.loads(scope)),
        plan=plan,
        is_active=bool(is_active),
        password_hash=password_hash,
        metadata=None if metadata is None else json.loads(metadata),
        vendor=tuple(json.loads(vendor)),
        created=int(created),
        token_version=int(token_version),
    )


_INSERT_COLUMNS = (
    "id, username, username_key, username_skeleton, email, email_key, password_hash,"
    " scope, plan, metadata, vendor, created_ms, is_active, token_version"
)
_INSERT_ONE = f"INSERT INTO users ({_INSERT_COLUMNS}) VALUES ({', '.join('?' * 14)})"  # noqa: S608 - constants only
_INSERT_MANY = (
    f"INSERT INTO users ({_INSERT_COLUMNS}) SELECT "  # noqa: S608 - constants only
    + ", ".join(f"json_extract(value, '$[{index}]')" for index in range(14))
    + " FROM json_each(?)"
)


def _insert_row(user: NewUser, stored: User) -> list[Any]:
    """The values of ``_INSERT_COLUMNS`` for one user, JSON columns already encoded (json_extract of a JSON
    string gives its text; of a number, the integer)."""
    return [
        user.id,
        user.username,
        user.username_key,
        user.username_skeleton,
        user.email,
        user.email_key,
        user.password_hash,
        json.dumps(list(user.scope)),
        user.plan,
        None if user.metadata is None else json.dumps(user.metadata),
        json.dumps(list(stored.vendor)),
        stored.created,
        int(stored.is_active),
        stored.token_version,
    ]


def _where(query: UserQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (with its parameters) of ``query``'s filters and pattern; every condition must hold."""
    conditions: list[str] = []
    parameters: list[Any] = []
    # instr on the raw JSON first (the name, JSON-encoded as stored, must occur in it): a cheap test that rules
    # out most rows before json_each parses any.
    for name in query.scope:
        conditions.append("instr(scope, ?) > 0 AND " + _HOLDS_SCOPE)
        parameters.extend((json.dumps(name), name))
    for name in query.vendor:
        conditions.append("instr(vendor, ?) > 0 AND " + _HOLDS_VENDOR)
        parameters.extend((json.dumps(name), name))
    for plan in query.plan:
        conditions.append("plan = ?")
        parameters.append(plan)
    for active in query.is_active:
        conditions.append("is_active = ?")
        parameters.append(int(active))
    if query.pattern:
        # instr, not LIKE: the pattern is a literal, so % and _ in it are just characters.
        conditions.append("instr(username_key, ?) > 0")
        parameters.append(query.pattern)
    return (" AND ".join(conditions) or "1"), parameters


def _assignments(changes: UserChanges) -> tuple[list[str], list[Any]]:
    """The SET clause's assignments (with their parameters) for ``changes``."""
    assignments: list[str] = []
    parameters: list[Any] = []

    def assign(column: str, value: object) -> None:
        assignments.append(f"{column} = ?")
        parameters.append(value)

    if changes.scope is not None:
        assign("scope", json.dumps(list(changes.scope)))
    if changes.vendor is not None:
        assign("vendor", json.dumps(list(changes.vendor)))
    if changes.metadata is not None:
        assign("metadata", json.dumps(changes.metadata))
    if changes.email is not None:
        assign("email", changes.email)
        assign("email_key", changes.email_key)
    if changes.username is not None:
        assign("username", changes.username)
        assign("username_key", changes.username_key)
        assign("username_skeleton", changes.username_skeleton)
    if changes.password_hash is not None:
        assign("password_hash", changes.password_hash)
    if changes.is_active is not None:
        assign("is_active", int(changes.is_active))
    if changes.plan is not None:
        assign("plan", changes.plan)
    if changes.revoke_tokens:
        assignments.append("token_version = token_version + 1")
    return assignments, parameters


def _translate_integrity_error(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "username_key" in text:
        return UsernameTaken()
    if "username_skeleton" in text:
        return UsernameConfusable()
    if "email_key" in text:
        return EmailTaken()
    if "users.id" in text:
        return UserIdTaken()
    return exc


_CONNECTION_SETTINGS = f"""
    PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA foreign_keys = ON;
"""


async def _connect(path: Path, settings: str = _CONNECTION_SETTINGS) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        await connection.executescript(settings)  # one trip to the connection's thread
    except BaseException:
        await connection.close()
        raise
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; return that version. Safe to run from several processes.

    Blocking: ``open_store`` runs it, on a connection of its own, in one call to a worker thread.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT")
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > len(MIGRATIONS):
            raise StorageError(
                f"the database schema is version {current}, newer than this mixauth knows ({len(MIGRATIONS)})"
            )
        for version in range(current, len(MIGRATIONS)):
            migration = MIGRATIONS[version]
            if isinstance(migration, str):
                for statement in migration.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            else:
                migration(connection)
            connection.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
        _refresh_username_skeletons(connection)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def _prepare(data_dir: Path, path: Path) -> None:
    """What opening the store does before its connections: the data directory, the database file (owner
    only), and the schema migrated; blocking, in one call to a worker thread rather than a trip per statement."""
    prepare_data_dir(data_dir)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.executescript(_CONNECTION_SETTINGS)
        _owner_only(path)
        migrate(connection)
    finally:
        connection.close()


def _owner_only(path: Path) -> None:
    """Password hashes live here: readable by the owner only (SQLite gives its -wal and -shm files the
    database file's mode). A file owned by someone else is left as its owner set it."""
    with contextlib.suppress(PermissionError):
        path.chmod(0o600)


@asynccontextmanager
async def open_store(data_dir: Path) -> AsyncIterator[SqliteUserStore]:
    """Open (creating and migrating when needed) the database in ``data_dir``; close it on exit."""
    path = data_dir / DATABASE_FILE
    async with contextlib.AsyncExitStack() as stack:
        try:
            await asyncio.to_thread(_prepare, data_dir, path)
            writer = await _connect(path)
            stack.push_async_callback(writer.close)
            reader = await _connect(path, _CONNECTION_SETTINGS + "PRAGMA query_only = ON;")
            stack.push_async_callback(reader.close)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database {path}: {exc}") from None
        yield SqliteUserStore(writer, reader)


def stored_schema_version(data_dir: Path) -> int:
    """The schema version of the database in ``data_dir`` as it is now (0: none yet), without changing it."""
    path = data_dir / DATABASE_FILE
    if not path.is_file():
        return 0
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError:  # no schema_version table: nothing migrated yet
        return 0
    finally:
        connection.close()
    return int(row[0]) if row and row[0] is not None else 0


SCHEMA_VERSION = len(MIGRATIONS)
