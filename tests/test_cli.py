"""The admin command line: create-user, and the one-line failures of every misuse."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import select
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.security import USER_ID_PATTERN
from server.storage.sqlite import open_store
from tests.conftest import PASSWORD

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
        (["--username", "new", "--email", "new@example.com", "--scope", "bad scope"], PASSWORD, "--scope"),
        (["--username", "new", "--email", "new@example.com", "--scope", ","], PASSWORD, "--scope"),
    ],
)
def test_failures_end_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], stdin: str, message: str
) -> None:
    base = ["create-user", "--password-stdin"]
    assert run([*base, "--username", "taken", "--email", "taken@example.com"], tmp_path) == 0
    capsys.readouterr()
    assert run([*base, *argv_tail], tmp_path, stdin=stdin) == 1
    out, err = capsys.readouterr()
    assert out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("mixauth:")]
    assert len(error_lines) == 1
    assert message in error_lines[0]


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
    with pytest.raises(SystemExit) as exit_info:
        main(["create-user", "--email", "u@example.com"], environ={})
    assert exit_info.value.code == 2
    assert "--username" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"], environ={})
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("mixauth ")


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


# The child execs at once, so threads left in the test process (Python 3.12 warns of them) do not matter.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize(("second", "ok"), [("typed-secret-1", True), ("typed-secret-2", False)])
def test_on_a_terminal_the_password_is_prompted_for_twice_without_echo(tmp_path: Path, second: str, ok: bool) -> None:
    argv = [sys.executable, "-m", "server", "create-user", "--username", "u", "--email", "u@example.com"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"), "BCRYPT_ROUNDS": "4"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a real terminal is its stdin, stdout and controlling tty
        os.chdir(tmp_path)
        os.execve(sys.executable, argv, env)  # noqa: S606 (a fixed argv, no shell)
    try:
        transcript = read_until(fd, b"Password: ")
        os.write(fd, b"typed-secret-1\n")
        transcript += read_until(fd, b"Repeat password: ")
        os.write(fd, second.encode() + b"\n")
        transcript += read_until(fd, b"\n" * 100, timeout=20)  # read to the end
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"typed-secret" not in transcript  # nothing typed was echoed
    if ok:
        assert os.waitstatus_to_exitcode(status) == 0
        assert re.search(rb"\b[0-9a-f]{24}\b", transcript)
        assert stored(tmp_path / "data", "u") is not None
    else:
        assert os.waitstatus_to_exitcode(status) == 1
        assert b"mixauth: the passwords do not match" in transcript
