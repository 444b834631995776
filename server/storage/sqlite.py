"""The SQLite UserStore: aiosqlite, WAL, ``synchronous=FULL``, versioned schema.

Two connections: one writer and one reader. Both run in autocommit mode, so every write is a single
statement and therefore its own transaction: a failed insert (say, a taken username) rolls back only itself
and can never undo another request's write, as an explicit ROLLBACK on a shared connection would. The reader
sees every committed write (WAL) without queueing behind the writer's fsyncs.

Uniqueness is the database's job: ``username_key`` and ``email_key`` carry UNIQUE constraints, and the
driver's IntegrityError is translated here into UsernameTaken or EmailTaken.

The admin command line opens its own store on the same file while the server runs. Every connection sets
``busy_timeout``, so a write that meets another process's write lock waits for it (up to
``BUSY_TIMEOUT_MS``) instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from server.domain import EmailTaken, NewUser, User, UsernameTaken
from server.security import identifier_key
from server.storage import StorageError, prepare_data_dir

DATABASE_FILE = "mixauth.sqlite3"
BUSY_TIMEOUT_MS = 5000


async def _rekey_identifiers(connection: aiosqlite.Connection) -> None:
    """Recompute every username and email key after ``identifier_key`` began normalising before trimming.

    Only names with rare characters change. A new key that another user already holds is left as it was
    (UPDATE OR IGNORE) rather than stopping start-up; that user still signs in by the old spelling.
    """
    async with connection.execute("SELECT id, username, email, username_key, email_key FROM users") as cursor:
        rows = await cursor.fetchall()
    for user_id, username, email, username_key, email_key in rows:
        if identifier_key(username) != username_key:
            await connection.execute(
                "UPDATE OR IGNORE users SET username_key = ? WHERE id = ?", (identifier_key(username), user_id)
            )
        if identifier_key(email) != email_key:
            await connection.execute(
                "UPDATE OR IGNORE users SET email_key = ? WHERE id = ?", (identifier_key(email), user_id)
            )


Migration = str | Callable[[aiosqlite.Connection], Awaitable[None]]

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
)

_SELECT = "SELECT id, username, email, scope, plan, is_active, password_hash, metadata FROM users WHERE "
_SELECT_BY_ID = _SELECT + "id = ?"
_SELECT_BY_USERNAME_KEY = _SELECT + "username_key = ?"
_SELECT_BY_EMAIL_KEY = _SELECT + "email_key = ?"
# Keyset paging: every id is greater than "", so the first page needs no second form of the query.
_SELECT_PAGE = _SELECT + "id > ? ORDER BY id LIMIT ?"
_HOLDS_SCOPE = "EXISTS (SELECT 1 FROM json_each(users.scope) WHERE json_each.value = ?)"
_SELECT_PAGE_WITH_SCOPE = _SELECT + "id > ? AND " + _HOLDS_SCOPE + " ORDER BY id LIMIT ?"


class SqliteUserStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def add(self, user: NewUser) -> User:
        try:
            await self._writer.execute(
                "INSERT INTO users (id, username, username_key, email, email_key, password_hash, scope, plan,"
                " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.id,
                    user.username,
                    user.username_key,
                    user.email,
                    user.email_key,
                    user.password_hash,
                    json.dumps(list(user.scope)),
                    user.plan,
                    None if user.metadata is None else json.dumps(user.metadata),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise _translate_integrity_error(exc) from None
        return user.as_user()

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

    async def delete(self, user_id: str) -> bool:
        return await self._write("DELETE FROM users WHERE id = ?", (user_id,))

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
    user_id, username, email, scope, plan, is_active, password_hash, metadata = row
    return User(
        id=user_id,
        username=username,
        email=email,
        scope=tuple(json.loads(scope)),
        plan=plan,
        is_active=bool(is_active),
        password_hash=password_hash,
        metadata=None if metadata is None else json.loads(metadata),
    )


def _translate_integrity_error(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "username_key" in text:
        return UsernameTaken()
    if "email_key" in text:
        return EmailTaken()
    return exc


async def _connect(path: Path) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA journal_mode = WAL")
        await connection.execute("PRAGMA synchronous = FULL")
        await connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await connection.close()
        raise
    return connection


async def migrate(connection: aiosqlite.Connection) -> int:
    """Bring the schema to the newest version; return that version. Safe to run from several processes."""
    await connection.execute("BEGIN IMMEDIATE")
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT")
        async with connection.execute("SELECT max(version) FROM schema_version") as cursor:
            row = await cursor.fetchone()
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
                        await connection.execute(statement)
            else:
                await migration(connection)
            await connection.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
        await connection.execute("COMMIT")
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def _owner_only(path: Path) -> None:
    """Password hashes live here: readable by the owner only (SQLite gives its -wal and -shm files the
    database file's mode). A file owned by someone else is left as its owner set it."""
    with contextlib.suppress(PermissionError):
        path.chmod(0o600)


@asynccontextmanager
async def open_store(data_dir: Path) -> AsyncIterator[SqliteUserStore]:
    """Open (creating and migrating when needed) the database in ``data_dir``; close it on exit."""
    await asyncio.to_thread(prepare_data_dir, data_dir)
    path = data_dir / DATABASE_FILE
    async with contextlib.AsyncExitStack() as stack:
        try:
            writer = await _connect(path)
            stack.push_async_callback(writer.close)
            await asyncio.to_thread(_owner_only, path)
            await migrate(writer)
            reader = await _connect(path)
            stack.push_async_callback(reader.close)
            await reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database {path}: {exc}") from None
        yield SqliteUserStore(writer, reader)
