"""The command line: ``python -m server`` serves; its admin commands manage users and check the configuration.

    python -m server [--host H] [--port P]             serve the API
    python -m server create-user --username U --email E [--scope S,...] [--password-stdin]
    python -m server list-users [--scope S] [--limit N] [--after ID] [--json]
    python -m server set-password USER [--password-stdin]
    python -m server set-scope USER --scope S,...
    python -m server delete-user USER
    python -m server export-users [--output FILE]
    python -m server import-users FILE [--dry-run] [--on-conflict fail|skip]
    python -m server check-config [--json]

Every command takes ``--config PATH`` and ``--data-dir DIR``, before or after its name. ``USER`` is an id, a
username or an email, matched as sign-in matches them. The user commands go through ``server.users``, the
service the admin HTTP calls use, so its rules hold here too: the last admin keeps ``admin`` and is never
deleted, a password set here revokes the user's tokens, and ``list-users --json`` prints user objects.

The commands work on the data directory of a running server (SQLite in WAL mode; a write waits for the
server's rather than failing), and the server sees each change within a second (it checks the database's
data version at most once a second before using a user it remembers).

Every failure ends with one line on stderr starting with ``mixauth:`` and a non-zero exit code: 2 for a
bad command line or configuration, 1 for anything the command itself could not do (no such user, a password
the signup rules refuse, an unusable database). A failure shows that line only: the command's event lines
(``user.created``, ``user.password_changed``, ... as JSON on stderr) are written once it has succeeded, and
after a failure only at ``LOG_LEVEL=debug``. When the reader of the output goes away (``| head -1``), the
command stops quietly with exit code 141, as a program killed by SIGPIPE does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import getpass
import io
import json
import os
import sqlite3
import stat
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, TypeVar

from server import backends
from server.config import OPTIONS, ConfigError, Settings, load_settings, redacted_url
from server.domain import MixauthError, User, UserStore
from server.hashing import PasswordHasher
from server.logs import REDACTED, SENSITIVE_KEYS, configure_logging
from server.progress import Progress
from server.storage import StorageError, prepare_data_dir
from server.storage.sqlite import DATABASE_FILE
from server.users import UserAdministration, UserCreation
from server.views import iso_ms, user_object
from server.web import serving
from server.web.app import auth_policy, create_app

if TYPE_CHECKING:  # imported where they are used: serving does not pay for them at start-up
    import argparse

    from server import transfer

T = TypeVar("T")

# What a shell reports for a program that SIGPIPE ended (128 + 13): the reader of its output went away.
EXIT_BROKEN_PIPE = 141
SECRET_NAME_ENDINGS = ("secret", "password", "_token", "_key", "credentials")
# What check-config shows for a secret that is not set, when leaving it unset means something.
UNSET_SECRET_NOTES = {"jwt_secret": "(generated in data_dir)"}
# Settings shown with their password replaced (where a server is matters to an operator; its password not).
URL_KEYS = frozenset({"database_url", "redis_url"})


# What the user service's events name as the door a change came through.
VIA = "cli"


class CommandError(Exception):
    """A command could not do its job; the message is the one line to print."""


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> int:
    try:
        try:
            return _main(argv, environ, stdin)
        finally:
            # Output to a pipe is buffered: a reader that has gone is often only noticed here (--help too).
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit does not fail a second time
    ("Exception ignored ... BrokenPipeError"); what is left in the buffer had no reader anyway."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None, stdin: TextIO | None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # Without arguments: serve, with nothing from the command line (and without building the parser).
    args: Any = types.SimpleNamespace(command=None, config=None, data_dir=None, host=None, port=None)
    if arguments:
        from server.arguments import UsageError, build_parser

        try:
            args = build_parser().parse_args(arguments)
        except UsageError as exc:
            print(f"mixauth: {exc}", file=sys.stderr)
            return 2
    environ = os.environ if environ is None else environ
    try:
        settings = load_settings(
            args.config,
            environ,
            {"host": getattr(args, "host", None), "port": getattr(args, "port", None), "data_dir": args.data_dir},
        )
        if args.command is None:
            return serve(settings)
        gc.enable()  # off while python -m server started (server.__main__)
        with _event_lines_on_success(settings.log_level):
            return COMMANDS[args.command](settings, args, stdin or sys.stdin)
    except ConfigError as exc:
        print(f"mixauth: configuration error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, StorageError, backends.StoreMissing) as exc:
        print(f"mixauth: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"mixauth: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mixauth: interrupted", file=sys.stderr)
        return 130


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT (see ``server.web.serving``); 0 once stopped cleanly."""
    configure_logging(settings.log_level, cache=True)
    loop, loop_name = _event_loop()
    try:
        serving.run(create_app(settings), settings, loop, loop_name)
    except serving.StartupError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop when it is installed (a dependency wherever it installs), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


@contextmanager
def _event_lines_on_success(level: str) -> Iterator[None]:
    """Hold the command's log lines, and write them to stderr once it has succeeded.

    They are the auth events the contract asks for (``user.created``, ``user.scope_changed``, ...), one JSON
    line each, for whoever keeps the output of admin commands. A failure shows only its ``mixauth:`` line:
    the event it logged (``user.signup.rejected``) says the same thing in the server log's form, and two
    lines for one failure in two formats is noise. ``LOG_LEVEL=debug`` shows them after a failure too.
    """
    held = io.StringIO()
    configure_logging(level, stream=held)
    try:
        yield
    except BaseException:
        if level == "debug":
            sys.stderr.write(held.getvalue())
        raise
    sys.stderr.write(held.getvalue())


def create_user_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    password = _read_password(args.password_stdin, stdin)
    creation = UserCreation(username=args.username, email=args.email, password=password, scope=args.scope)
    user = _run_admin(_create_user(settings, creation))
    print(user.id)
    return 0


def list_users_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    async def run() -> list[User]:
        async with _administration(settings) as users:
            # One more than asked for says whether another page follows.
            return await users.page(scope=args.scope, limit=args.limit + 1, after=args.after)

    listed = asyncio.run(run())
    page = listed[: args.limit]
    if args.json:
        print(json.dumps([user_object(user) for user in page], ensure_ascii=False, indent=2))
    else:
        print(_user_table(page))
    if len(listed) > args.limit:
        print(f"mixauth: more users follow; for the next page add --after {page[-1].id}", file=sys.stderr)
    return 0


def set_password_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    async def find() -> User:
        async with _administration(settings) as users:
            return await users.find(args.user)

    async def change(user: User, password: str) -> None:
        async with _administration(settings) as users:
            await users.set_password(user.id, password, via=VIA)

    # The user is found before the password is asked for, and the prompt runs outside the event loop, so
    # an unknown name fails at once and Ctrl-C at the prompt interrupts cleanly.
    user = _run_admin(find())
    _run_admin(change(user, _read_password(args.password_stdin, stdin)))
    print(f"password changed for {user.id} ({user.username}); their tokens are revoked")
    return 0


def set_scope_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    async def run() -> tuple[User, User]:
        async with _administration(settings) as users:
            user = await users.find(args.user)
            return user, await users.set_scope(user.id, args.scope, via=VIA)

    before, after = _run_admin(run())
    print(f"scope of {after.id} ({after.username}): {_scopes(before.scope)} -> {_scopes(after.scope)}")
    return 0


def delete_user_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    async def run() -> User:
        async with _administration(settings) as users:
            user = await users.find(args.user)
            await users.delete(user.id, via=VIA)
            return user

    user = _run_admin(run())
    print(f"deleted {user.id} ({user.username}, {user.email})")
    return 0


def check_config_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    """The settings as the server would use them; reaching this point means load_settings found them valid."""
    config_file = args.config if args.config is not None else Path("config.toml")
    file_read = str(config_file) if args.config is not None or config_file.exists() else None
    secrets = _secret_keys()
    shown = {
        option.key: {
            "value": _setting_value(option.key, getattr(settings, option.key, None), secrets),
            "source": settings.sources.get(option.key, "default"),
            "env": option.env,
        }
        for option in OPTIONS
    }
    if args.json:
        print(json.dumps({"config_file": file_read, "settings": shown}, ensure_ascii=False, indent=2))
        return 0
    print(f"config file: {file_read or '(none)'}")
    rows = [[key, entry["source"], _text(entry["value"])] for key, entry in shown.items()]
    print(_table(["SETTING", "SOURCE", "VALUE"], rows))
    return 0


def migrate_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    """Bring the database's schema to this version's (what start-up does too), for a deployment job that runs
    before the new instances start."""
    before, after = _run_admin(backends.migrate(settings))
    where = "PostgreSQL" if settings.database_url else f"SQLite in {settings.data_dir}"
    if before == after:
        print(f"schema version {after} ({where}): up to date")
    else:
        print(f"schema version {before} -> {after} ({where})")
    return 0


def export_users_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    from server import transfer

    async def run(write: Callable[[bytes], object]) -> int:
        async with _open_existing_store(settings) as store:
            return await transfer.export_users(store, write)

    if args.output is None:
        sys.stdout.flush()
        binary = getattr(sys.stdout, "buffer", None)
        asyncio.run(run(binary.write if binary is not None else lambda line: sys.stdout.write(line.decode("utf-8"))))
        return 0
    try:
        with _replaced_whole(args.output) as output:
            count = asyncio.run(run(output.write))
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"exported {count} users to {args.output}")
    return 0


def import_users_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    from server import transfer

    async def check(store: UserStore | None, source: BinaryIO, size: int | None) -> transfer.ImportPlan:
        progress = Progress(sys.stderr, f"checking {args.file}", size)
        plan = await transfer.plan_import(
            store,
            transfer.read_lines(source),
            default_plan=settings.default_plan,
            on_conflict=args.on_conflict,
            progress=progress.advance,
        )
        progress.close()
        return plan

    async def run(source: BinaryIO, size: int | None) -> transfer.ImportPlan:
        if args.dry_run and settings.database_url is None and not (settings.data_dir / DATABASE_FILE).is_file():
            return await check(None, source, size)  # a dry run creates no database
        async with backends.open_user_store(settings) as store:
            plan = await check(store, source, size)
            if plan.ok and not args.dry_run:
                await transfer.apply_import(store, plan)
            return plan

    try:
        with _opened_for_reading(args.file, stdin) as (source, size):
            plan = asyncio.run(run(source, size))
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except MixauthError as exc:  # a user added meanwhile took a key the check found free
        raise CommandError(f"{exc.message} (a user was added during the import); nothing imported") from None
    _report_lines("skipped ", args.file, plan.skipped)
    if not plan.ok:
        _report_lines("mixauth: ", args.file, plan.bad)
        bad = f"{len(plan.bad)} bad line{'s' if len(plan.bad) != 1 else ''}"
        raise CommandError(f"{bad} in {args.file}: nothing imported")
    if args.dry_run:
        print(f"dry run: would import {len(plan.users)}, skip {len(plan.skipped)}; nothing written")
    else:
        print(f"imported {len(plan.users)}, skipped {len(plan.skipped)}")
    return 0


# How many bad or skipped lines an import names one by one; the rest are counted.
REPORTED_LINES = 20


def _report_lines(prefix: str, path: Path, problems: Sequence[transfer.LineProblem]) -> None:
    for problem in problems[:REPORTED_LINES]:
        print(f"{prefix}{path}:{problem.line}: {problem.message}", file=sys.stderr)
    if len(problems) > REPORTED_LINES:
        print(f"{prefix}... and {len(problems) - REPORTED_LINES} more", file=sys.stderr)


@contextmanager
def _opened_for_reading(path: Path, stdin: TextIO) -> Iterator[tuple[BinaryIO, int | None]]:
    """The file as bytes, with its size when it is a regular file (for the progress bar); '-' is stdin."""
    if str(path) == "-":
        buffer = getattr(stdin, "buffer", None)
        yield (buffer if buffer is not None else io.BytesIO(stdin.read().encode("utf-8"))), None
        return
    with path.open("rb") as source:
        status = os.fstat(source.fileno())
        yield source, status.st_size if stat.S_ISREG(status.st_mode) else None


@contextmanager
def _replaced_whole(path: Path) -> Iterator[BinaryIO]:
    """A new file that takes ``path``'s place only once it is complete and on disk: a failure half-way leaves
    the old file (or none), never half a file. Mode 0600 from the start: it holds password hashes."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as output:
            yield output
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


Command = Callable[[Settings, "argparse.Namespace", TextIO], int]
COMMANDS: dict[str, Command] = {
    "create-user": create_user_command,
    "list-users": list_users_command,
    "set-password": set_password_command,
    "set-scope": set_scope_command,
    "delete-user": delete_user_command,
    "export-users": export_users_command,
    "import-users": import_users_command,
    "check-config": check_config_command,
    "migrate": migrate_command,
}


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        # Empty input, or an empty first line (printf '%s\n' "$UNSET_VARIABLE"), is no password at all, not
        # a short one.
        if not password:
            raise CommandError("no password given on standard input")
        return password
    if not stdin.isatty():
        raise CommandError("no password: pass --password-stdin to read it from standard input")
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Repeat password: ")
    except EOFError:
        raise CommandError("no password given") from None
    if second != first:
        raise CommandError("the passwords do not match")
    return first


@asynccontextmanager
async def _administration(settings: Settings, *, create: bool = False) -> AsyncIterator[UserAdministration]:
    """The user service the HTTP admin calls use, on the data directory's store (an existing one unless
    ``create``), with a one-thread hashing pool at the configured cost."""
    hasher = PasswordHasher(settings.bcrypt_rounds, workers=1)
    try:
        async with backends.open_user_store(settings) if create else _open_existing_store(settings) as store:
            yield UserAdministration(store, hasher, auth_policy(settings))
    finally:
        await asyncio.to_thread(hasher.close)


async def _create_user(settings: Settings, creation: UserCreation) -> User:
    async with _administration(settings, create=True) as users:
        return await users.create(creation, via=VIA)


def _open_existing_store(settings: Settings) -> AbstractAsyncContextManager[UserStore]:
    """The store, for commands that only make sense on existing users (a typo must not create a database)."""
    if settings.database_url is None:
        prepare_data_dir(settings.data_dir, create=False)
    return backends.open_user_store(settings, create=False)


def _run_admin(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except MixauthError as exc:
        raise CommandError(exc.message) from None


def _scopes(scope: Sequence[str]) -> str:
    return ",".join(scope)


def _user_table(users: Sequence[User]) -> str:
    rows = [
        [
            user.id,
            user.username,
            user.email,
            _scopes(user.scope),
            user.plan,
            "yes" if user.is_active else "no",
            iso_ms(user.created),
        ]
        for user in users
    ]
    return _table(["ID", "USERNAME", "EMAIL", "SCOPE", "PLAN", "ACTIVE", "CREATED"], rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _secret_keys() -> frozenset[str]:
    """Settings never to print: those Settings keeps out of its repr, and those named like a secret."""
    hidden = {item.name for item in dataclasses.fields(Settings) if not item.repr}
    named = {option.key for option in OPTIONS if option.key.endswith(SECRET_NAME_ENDINGS)}
    return frozenset(hidden | named | SENSITIVE_KEYS)


def _setting_value(key: str, value: Any, secrets: frozenset[str]) -> Any:
    """A setting as plain JSON data (tuples as lists, paths and other objects as strings), secrets hidden."""
    if key in URL_KEYS and isinstance(value, str):
        return redacted_url(value)
    if key in secrets:
        if value is None or value == "" or value == ():
            return UNSET_SECRET_NOTES.get(key)
        return REDACTED
    if isinstance(value, tuple | list | set | frozenset):
        return [_setting_value(key, item, secrets) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(item) for item in value) or "(empty)"
    return str(value)
