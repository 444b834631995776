"""The command line: ``python -m server`` serves; ``python -m server create-user ...`` manages users.

Every failure ends with one line on stderr starting with ``mixauth:`` and a non-zero exit code: 2 for a
bad command line or configuration, 1 for anything the command itself could not do.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from server import __version__
from server.config import ConfigError, Settings, load_settings, parse_scopes
from server.domain import MixauthError
from server.hashing import PasswordHasher
from server.logs import configure_logging
from server.service import register_user
from server.storage import StorageError
from server.storage.sqlite import open_store
from server.web.app import JsonAccessLogger, auth_policy, create_app


class CommandError(Exception):
    """A command could not do its job; the message is the one line to print."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", help="configuration file (default: ./config.toml)")
    common.add_argument("--data-dir", metavar="DIR", help="data directory (database and generated secret)")

    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="mixauth: authentication compatible with the Appmixer user API.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"mixauth {__version__}")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on (default 2200)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # The sub-command repeats --config and --data-dir; SUPPRESS keeps it from overwriting values given
    # before the command name with its own defaults.
    create = commands.add_parser("create-user", help="create a user directly in the store (no rate limit)")
    create.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS)
    create.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS)
    create.add_argument("--username", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--scope", default="user", help="comma-separated scopes (default: user)")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = load_settings(
            args.config,
            environ,
            {"host": getattr(args, "host", None), "port": getattr(args, "port", None), "data_dir": args.data_dir},
        )
        if args.command == "create-user":
            return create_user_command(settings, args, stdin or sys.stdin)
        return serve(settings)
    except ConfigError as exc:
        print(f"mixauth: configuration error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, StorageError) as exc:
        print(f"mixauth: {exc}", file=sys.stderr)
        return 1


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            access_log_class=JsonAccessLogger,
            print=None,
        )
    except OSError as exc:
        if exc.filename is not None:
            raise CommandError(f"cannot use {exc.filename}: {exc.strerror or exc}") from None
        raise CommandError(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    return 0


def create_user_command(settings: Settings, args: argparse.Namespace, stdin: TextIO) -> int:
    try:
        scope = parse_scopes(args.scope)
    except ValueError as exc:
        raise CommandError(f"--scope: {exc}") from None
    if not scope:
        raise CommandError("--scope: at least one scope is required")
    password = _read_password(args.password_stdin, stdin)
    configure_logging(settings.log_level, stream=sys.stderr)
    body = {"username": args.username, "email": args.email, "password": password}
    user_id = asyncio.run(_create_user(settings, body, scope))
    print(user_id)
    return 0


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not stdin.isatty():
        raise CommandError("no password: pass --password-stdin to read it from standard input")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise CommandError("the passwords do not match")
    return first


async def _create_user(settings: Settings, body: dict[str, Any], scope: tuple[str, ...]) -> str:
    hasher = PasswordHasher(settings.bcrypt_rounds, workers=1)
    try:
        async with open_store(settings.data_dir) as store:
            user = await register_user(store, hasher, auth_policy(settings), body, scope, via="cli")
    except MixauthError as exc:
        raise CommandError(exc.message) from None
    finally:
        hasher.close()
    return user.id
