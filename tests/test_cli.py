"""The admin command line: every command, its output, and the one-line failure of every misuse.

Commands run in-process through ``server.cli.main``; the last tests run them against the data directory of
a running application and check what the server then answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.cli import main
from server.config import OPTIONS, Settings
from server.security import USER_ID_PATTERN, check_password, password_bytes
from server.storage.sqlite import DATABASE_FILE, open_store
from tests.conftest import JWT_SECRET, PASSWORD, FakeClock, bearer, create_admin, free_port, sign_up
from tests.process import base_env
from tests.test_store_sqlite import new_user

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("restore_logging")  # create-user configures logging for the process


def run(argv: list[str], data_dir: Path, stdin: str = PASSWORD + "\n", **env: str) -> int:
    environ = {"BCRYPT_ROUNDS": "4", "DATA_DIR": str(data_dir), **env}
    return main(argv, environ=environ, stdin=io.StringIO(stdin))


def stored(data_dir: Path, username: str) -> Any:
    """Read a user back from the store, as a separate process would (the commands run their own loop)."""

    async def read() -> Any:
        async with open_store(data_dir) as store:
            return await store.get_by_username(username)

    return asyncio.run(read())


def assert_one_error_line(capsys: pytest.CaptureFixture[str], fragment: str) -> str:
    """Nothing on stdout; on stderr one ``mixauth:`` line containing ``fragment``, and nothing else (no log
    line, no traceback)."""
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("mixauth:"), err
    assert fragment in err
    return err.rstrip("\n")


def create(data_dir: Path, capsys: pytest.CaptureFixture[str], username: str, scope: str = "user") -> str:
    """Create a user with the command line; return its id, leaving nothing captured."""
    argv = ["create-user", "--username", username, "--email", f"{username}@example.com", "--scope", scope]
    assert run([*argv, "--password-stdin"], data_dir) == 0
    user_id = capsys.readouterr().out.strip()
    assert USER_ID_PATTERN.fullmatch(user_id)
    return user_id


def log_events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_create_user_prints_the_new_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["create-user", "--username", "Admin", "--email", "admin@example.com", "--password-stdin"], tmp_path)
    out, err = capsys.readouterr()
    assert code == 0
    user_id = out.strip()
    assert USER_ID_PATTERN.match(user_id)
    user = stored(tmp_path, "admin")
    assert user.id == user_id
    assert user.scope == ("user",)
    assert PASSWORD not in out + err
    assert user.password_hash not in out + err


def test_create_user_with_scopes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["create-user", "--username", "root", "--email", "root@example.com", "--scope", "admin,user"]
    assert run([*argv, "--password-stdin"], tmp_path) == 0
    assert (stored(tmp_path, "root")).scope == ("admin", "user")


def test_data_dir_and_config_flags_work_after_the_command(tmp_path: Path) -> None:
    config = tmp_path / "mixauth.toml"
    config.write_text('data_dir = "ignored-by-the-flag"\nbcrypt_rounds = 4\n')
    argv = ["create-user", "--config", str(config), "--data-dir", str(tmp_path / "d"), "--username", "u"]
    code = main([*argv, "--email", "u@example.com", "--password-stdin"], environ={}, stdin=io.StringIO("abc321"))
    assert code == 0
    assert stored(tmp_path / "d", "u") is not None
    assert not (tmp_path / "ignored-by-the-flag").exists()


def test_data_dir_before_the_command_works_too(tmp_path: Path) -> None:
    argv = ["--data-dir", str(tmp_path / "d"), "create-user", "--username", "u", "--email", "u@example.com"]
    code = main([*argv, "--password-stdin"], environ={"BCRYPT_ROUNDS": "4"}, stdin=io.StringIO("abc321\n"))
    assert code == 0
    assert stored(tmp_path / "d", "u") is not None


@pytest.mark.parametrize(
    ("argv_tail", "stdin", "message"),
    [
        (["--username", "taken", "--email", "new@example.com"], PASSWORD, "username is already taken"),
        (["--username", "new", "--email", "TAKEN@example.com"], PASSWORD, "email address already exists"),
        (["--username", "new", "--email", "new@example.com"], "abc", "at least 6 characters"),
        (["--username", "new", "--email", "not-an-email"], PASSWORD, "email address is not valid"),
    ],
)
def test_failures_end_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], stdin: str, message: str
) -> None:
    base = ["create-user", "--password-stdin"]
    assert run([*base, "--username", "taken", "--email", "taken@example.com"], tmp_path) == 0
    capsys.readouterr()
    assert run([*base, *argv_tail], tmp_path, stdin=stdin) == 1
    assert_one_error_line(capsys, message)


def test_a_failure_shows_its_event_lines_at_debug_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["create-user", "--username", "new", "--email", "new@example.com", "--password-stdin"]
    assert run(argv, tmp_path, stdin="abc\n", LOG_LEVEL="debug") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "mixauth: The password must be at least 6 characters long."
    assert [event["reason"] for event in log_events(err) if event["event"] == "user.signup.rejected"] == [
        "password_too_short"
    ]


def test_a_success_shows_its_event_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_id = create(tmp_path, capsys, "alice")  # create() reads stdout only
    assert run(["delete-user", "alice"], tmp_path) == 0
    assert [(event["event"], event["user_id"]) for event in log_events(capsys.readouterr().err)] == [
        ("user.deleted", user_id)
    ]


@pytest.mark.parametrize("stdin", ["", "\n", "\nabc321\n"])
@pytest.mark.parametrize(
    "argv",
    [
        ["create-user", "--username", "u", "--email", "u@example.com", "--password-stdin"],
        ["set-password", "alice", "--password-stdin"],
    ],
)
def test_no_password_on_standard_input_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], stdin: str
) -> None:
    # Empty input, or an empty first line (printf '%s\n' "$UNSET_VARIABLE"), is no password, not a short one.
    create(tmp_path, capsys, "alice")
    assert run(argv, tmp_path, stdin=stdin) == 1
    assert assert_one_error_line(capsys, "") == "mixauth: no password given on standard input"
    assert stored(tmp_path, "u") is None


@pytest.mark.parametrize(
    "argv",
    [
        ["create-user", "--username", "u", "--email", "u@example.com", "--password-stdin"],
        ["list-users"],
        ["set-password", "alice", "--password-stdin"],
        ["set-scope", "alice", "--scope", "admin"],
        ["delete-user", "alice"],
    ],
)
def test_a_data_directory_that_is_a_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("")
    assert run(argv, not_a_directory) == 1
    assert assert_one_error_line(capsys, "") == f"mixauth: data directory {not_a_directory} is not a directory"


def test_a_data_directory_under_a_file_cannot_be_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    argv = ["create-user", "--username", "u", "--email", "u@example.com", "--password-stdin"]
    assert run(argv, tmp_path / "file" / "data") == 1
    assert_one_error_line(capsys, f"mixauth: cannot create the data directory {tmp_path / 'file' / 'data'}: ")


@pytest.mark.parametrize("secret", ["generated", "JWT_SECRET"])
def test_serving_from_a_data_directory_that_is_a_file_is_one_line(tmp_path: Path, secret: str) -> None:
    # The generated secret and the database are the two things serving puts in the data directory.
    (tmp_path / "data").write_text("")
    env = base_env(DATA_DIR=str(tmp_path / "data"), PORT=str(free_port()), HOST="127.0.0.1")
    if secret == "JWT_SECRET":
        env["JWT_SECRET"] = JWT_SECRET
    done = subprocess.run(
        [sys.executable, "-m", "server"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.decode() == f"mixauth: data directory {tmp_path / 'data'} is not a directory\n"


@pytest.mark.parametrize("scope", ["bad scope", ",", ""])
def test_a_bad_scope_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], scope: str) -> None:
    argv = ["create-user", "--username", "u", "--email", "u@example.com", "--scope", scope, "--password-stdin"]
    assert run(argv, tmp_path) == 2
    assert_one_error_line(capsys, "create-user: argument --scope")
    assert not (tmp_path / DATABASE_FILE).exists()


def test_without_password_stdin_a_non_terminal_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["create-user", "--username", "u", "--email", "u@example.com"], tmp_path) == 1
    assert "--password-stdin" in capsys.readouterr().err


def test_configuration_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["create-user", "--username", "u", "--email", "u@example.com"], tmp_path, BCRYPT_ROUNDS="many")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixauth: configuration error: BCRYPT_ROUNDS")
    assert len(err.splitlines()) == 1


def test_missing_required_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-user", "--email", "u@example.com"], environ={}) == 2
    assert_one_error_line(capsys, "create-user: the following arguments are required: --username")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"], environ={})
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("mixauth ")


# Every command's help, and misuse of the command line as a whole.


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("create-user", "--username"),
        ("list-users", "--after ID"),
        ("set-password", "USER"),
        ("set-scope", "--scope"),
        ("delete-user", "USER"),
        ("check-config", "--json"),
    ],
)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str, fragment: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"], environ={})
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m server {command}")
    assert fragment in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["list-users", "--limit", "0"], "list-users: argument --limit"),
        (["list-users", "--limit", "many"], "list-users: argument --limit"),
        (["list-users", "--after", "not-an-id"], "list-users: argument --after: expected a user id"),
        (["list-users", "--scope", "admin,user"], "list-users: argument --scope: expected one scope"),
        (["list-users", "--scope", "bad scope"], "list-users: argument --scope"),
        (["set-password"], "set-password: the following arguments are required: USER"),
        (["set-scope", "alice"], "set-scope: the following arguments are required: --scope"),
        (["set-scope", "alice", "--scope", "bad scope"], "set-scope: argument --scope"),
        (["set-scope", "alice", "--scope", ", ,"], "set-scope: argument --scope: at least one scope is required"),
        (["delete-user"], "delete-user: the following arguments are required: USER"),
        (["delete-user", "alice", "bob"], "unrecognized arguments: bob"),
        # A byte that is not UTF-8 in argv (a latin-1 terminal) arrives as a lone surrogate.
        (["delete-user", "ali\udcffce"], "delete-user: argument USER: not UTF-8 text"),
        (["set-scope", "\udcff", "--scope", "admin"], "set-scope: argument USER: not UTF-8 text"),
        (["set-password", "\udcff", "--password-stdin"], "set-password: argument USER: not UTF-8 text"),
        (["check-config", "--yaml"], "unrecognized arguments: --yaml"),
    ],
)
def test_command_line_misuse_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    create(tmp_path, capsys, "alice")
    assert run(argv, tmp_path) == 2
    assert_one_error_line(capsys, fragment)


@pytest.mark.parametrize(
    "argv",
    [
        ["list-users"],
        ["set-password", "alice", "--password-stdin"],
        ["set-scope", "alice", "--scope", "admin"],
        ["delete-user", "alice"],
    ],
)
def test_admin_commands_refuse_a_data_directory_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "typo"
    assert run(argv, missing) == 1
    assert_one_error_line(capsys, f"no database at {missing / DATABASE_FILE}")
    assert not missing.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["set-password", "nobody", "--password-stdin"],
        ["set-scope", "nobody", "--scope", "admin"],
        ["delete-user", "nobody"],
    ],
)
def test_an_unknown_user_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    create(tmp_path, capsys, "alice")
    assert run(argv, tmp_path) == 1
    assert assert_one_error_line(capsys, "") == "mixauth: no user matches 'nobody'"


@pytest.mark.parametrize("command", [["delete-user"], ["set-scope", "--scope", "admin"]])
def test_a_name_that_fits_two_users_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    first = create(tmp_path, capsys, "alice")
    # bob's username is alice's email.
    argv = ["create-user", "--username", "alice@example.com", "--email", "bob@example.com", "--password-stdin"]
    assert run(argv, tmp_path) == 0
    second = capsys.readouterr().out.strip()
    assert run([command[0], "alice@example.com", *command[1:]], tmp_path) == 1
    line = assert_one_error_line(capsys, "matches more than one user")
    assert first in line
    assert second in line
    assert "by id" in line
    assert run([command[0], first, *command[1:]], tmp_path) == 0


# list-users


def test_list_users_prints_a_table_in_id_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {create(tmp_path, capsys, name, scope): name for name, scope in [("bob", "user"), ("alice", "admin,user")]}
    assert run(["list-users"], tmp_path) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "USERNAME", "EMAIL", "SCOPE", "PLAN", "ACTIVE", "CREATED"]
    assert [row.split()[0] for row in rows] == sorted(ids)
    for row in rows:
        user_id, username, email, scope, plan, active, created = row.split()
        assert username == ids[user_id]
        assert email == f"{username}@example.com"
        assert scope == ("admin,user" if username == "alice" else "user")
        assert (plan, active) == ("free", "no")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created)
        assert header.index("SCOPE") == row.index(scope)  # the columns line up
    assert "$2b$" not in out


def test_list_users_json_is_one_array_of_user_objects_without_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each user as the admin API's user object (server.views.user_object), with the configured vendor."""
    user_id = create(tmp_path, capsys, "alice", "admin,user")
    assert run(["list-users", "--json"], tmp_path, DEFAULT_USER_VENDOR="acme, beta") == 0
    out, err = capsys.readouterr()
    assert err == ""
    (user,) = json.loads(out)
    created = user.pop("created")
    assert user == {
        "id": user_id,
        "username": "alice",
        "email": "alice@example.com",
        "scope": ["admin", "user"],
        "plan": "free",
        "isActive": False,
        "vendor": [],  # made before DEFAULT_USER_VENDOR was set
        "metadata": {},
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created)
    assert created[:19] == datetime.fromtimestamp(int(user_id[:8], 16), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    argv = ["create-user", "--username", "bob", "--email", "bob@example.com", "--password-stdin"]
    assert run(argv, tmp_path, DEFAULT_USER_VENDOR="acme, beta") == 0
    assert stored(tmp_path, "bob").vendor == ("acme", "beta")


def test_list_users_of_no_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path, capsys, "alice", "admin")
    assert run(["list-users", "--scope", "nobody"], tmp_path) == 0
    assert capsys.readouterr() == ("ID  USERNAME  EMAIL  SCOPE  PLAN  ACTIVE  CREATED\n", "")
    assert run(["list-users", "--scope", "nobody", "--json"], tmp_path) == 0
    assert capsys.readouterr() == ("[]\n", "")


def test_list_users_filters_by_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = create(tmp_path, capsys, "root", "admin,user")
    create(tmp_path, capsys, "alice", "user")
    create(tmp_path, capsys, "near", "admin-read")
    assert run(["list-users", "--scope", "admin", "--json"], tmp_path) == 0
    assert [user["id"] for user in json.loads(capsys.readouterr().out)] == [admin]


@pytest.mark.parametrize("as_json", [False, True])
def test_list_users_pages_with_limit_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    ids = sorted(create(tmp_path, capsys, f"user{n}") for n in range(5))
    form = ["--json"] if as_json else []

    def page(*extra: str) -> tuple[list[str], str]:
        assert run(["list-users", "--limit", "2", *form, *extra], tmp_path) == 0
        out, err = capsys.readouterr()
        listed = (
            [user["id"] for user in json.loads(out)] if as_json else [row.split()[0] for row in out.splitlines()[1:]]
        )
        return listed, err

    seen: list[str] = []
    listed, err = page()
    while err:
        seen += listed
        assert err == f"mixauth: more users follow; for the next page add --after {listed[-1]}\n"
        listed, err = page("--after", listed[-1])
    seen += listed
    assert seen == ids
    assert len(listed) == 1


def test_list_users_default_page_is_100(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def fill() -> None:
        async with open_store(tmp_path) as store:
            for n in range(101):
                await store.add(new_user(f"user{n}", f"user{n}@example.com"))

    asyncio.run(fill())
    assert run(["list-users", "--json"], tmp_path) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 100
    assert "--after" in err


# set-password


def test_set_password_replaces_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_id = create(tmp_path, capsys, "alice")
    assert run(["set-password", "ALICE@example.com", "--password-stdin"], tmp_path, stdin="new-secret-9\n") == 0
    out, err = capsys.readouterr()
    assert out == f"password changed for {user_id} (alice); their tokens are revoked\n"
    user = stored(tmp_path, "alice")
    assert user.token_version == 1  # every token issued before is refused
    assert user.password_hash.startswith("$2b$04$")  # BCRYPT_ROUNDS
    assert check_password(password_bytes("new-secret-9"), user.password_hash)
    assert not check_password(password_bytes(PASSWORD), user.password_hash)
    assert [(event["event"], event["user_id"], event["via"]) for event in log_events(err)] == [
        ("user.updated", user_id, "cli"),
        ("user.password_changed", user_id, "cli"),
        ("tokens.revoked", user_id, "cli"),
    ]
    assert "new-secret-9" not in out + err
    assert user.password_hash not in out + err


@pytest.mark.parametrize(
    ("password", "env", "message"),
    [
        ("abc", {}, "at least 6 characters"),
        ("eight-ch", {"PASSWORD_MIN_LENGTH": "10"}, "at least 10 characters"),
        ("x" * 73, {}, "at most 72 bytes"),
        (" ", {}, "at least 6 characters"),
    ],
)
def test_set_password_applies_the_signup_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], password: str, env: dict[str, str], message: str
) -> None:
    create(tmp_path, capsys, "alice")
    before = stored(tmp_path, "alice").password_hash
    assert run(["set-password", "alice", "--password-stdin"], tmp_path, stdin=password + "\n", **env) == 1
    assert_one_error_line(capsys, message)
    assert stored(tmp_path, "alice").password_hash == before


def test_set_password_without_password_stdin_off_a_terminal_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(tmp_path, capsys, "alice")
    assert run(["set-password", "alice"], tmp_path) == 1
    assert_one_error_line(capsys, "no password: pass --password-stdin")


# set-scope


def test_set_scope_replaces_the_scopes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_id = create(tmp_path, capsys, "alice")
    assert run(["set-scope", user_id.upper(), "--scope", "admin, user,admin"], tmp_path) == 0
    out, err = capsys.readouterr()
    assert out == f"scope of {user_id} (alice): user -> admin,user\n"
    assert stored(tmp_path, "alice").scope == ("admin", "user")
    updated, event = log_events(err)
    assert (updated["event"], updated["fields"]) == ("user.updated", ["scope"])
    assert event["event"] == "user.scope_changed"
    assert (event["user_id"], event["scope"], event["previous_scope"], event["via"]) == (
        user_id,
        ["admin", "user"],
        ["user"],
        "cli",
    )


# delete-user


def test_delete_user_deletes_at_once_and_frees_the_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_id = create(tmp_path, capsys, "alice")
    other = create(tmp_path, capsys, "bob")
    assert run(["delete-user", "alice"], tmp_path, stdin="") == 0
    out, err = capsys.readouterr()
    assert out == f"deleted {user_id} (alice, alice@example.com)\n"
    assert [(event["event"], event["user_id"], event["via"]) for event in log_events(err)] == [
        ("user.deleted", user_id, "cli")
    ]
    assert stored(tmp_path, "alice") is None
    assert stored(tmp_path, "bob").id == other
    assert run(["delete-user", "alice"], tmp_path) == 1
    assert_one_error_line(capsys, "no user matches 'alice'")
    assert create(tmp_path, capsys, "alice") != user_id


# The rules the admin API shares (server.users): the last-admin guard, scope names.


def test_the_last_admin_keeps_admin_and_is_not_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = create(tmp_path, capsys, "root", "admin,user")
    assert run(["set-scope", "root", "--scope", "user"], tmp_path) == 1
    assert_one_error_line(capsys, "last user with the admin scope")
    assert run(["delete-user", "root"], tmp_path) == 1
    assert_one_error_line(capsys, "last user with the admin scope")
    assert stored(tmp_path, "root").scope == ("admin", "user")
    create(tmp_path, capsys, "second", "admin")
    assert run(["set-scope", "root", "--scope", "user"], tmp_path) == 0
    assert capsys.readouterr().out == f"scope of {root} (root): admin,user -> user\n"
    assert run(["delete-user", "second"], tmp_path) == 1
    assert_one_error_line(capsys, "last user with the admin scope")


@pytest.mark.parametrize("scope", ["Admin", "admin:read", "user,acme.x"])
def test_scope_names_follow_the_admin_apis_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str], scope: str) -> None:
    create(tmp_path, capsys, "alice")
    assert run(["set-scope", "alice", "--scope", scope], tmp_path) == 1
    assert_one_error_line(capsys, "is not a valid scope name (1 to 64 of a-z, 0-9, _ and - only)")
    argv = ["create-user", "--username", "bob", "--email", "bob@example.com", "--scope", scope, "--password-stdin"]
    assert run(argv, tmp_path) == 1
    assert_one_error_line(capsys, "is not a valid scope name")
    assert stored(tmp_path, "bob") is None


def test_set_password_revokes_every_token_each_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path, capsys, "alice")
    for version in (1, 2):
        assert run(["set-password", "alice", "--password-stdin"], tmp_path, stdin=f"new-secret-{version}\n") == 0
        capsys.readouterr()
        assert stored(tmp_path, "alice").token_version == version


# check-config


def check_config(capsys: pytest.CaptureFixture[str], *argv: str, environ: dict[str, str]) -> dict[str, Any]:
    assert main(["check-config", "--json", *argv], environ=environ) == 0
    out, err = capsys.readouterr()
    assert err == ""
    shown: dict[str, Any] = json.loads(out)
    return shown


def test_check_config_shows_every_setting_and_where_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mixauth.toml"
    config.write_text('default_plan = "team"\nport = 8000\n')
    environ = {"PORT": "9000", "BCRYPT_ROUNDS": "10"}
    argv = ["--config", str(config), "--host", "0.0.0.0"]  # noqa: S104 (shown, never bound)
    assert main([*argv, "check-config"], environ=environ) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"config file: {config}"
    assert lines[1].split() == ["SETTING", "SOURCE", "VALUE"]
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in lines[2:]}
    assert list(rows) == [option.key for option in OPTIONS]  # settings added later appear by themselves
    assert rows["host"] == ["flag", "0.0.0.0"]  # noqa: S104
    assert rows["port"] == ["env", "9000"]
    assert rows["default_plan"] == ["file", "team"]
    assert rows["bcrypt_rounds"] == ["env", "10"]
    assert rows["log_level"] == ["default", "info"]
    assert rows["jwt_secret"] == ["default", "(generated in data_dir)"]


def test_migrate_brings_the_schema_up_to_date_then_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.storage.sqlite import SCHEMA_VERSION

    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "migrate"], environ={}) == 0
    assert capsys.readouterr().out == f"schema version 0 -> {SCHEMA_VERSION} (SQLite in {data})\n"
    assert main(["--data-dir", str(data), "migrate"], environ={}) == 0
    assert capsys.readouterr().out == f"schema version {SCHEMA_VERSION} (SQLite in {data}): up to date\n"


def test_check_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    shown = check_config(
        capsys,
        "--data-dir",
        str(tmp_path / "d"),
        environ={"API_USER_CREATE_SCOPE": "admin,ops", "JWT_TOKEN_EXP": "12h"},
    )
    assert shown["config_file"] is None
    settings = shown["settings"]
    assert list(settings) == [option.key for option in OPTIONS]
    assert settings["data_dir"] == {"value": str(tmp_path / "d"), "source": "flag", "env": "DATA_DIR"}
    assert settings["api_user_create_scope"] == {
        "value": ["admin", "ops"],
        "source": "env",
        "env": "API_USER_CREATE_SCOPE",
    }
    assert settings["jwt_token_exp"]["value"] == 12 * 3600
    assert settings["jwt_secret"] == {"value": "(generated in data_dir)", "source": "default", "env": "JWT_SECRET"}
    assert not (tmp_path / "d").exists()  # checking creates nothing


def test_check_config_names_the_config_toml_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("log_level = 'debug'\n")
    shown = check_config(capsys, environ={})
    assert shown["config_file"] == "config.toml"
    assert shown["settings"]["log_level"] == {"value": "debug", "source": "file", "env": "LOG_LEVEL"}


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("origin", ["env", "file"])
def test_check_config_never_shows_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool, origin: str
) -> None:
    config = tmp_path / "mixauth.toml"
    config.write_text(f'jwt_secret = "{JWT_SECRET}"\n' if origin == "file" else "")
    environ = {"JWT_SECRET": JWT_SECRET} if origin == "env" else {}
    argv = ["--config", str(config), "check-config", *(["--json"] if as_json else [])]
    assert main(argv, environ=environ) == 0
    out = capsys.readouterr().out
    assert JWT_SECRET not in out
    assert JWT_SECRET[:8] not in out
    if as_json:
        assert json.loads(out)["settings"]["jwt_secret"] == {
            "value": "[redacted]",
            "source": origin,
            "env": "JWT_SECRET",
        }
    else:
        assert re.search(rf"^jwt_secret +{origin} +\[redacted\]$", out, re.MULTILINE)


def test_check_config_shows_where_the_database_and_redis_are_but_not_their_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "DATABASE_URL": "postgresql://mixauth:pg-Pa55word@db.internal:5432/auth",
        "REDIS_URL": "redis://:redis-Pa55word@cache:6379/2",
        "JWT_SECRET": JWT_SECRET,
        "JWT_SECRET_PREVIOUS": "p" * 40,
    }
    assert main(["--config", str(tmp_path / "none.toml"), "check-config", "--json"], environ=environ) == 2
    assert main(["check-config", "--json"], environ=environ) == 0
    out = capsys.readouterr().out
    assert "Pa55word" not in out
    assert "p" * 40 not in out
    shown = json.loads(out)["settings"]
    assert shown["database_url"]["value"] == "postgresql://mixauth:***@db.internal:5432/auth"
    assert shown["redis_url"]["value"] == "redis://:***@cache:6379/2"
    assert shown["jwt_secret_previous"]["value"] == "[redacted]"


@pytest.mark.parametrize(
    ("environ", "config_text", "fragment"),
    [
        ({"PORT": "http"}, None, "mixauth: configuration error: PORT: expected a whole number"),
        ({"JWT_SECRET": "short"}, None, "mixauth: configuration error: JWT_SECRET: must be at least 32 bytes"),
        ({}, "colour = 'blue'\n", "unknown setting 'colour'"),
        ({}, "port = [\n", "not valid TOML"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_check_config_exits_2_with_one_line_when_invalid(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    config_text: str | None,
    fragment: str,
    as_json: bool,
) -> None:
    config = tmp_path / "mixauth.toml"
    config.write_text(config_text or "")
    argv = ["check-config", "--config", str(config), *(["--json"] if as_json else [])]
    assert main(argv, environ=environ) == 2
    line = assert_one_error_line(capsys, fragment)
    assert line.startswith("mixauth: configuration error: ")


def test_check_config_reports_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "absent.toml")], environ={}) == 2
    assert_one_error_line(capsys, "no such configuration file")


@pytest.mark.parametrize("command", [["check-config"], ["list-users"], []])
def test_a_config_toml_that_is_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_bytes(b'port = 2200\ndefault_plan = "caf\xe9"\n')
    assert main(command, environ={}) == 2
    assert assert_one_error_line(capsys, "") == (
        "mixauth: configuration error: config.toml: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    )


# A reader that goes away (| head -1): every command that prints stops quietly.


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["check-config"], 141),
        (["check-config", "--json"], 141),
        (["list-users"], 141),
        (["list-users", "--json"], 141),
        # argparse ignores a failed write of its help and version (and exits 0); quiet all the same.
        (["--help"], 0),
        (["list-users", "--help"], 0),
        (["--version"], 0),
    ],
)
def test_a_closed_pipe_on_stdout_ends_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int
) -> None:
    for name in ("alice", "bob", "carol"):
        create(tmp_path, capsys, name)
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line, here before the first write: every time
    try:
        done = subprocess.run(
            [sys.executable, "-m", "server", *argv],
            cwd=tmp_path,
            env=base_env(DATA_DIR=str(tmp_path)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert done.returncode == code  # 141: what a shell reports for a program SIGPIPE ended


def test_the_pipe_recipe_from_a_shell(tmp_path: Path) -> None:
    """The reproduction itself: ``python3 -m server check-config | head -1``."""
    script = f"set -o pipefail; {shlex.quote(sys.executable)} -m server check-config --json | head -1"
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=base_env(), capture_output=True, timeout=60, check=False
    )
    assert done.stdout.decode() == "{\n"
    assert done.stderr.decode() == ""
    assert done.returncode in {0, 141}  # 0 when head took the whole output before it left


# Against a running server.


async def test_commands_work_on_the_data_of_a_running_server(
    client: TestClient[Any, Any], settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The app holds the database open; each command's change is what the server answers within a second.

    The server remembers users it has loaded, and notices writes from other processes by checking the
    database's data version at most once a second (of the app's clock, advanced here by hand).
    """
    data_dir = settings.data_dir

    async def cli(*argv: str, stdin: str = "") -> str:
        capsys.readouterr()  # the server's own log lines so far
        code = await asyncio.to_thread(run, list(argv), data_dir, stdin)
        out, err = capsys.readouterr()
        assert code == 0, err
        clock.advance(1.0)
        return out

    carol = await sign_up(client, "carol", "carol@example.com")
    assert (await client.get("/user", headers=bearer(carol))).status == 200  # carol is now remembered
    listed = json.loads(await cli("list-users", "--json"))
    assert [user["username"] for user in listed] == ["carol"]

    # The CLI writes while the server takes signups (each a write of its own): nobody fails on a lock.
    signups = [sign_up(client, f"racer{n}", f"racer{n}@example.com") for n in range(8)]
    _, *tokens = await asyncio.gather(cli("set-scope", "carol", "--scope", "admin,user"), *signups)
    assert len(tokens) == 8
    response = await client.get("/user", headers=bearer(carol))
    assert response.status == 200
    assert (await response.json())["scope"] == ["admin", "user"]
    assert len(json.loads(await cli("list-users", "--json"))) == 9

    await cli("set-password", "carol@example.com", "--password-stdin", stdin="brand-new-pass\n")
    old = await client.post("/user/auth", json={"username": "carol", "password": PASSWORD})
    assert old.status == 403
    new = await client.post("/user/auth", json={"username": "carol", "password": "brand-new-pass"})
    assert new.status == 200

    await create_admin(client)  # carol is not the last admin, whom no command deletes
    await cli("delete-user", "carol")
    response = await client.get("/user", headers=bearer(carol))
    assert response.status == 401
    assert (await client.post("/user/auth", json={"username": "carol", "password": "brand-new-pass"})).status == 403


def read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no {marker!r} in {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


def run_on_a_terminal(tmp_path: Path, command: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """Run ``python -m server COMMAND`` with a real terminal, answer its two password prompts; exit code and output."""
    argv = [sys.executable, "-m", "server", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"), "BCRYPT_ROUNDS": "4"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a real terminal is its stdin, stdout and controlling tty
        os.chdir(tmp_path)
        os.execve(sys.executable, argv, env)  # noqa: S606 (a fixed argv, no shell)
    try:
        transcript = read_until(fd, b"Password: ")
        os.write(fd, answers[0] + b"\n")
        transcript += read_until(fd, b"Repeat password: ")
        os.write(fd, answers[1] + b"\n")
        transcript += read_until(fd, b"\n" * 100, timeout=20)  # read to the end
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), transcript


# The child execs at once, so threads left in the test process (Python 3.12 warns of them) do not matter.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize(("second", "ok"), [("typed-secret-1", True), ("typed-secret-2", False)])
def test_on_a_terminal_the_password_is_prompted_for_twice_without_echo(tmp_path: Path, second: str, ok: bool) -> None:
    command = ["create-user", "--username", "u", "--email", "u@example.com"]
    code, transcript = run_on_a_terminal(tmp_path, command, [b"typed-secret-1", second.encode()])
    assert b"typed-secret" not in transcript  # nothing typed was echoed
    if ok:
        assert code == 0
        assert re.search(rb"\b[0-9a-f]{24}\b", transcript)
        assert stored(tmp_path / "data", "u") is not None
    else:
        assert code == 1
        assert b"mixauth: the passwords do not match" in transcript


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize(("second", "ok"), [("typed-secret-1", True), ("typed-secret-2", False)])
def test_set_password_prompts_on_a_terminal_like_create_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str, ok: bool
) -> None:
    create(tmp_path / "data", capsys, "u")
    before = stored(tmp_path / "data", "u").password_hash
    code, transcript = run_on_a_terminal(tmp_path, ["set-password", "u"], [b"typed-secret-1", second.encode()])
    assert b"typed-secret" not in transcript
    after = stored(tmp_path / "data", "u").password_hash
    if ok:
        assert code == 0
        assert b"password changed for" in transcript
        assert check_password(password_bytes("typed-secret-1"), after)
    else:
        assert code == 1
        assert b"mixauth: the passwords do not match" in transcript
        assert after == before


def test_the_readme_quick_start_installs_into_a_virtual_environment() -> None:
    """Debian-like systems refuse ``pip install`` into the system Python (PEP 668): the quick start must not
    ask for it."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start") : readme.index("### The three calls")]
    block = quick_start[quick_start.index("```sh") : quick_start.index("```\n", quick_start.index("```sh") + 5)]
    commands = " && ".join(line for line in block.splitlines()[1:] if line and not line.startswith("#"))
    steps = [step.strip() for step in commands.split("&&")]
    first_install = next(index for index, step in enumerate(steps) if "pip install" in step)
    assert steps[:first_install] == ["python3 -m venv .venv", ". .venv/bin/activate"]
    assert "python -m server" in steps
    assert "python -m pytest" in steps
