"""The PostgreSQL UserStore: asyncpg, a connection pool, versioned schema, for N instances on one database.

Every operation is one statement on a pooled connection, and so its own transaction, except the two that
must decide and write under a lock (below). What SQLite's single writer gives for free is spelled out here:

- Uniqueness is the database's: ``id`` (primary key), ``username_key``, ``username_skeleton`` (the UTS #39
  confusable skeleton) and ``email_key`` carry UNIQUE constraints. Of two instances inserting one username,
  the second waits on the first's index entry and then fails; asyncpg names the violated constraint, which is
  translated into UserIdTaken, UsernameTaken, UsernameConfusable or EmailTaken.
- The last-admin guard: under READ COMMITTED, two transactions each removing one of the last two admins
  would each still see the other admin. A guarded write therefore takes a transaction-level advisory lock
  first (``_ADMIN_LOCK``), and its statement, whose snapshot starts after the lock is held, sees every guarded
  write committed before it. Unguarded writes do not take the lock: they promise nothing about admins.
- A reset code is consumed by the DELETE that returns it; a concurrent consumer waits on the row lock, then
  finds the row gone. A revocation is one ``token_version + 1`` UPDATE, re-evaluated on the newest row.

Migrations are numbered, recorded in ``schema_version``, and applied in one transaction under a
transaction-level advisory lock (``_MIGRATION_LOCK``), so instances starting together on an empty database
apply them once and agree. A schema newer than this code refuses to start, as the SQLite store does.

Columns: scopes and vendors are ``text[]`` (the ``@>`` containment test, with a GIN index on scopes for the
admin filter and the last-admin guard); metadata is JSON kept as text, exactly as written (as SQLite keeps
it); keys and ids use the "C" collation, so ordering by username or email compares code points as the
contract asks. A trigger (migration 2) announces every change of a user row on the ``mixauth_users``
channel; server.storage.pg_changes listens to it to keep per-process caches honest.

The connection URL may hold a password: it never reaches an exception message or a log line (``unusable``
names host, port and database only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from server.domain import (
    DELETE_TICKET_RETENTION_MS,
    DatabaseUnavailable,
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
from server.security import username_skeleton
from server.storage import StorageError, skeletons

# Advisory lock keys (any two bigints no other application on the database uses): "mixauth" in ASCII, then 1
# for migrations and 2 for the last-admin guard.
_MIGRATION_LOCK = 0x6D69_7861_7574_6801
_ADMIN_LOCK = 0x6D69_7861_7574_6802

# The channel the users trigger notifies: the payload is the id of the user changed, or "" for every user
# (TRUNCATE).
CHANGES_CHANNEL = "mixauth_users"

# Errors that mean the database could not be reached or refused the connection (as opposed to a statement's
# error, such as a UNIQUE violation).
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

_SCHEMA_1 = """
    CREATE TABLE users (
        id                text COLLATE "C" NOT NULL,
        username          text NOT NULL,
        username_key      text COLLATE "C" NOT NULL,
        username_skeleton text COLLATE "C",
        email             text NOT NULL,
        email_key         text COLLATE "C" NOT NULL,
        password_hash     text NOT NULL,
        scope             text[] NOT NULL,
        plan              text NOT NULL,
        is_active         boolean NOT NULL DEFAULT false,
        metadata          text,
        vendor            text[] NOT NULL DEFAULT '{}',
        created_ms        bigint NOT NULL,
        token_version     bigint NOT NULL DEFAULT 0,
        CONSTRAINT users_pkey PRIMARY KEY (id),
        CONSTRAINT users_username_key UNIQUE (username_key),
        CONSTRAINT users_username_skeleton UNIQUE (username_skeleton),
        CONSTRAINT users_email_key UNIQUE (email_key)
    );
    CREATE INDEX users_created ON users (created_ms DESC, id);
    CREATE INDEX users_plan ON users (plan, created_ms DESC, id);
    CREATE INDEX users_scope ON users USING gin (scope);
    CREATE TABLE reset_codes (
        user_id    text COLLATE "C" PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        code_hash  text NOT NULL UNIQUE,
        expires_at bigint NOT NULL
    );
    CREATE TABLE delete_tickets (
        id          text PRIMARY KEY,
        user_id     text NOT NULL,
        status      text NOT NULL,
        steps_done  integer NOT NULL,
        steps_total integer NOT NULL,
        updated     bigint NOT NULL
    );
    CREATE INDEX delete_tickets_updated ON delete_tickets (updated);
    CREATE TABLE username_skeleton_data (version text NOT NULL);
    INSERT INTO username_skeleton_data (version) VALUES ('');
"""

# Every writer (this store, the admin command line, psql) announces the users it changed, after the row is
# written and delivered at commit (a rolled-back write announces nothing). pg_notify folds repeats of one id
# within a transaction into one notification.
_SCHEMA_2 = f"""
    CREATE FUNCTION mixauth_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            PERFORM pg_notify('{CHANGES_CHANNEL}', '');
        ELSIF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('{CHANGES_CHANNEL}', OLD.id);
        ELSE
            PERFORM pg_notify('{CHANGES_CHANNEL}', NEW.id);
            IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN
                PERFORM pg_notify('{CHANGES_CHANNEL}', OLD.id);
            END IF;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
        FOR EACH ROW EXECUTE FUNCTION mixauth_user_changed();
    CREATE TRIGGER users_truncated AFTER TRUNCATE ON users
        FOR EACH STATEMENT EXECUTE FUNCTION mixauth_user_changed();
"""

# Each entry moves the schema from version N to N + 1; all pending ones are applied in one transaction.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_1, _SCHEMA_2)

_USER_COLUMNS = (
    "id, username, email, scope, plan, is_active, password_hash, metadata, vendor, created_ms, token_version"
)
_SELECT = f"SELECT {_USER_COLUMNS} FROM users WHERE "  # noqa: S608 - constants only
_SELECT_BY_ID = _SELECT + "id = $1"
_SELECT_BY_USERNAME_KEY = _SELECT + "username_key = $1"
_SELECT_BY_EMAIL_KEY = _SELECT + "email_key = $1"
# Keyset paging: every id is greater than "", so the first page needs no second form of the query.
_SELECT_PAGE = _SELECT + "id > $1 ORDER BY id LIMIT $2"
_SELECT_PAGE_WITH_SCOPE = _SELECT + "id > $1 AND scope @> ARRAY[$3::text] ORDER BY id LIMIT $2"

_INSERT_COLUMNS = (
    "id, username, username_key, username_skeleton, email, email_key, password_hash,"
    " scope, plan, metadata, vendor, created_ms, is_active, token_version"
)
_INSERT = f"INSERT INTO users ({_INSERT_COLUMNS}) VALUES ({', '.join(f'${n}' for n in range(1, 15))})"  # noqa: S608

# True unless the row is the last user holding admin; only meaningful under _ADMIN_LOCK (module docstring).
_NOT_THE_LAST_ADMIN = (
    "(NOT users.scope @> '{admin}'"
    " OR EXISTS (SELECT 1 FROM users AS other WHERE other.id <> users.id AND other.scope @> '{admin}'))"
)
_SORT_COLUMNS = {"created": "created_ms", "username": "username_key", "email": "email_key"}
# What losing the database looks like to the driver: no connection, a broken one, an administrator's
# shutdown or a restart in progress (57P0x), a statement or a pool wait past the timeout.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.QueryCanceledError,
)
log = structlog.get_logger("mixauth.storage")

_CONSTRAINT_ERRORS: dict[str, type[Exception]] = {
    "users_pkey": UserIdTaken,
    "users_username_key": UsernameTaken,
    "users_username_skeleton": UsernameConfusable,
    "users_email_key": EmailTaken,
}


class PostgresUserStore:
    """The UserStore on a pool; ``timeout`` (seconds) bounds both the wait for a pooled connection and each
    statement, so a stalled database turns requests into errors instead of a queue without end."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def add(self, user: NewUser) -> User:
        stored = user.as_user()
        try:
            await self._execute(_INSERT, *_insert_row(user, stored))
        except asyncpg.UniqueViolationError as exc:
            raise await self._taken(exc, user.username_key) from None
        return stored

    async def add_many(self, users: Sequence[NewUser]) -> list[User]:
        stored = [user.as_user() for user in users]
        if not stored:
            return []
        rows = [_insert_row(user, kept) for user, kept in zip(users, stored, strict=True)]
        try:
            async with self._connection() as connection, connection.transaction():
                await connection.executemany(_INSERT, rows, timeout=self._timeout)
        except asyncpg.UniqueViolationError as exc:
            raise _translate_unique_violation(exc) from None
        return stored

    async def get_by_id(self, user_id: str) -> User | None:
        return await self._one(_SELECT_BY_ID, user_id)

    async def get_by_username(self, username_key: str) -> User | None:
        return await self._one(_SELECT_BY_USERNAME_KEY, username_key)

    async def get_by_email(self, email_key: str) -> User | None:
        return await self._one(_SELECT_BY_EMAIL_KEY, email_key)

    async def list_users(self, *, scope: str | None = None, limit: int = 100, after: str | None = None) -> list[User]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        if scope is None:
            rows = await self._fetch(_SELECT_PAGE, after or "", limit)
        else:
            rows = await self._fetch(_SELECT_PAGE_WITH_SCOPE, after or "", limit, scope)
        return [_user_from_row(row) for row in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return await self._write("UPDATE users SET password_hash = $1 WHERE id = $2", password_hash, user_id)

    async def set_scope(self, user_id: str, scope: tuple[str, ...]) -> bool:
        return await self._write("UPDATE users SET scope = $1 WHERE id = $2", list(scope), user_id)

    async def delete(self, user_id: str, *, keep_an_admin: bool = False) -> bool:
        if not keep_an_admin:
            return await self._write("DELETE FROM users WHERE id = $1", user_id)
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _ADMIN_LOCK, timeout=self._timeout)
            status = await connection.execute(
                "DELETE FROM users WHERE id = $1 AND " + _NOT_THE_LAST_ADMIN,  # noqa: S608 - a constant
                user_id,
                timeout=self._timeout,
            )
            if _row_count(status) > 0:
                return True
            if await connection.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
                return False
        raise LastAdmin()

    async def find(self, query: UserQuery) -> list[User]:
        where, parameters = _where(query)
        order = _SORT_COLUMNS[query.sort] + (" DESC" if query.descending else " ASC")
        limit, offset = len(parameters) + 1, len(parameters) + 2
        statement = _SELECT + where + f" ORDER BY {order}, id ASC LIMIT ${limit} OFFSET ${offset}"
        rows = await self._fetch(statement, *parameters, query.limit, query.offset)
        return [_user_from_row(row) for row in rows]

    async def count(self, query: UserQuery) -> int:
        where, parameters = _where(query)
        statement = "SELECT count(*) FROM users WHERE " + where  # noqa: S608 - see _where
        return int(await self._fetchval(statement, *parameters))

    async def update(self, user_id: str, changes: UserChanges, *, keep_an_admin: bool = False) -> User | None:
        assignments, parameters = _assignments(changes)
        if not assignments:
            return await self.get_by_id(user_id)
        guarded = keep_an_admin and changes.removes_admin
        condition = f"id = ${len(parameters) + 1}" + (" AND " + _NOT_THE_LAST_ADMIN if guarded else "")
        # Column names come from _assignments' fixed list; every value is a bound parameter.
        statement = "UPDATE users SET " + ", ".join(assignments) + " WHERE " + condition  # noqa: S608
        statement += " RETURNING " + _USER_COLUMNS
        try:
            if not guarded:
                row = await self._fetchrow(statement, *parameters, user_id)
                return None if row is None else _user_from_row(row)
            async with self._connection() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _ADMIN_LOCK, timeout=self._timeout)
                row = await connection.fetchrow(statement, *parameters, user_id, timeout=self._timeout)
                if row is not None:
                    return _user_from_row(row)
                if await connection.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
                    return None
        except asyncpg.UniqueViolationError as exc:
            raise await self._taken(exc, changes.username_key) from None
        raise LastAdmin()

    async def revoke_tokens(self, user_id: str) -> int | None:
        version = await self._fetchval(
            "UPDATE users SET token_version = token_version + 1 WHERE id = $1 RETURNING token_version",
            user_id,
        )
        return None if version is None else int(version)

    async def put_reset_code(self, user_id: str, code_hash: str, expires_at: int) -> bool:
        try:
            return await self._write(
                "INSERT INTO reset_codes (user_id, code_hash, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at",
                user_id,
                code_hash,
                expires_at,
            )
        except asyncpg.ForeignKeyViolationError:
            return False

    async def consume_reset_code(self, code_hash: str, now: int) -> str | None:
        # One statement finds and removes the code: of two racing consumers, only one gets the row back.
        # An expired code is removed too, and answers None.
        row = await self._fetchrow(
            "DELETE FROM reset_codes WHERE code_hash = $1 RETURNING user_id, expires_at",
            code_hash,
        )
        if row is None:
            return None
        return str(row["user_id"]) if now < int(row["expires_at"]) else None

    async def save_delete_ticket(self, ticket: DeleteTicket) -> None:
        await self._write(
            "INSERT INTO delete_tickets (id, user_id, status, steps_done, steps_total, updated)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id,"
            " status = excluded.status, steps_done = excluded.steps_done, steps_total = excluded.steps_total,"
            " updated = excluded.updated",
            ticket.id,
            ticket.user_id,
            ticket.status,
            ticket.steps_done,
            ticket.steps_total,
            ticket.updated,
        )
        # Its own statement: forgetting old tickets needs no atomicity with saving this one.
        await self._write("DELETE FROM delete_tickets WHERE updated < $1", ticket.updated - DELETE_TICKET_RETENTION_MS)

    async def get_delete_ticket(self, ticket_id: str) -> DeleteTicket | None:
        row = await self._fetchrow(
            "SELECT id, user_id, status, steps_done, steps_total, updated FROM delete_tickets WHERE id = $1",
            ticket_id,
        )
        if row is None:
            return None
        steps_done, steps_total, updated = int(row["steps_done"]), int(row["steps_total"]), int(row["updated"])
        return DeleteTicket(row["id"], row["user_id"], row["status"], steps_done, steps_total, updated)

    async def ping(self) -> None:
        """One cheap round trip (the readiness probe); raises the driver's error, or TimeoutError, on failure."""
        await self._fetchval("SELECT 1")

    def pool_stats(self) -> dict[str, int]:
        """The pool's connections now: ``size`` open, ``idle`` of them free, ``max`` allowed (metrics gauges)."""
        return {"size": self._pool.get_size(), "idle": self._pool.get_idle_size(), "max": self._pool.get_max_size()}

    async def _taken(self, exc: asyncpg.UniqueViolationError, username_key: str | None) -> Exception:
        """The domain error for a UNIQUE violation by a write that sets ``username_key`` (when not None)."""
        error = _translate_unique_violation(exc)
        if isinstance(error, UsernameConfusable) and username_key and await self.get_by_username(username_key):
            # PostgreSQL names the first violated constraint it met, not always the key's when both are.
            return UsernameTaken()
        return error

    async def _write(self, statement: str, *parameters: Any) -> bool:
        """Run one statement (its own transaction); True when it matched a row."""
        status = await self._execute(statement, *parameters)
        return _row_count(status) > 0

    async def _one(self, query: str, value: str) -> User | None:
        row = await self._fetchrow(query, value)
        return None if row is None else _user_from_row(row)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection; losing the database while getting or using it is DatabaseUnavailable (503),
        never a driver error that would reach the client as a 500."""
        try:
            async with self._pool.acquire(timeout=self._timeout) as connection:
                yield connection
        except _UNREACHABLE as exc:
            log.warning("database.unavailable", error=type(exc).__name__)
            raise DatabaseUnavailable() from None

    async def _execute(self, statement: str, *parameters: Any) -> str:
        async with self._connection() as connection:
            return await connection.execute(statement, *parameters, timeout=self._timeout)

    async def _fetch(self, query: str, *parameters: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            return await connection.fetch(query, *parameters, timeout=self._timeout)

    async def _fetchrow(self, query: str, *parameters: Any) -> asyncpg.Record | None:
        async with self._connection() as connection:
            return await connection.fetchrow(query, *parameters, timeout=self._timeout)

    async def _fetchval(self, query: str, *parameters: Any) -> Any:
        async with self._connection() as connection:
            return await connection.fetchval(query, *parameters, timeout=self._timeout)


def _row_count(status: str) -> int:
    """The number of rows a command tag ("UPDATE 1", "DELETE 0", "INSERT 0 1") reports."""
    return int(status.rsplit(" ", 1)[-1])


def _user_from_row(row: asyncpg.Record) -> User:
    metadata = row["metadata"]
    return User(
        id=row["id"],
        username=row["username"],
        email=row["email"],
        scope=tuple(row["scope"]),
        plan=row["plan"],
        is_active=row["is_active"],
        password_hash=row["password_hash"],
        metadata=None if metadata is None else json.loads(metadata),
        vendor=tuple(row["vendor"]),
        created=int(row["created_ms"]),
        token_version=int(row["token_version"]),
    )


def _insert_row(user: NewUser, stored: User) -> tuple[Any, ...]:
    """The values of ``_INSERT_COLUMNS`` for one user."""
    return (
        user.id,
        user.username,
        user.username_key,
        user.username_skeleton,
        user.email,
        user.email_key,
        user.password_hash,
        list(user.scope),
        user.plan,
        None if user.metadata is None else json.dumps(user.metadata),
        list(stored.vendor),
        stored.created,
        stored.is_active,
        stored.token_version,
    )


def _where(query: UserQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (parameters $1, $2, ...) of ``query``'s filters and pattern; every condition must hold."""
    conditions: list[str] = []
    parameters: list[Any] = []

    def condition(template: str, value: object) -> None:
        parameters.append(value)
        conditions.append(template.format(f"${len(parameters)}"))

    if query.scope:
        condition("scope @> {}::text[]", list(query.scope))
    if query.vendor:
        condition("vendor @> {}::text[]", list(query.vendor))
    for plan in query.plan:
        condition("plan = {}", plan)
    for active in query.is_active:
        condition("is_active = {}", active)
    if query.pattern:
        # strpos, not LIKE: the pattern is a literal, so % and _ in it are just characters.
        condition("strpos(username_key, {}) > 0", query.pattern)
    return (" AND ".join(conditions) or "true"), parameters


def _assignments(changes: UserChanges) -> tuple[list[str], list[Any]]:
    """The SET clause's assignments (parameters $1, $2, ...) for ``changes``."""
    assignments: list[str] = []
    parameters: list[Any] = []

    def assign(column: str, value: object) -> None:
        parameters.append(value)
        assignments.append(f"{column} = ${len(parameters)}")

    if changes.scope is not None:
        assign("scope", list(changes.scope))
    if changes.vendor is not None:
        assign("vendor", list(changes.vendor))
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
        assign("is_active", changes.is_active)
    if changes.plan is not None:
        assign("plan", changes.plan)
    if changes.revoke_tokens:
        assignments.append("token_version = token_version + 1")
    return assignments, parameters


def _translate_unique_violation(exc: asyncpg.UniqueViolationError) -> Exception:
    error = _CONSTRAINT_ERRORS.get(exc.constraint_name or "")
    return exc if error is None else error()


def database_location(url: str) -> str:
    """``host:port/database`` of a connection URL, for messages: never the user's password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured database"
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    return f"{host}:{port}/{database}"


def describe_error(exc: BaseException, url: str) -> str:
    """One line on why a connection failed, with the URL's password taken out should a driver repeat it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        for secret in {password, unquote(password or "")} - {None, ""}:
            text = text.replace(str(secret), "***")
    return text


def unusable(action: str, url: str, exc: BaseException) -> StorageError:
    """The operator's one line for a database that could not be used: where, and why (no password)."""
    return StorageError(f"cannot {action} the database {database_location(url)}: {describe_error(exc, url)}")


async def _refresh_username_skeletons(connection: asyncpg.Connection) -> None:
    """Recompute every username's skeleton when the confusables data differs from the one they were made with.

    As in the SQLite store: users are taken in creation order, and a later look-alike of an earlier username
    gets no skeleton (NULL, which UNIQUE lets repeat) rather than stopping start-up.
    """
    note = await connection.fetchval("SELECT version FROM username_skeleton_data")
    if skeletons.noted_module_is_current(note):
        return
    rows = await connection.fetch("SELECT id, username FROM users ORDER BY created_ms, id")
    new_note = skeletons.current_note(has_users=bool(rows))
    if rows and skeletons.noted_version(note) != skeletons.noted_version(new_note):
        await connection.execute("UPDATE users SET username_skeleton = NULL")
        for row in rows:
            await connection.execute(
                "UPDATE users SET username_skeleton = $1 WHERE id = $2 AND NOT EXISTS"
                " (SELECT 1 FROM users WHERE username_skeleton = $1)",
                username_skeleton(row["username"]),
                row["id"],
            )
    await connection.execute("UPDATE username_skeleton_data SET version = $1", new_note)


async def _migrate(connection: asyncpg.Connection) -> tuple[int, int]:
    """Bring the schema to the newest version in one transaction, under the migration lock; return the
    versions before and after."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        current = int(await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if current > len(MIGRATIONS):
            raise StorageError(
                f"the database schema is version {current}, newer than this mixauth knows ({len(MIGRATIONS)})"
            )
        for version in range(current, len(MIGRATIONS)):
            await connection.execute(MIGRATIONS[version])
            await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", version + 1)
        await _refresh_username_skeletons(connection)
    return current, len(MIGRATIONS)


async def _connect(url: str, timeout: float) -> asyncpg.Connection:  # noqa: ASYNC109 - the driver's
    try:
        connection: asyncpg.Connection = await asyncpg.connect(url, timeout=timeout, command_timeout=timeout)
    except CONNECTION_ERRORS as exc:
        raise unusable("connect to", url, exc) from None
    return connection


async def migrate(url: str, *, timeout: float = 5.0) -> tuple[int, int]:  # noqa: ASYNC109 - the driver's
    """Bring the database at ``url`` to the newest schema; return the schema versions (before, after).

    Safe to run from several processes at once (the migration lock); raises StorageError when the database
    cannot be reached or its schema is newer than this code."""
    connection = await _connect(url, timeout)
    try:
        return await _migrate(connection)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise unusable("migrate", url, exc) from None
    finally:
        await connection.close(timeout=timeout)


@asynccontextmanager
async def open_store(
    url: str,
    *,
    pool_min: int = 1,
    pool_max: int = 10,
    timeout: float = 5.0,  # noqa: ASYNC109 - the driver's
) -> AsyncIterator[PostgresUserStore]:
    """Migrate the database at ``url`` (see ``migrate``), open a pool of ``pool_min`` to ``pool_max``
    connections, and close the pool on exit. ``timeout`` (seconds) bounds connecting, waiting for a pooled
    connection and each statement; StorageError when the database cannot be used."""
    await migrate(url, timeout=timeout)
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            timeout=timeout,
            command_timeout=timeout,
            server_settings={"application_name": "mixauth"},
        )
    except CONNECTION_ERRORS as exc:
        raise unusable("connect to", url, exc) from None
    try:
        yield PostgresUserStore(pool, timeout=timeout)
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except TimeoutError:  # a connection still busy past the timeout: closed without waiting for it
            pool.terminate()
