"""The admin command line's parser: ``python -m server [COMMAND] [OPTIONS]`` (see ``server.cli``).

Imported only when the command line has arguments: ``python -m server`` alone serves, and building the
parser's dozen commands cost about 5 ms of the server's start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from server import __version__
from server.config import parse_scopes
from server.security import USER_ID_PATTERN
from server.users import DEFAULT_PAGE_SIZE

MAX_PAGE_SIZE = 1_000_000


class UsageError(Exception):
    """The command line is wrong; the message is the one line to print (exit code 2)."""


PROG = "python -m server"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a misuse raises UsageError (one ``mixauth:`` line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def _scope_list(value: str) -> tuple[str, ...]:
    try:
        scopes = parse_scopes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not scopes:
        raise argparse.ArgumentTypeError("at least one scope is required")
    return scopes


def _one_scope(value: str) -> str:
    scopes = _scope_list(value)
    if len(scopes) != 1:
        raise argparse.ArgumentTypeError(f"expected one scope, got {value!r}")
    return scopes[0]


def _page_size(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_PAGE_SIZE}, got {value!r}")
    return int(value)


def _user_id(value: str) -> str:
    user_id = value.strip().lower()
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise argparse.ArgumentTypeError(f"expected a user id (24 hex characters), got {value!r}")
    return user_id


def _user_ref(value: str) -> str:
    # Bytes that are not UTF-8 reach argv as lone surrogates (PEP 383), which no stored name can hold and
    # the database driver cannot even encode.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {value!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", help="configuration file (default: ./config.toml)")
    common.add_argument("--data-dir", metavar="DIR", help="data directory (database and generated secret)")

    parser = ArgumentParser(
        prog=PROG,
        description="mixauth: authentication compatible with the Appmixer user API. Without a command, serve it.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"mixauth {__version__}")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on (default 2200)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # The command repeats --config and --data-dir; SUPPRESS keeps it from overwriting values given
        # before the command name with its own defaults.
        sub.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help="configuration file")
        sub.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS, help="data directory")
        return sub

    user_help = "the user's id, username or email"
    stdin_help = "read the password from standard input (otherwise it is prompted for on a terminal)"

    create = command("create-user", "create a user directly in the store (no rate limit); print the new id")
    create.add_argument("--username", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--scope", type=_scope_list, default="user", help="comma-separated scopes (default: user)")
    create.add_argument("--password-stdin", action="store_true", help=stdin_help)

    listing = command("list-users", "list users in creation order, a page at a time")
    listing.add_argument("--scope", type=_one_scope, help="only the users who hold this scope")
    listing.add_argument(
        "--limit", type=_page_size, default=DEFAULT_PAGE_SIZE, metavar="N", help="page size (default: 100)"
    )
    listing.add_argument("--after", type=_user_id, metavar="ID", help="start after this user id (the next page)")
    listing.add_argument("--json", action="store_true", help="print one JSON array instead of a table")

    password = command("set-password", "replace a user's password (the signup rules apply)")
    password.add_argument("user", metavar="USER", type=_user_ref, help=user_help)
    password.add_argument("--password-stdin", action="store_true", help=stdin_help)

    scope = command("set-scope", "replace a user's scopes")
    scope.add_argument("user", metavar="USER", type=_user_ref, help=user_help)
    scope.add_argument("--scope", type=_scope_list, required=True, help="comma-separated scopes, e.g. admin,user")

    delete = command("delete-user", "delete a user at once, without asking; their tokens stop working")
    delete.add_argument("user", metavar="USER", type=_user_ref, help=user_help)

    exporting = command(
        "export-users", "write every user (with password hash and revocation state) as JSON Lines, in id order"
    )
    exporting.add_argument(
        "--output", type=Path, metavar="FILE", help="write to FILE (mode 0600, replaced whole) instead of stdout"
    )

    importing = command(
        "import-users", "add the users of a JSON Lines file (export-users' format, or Appmixer's user documents)"
    )
    importing.add_argument("file", metavar="FILE", type=Path, help="the file to read ('-' for standard input)")
    importing.add_argument("--dry-run", action="store_true", help="check every line and the conflicts; write nothing")
    importing.add_argument(
        "--on-conflict",
        choices=("fail", "skip"),
        default="fail",
        help="a user whose id, username (or a look-alike) or email is taken: fail the import (default) or skip them",
    )

    command("migrate", "bring the database schema up to date (start-up does it too), then exit")

    check = command("check-config", "print the effective settings and where each came from; exit 2 if invalid")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser
