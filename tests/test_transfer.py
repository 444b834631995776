"""Moving users in and out: export-users and import-users, run in-process through ``server.cli.main``
against real SQLite data directories, and the server's answers afterwards.

tests/data/appmixer-users.jsonl is a hand-made Appmixer export (``mongoexport`` of the users collection,
with the fields the contract lists and some it ignores), its hashes made with the bcrypt package: ``$2a$``
hashes as bcrypt makes them, ``$2y$`` ones a ``$2b$`` hash with the prefix changed. The passwords are in
APPMIXER_PASSWORDS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from server import transfer
from server.cli import main
from server.config import Settings
from server.domain import EmailTaken, InvalidRequest, NewUser, UserQuery
from server.progress import Progress
from server.security import build_new_user, check_password, password_bytes
from server.storage.sqlite import open_store
from server.web.keys import STORE
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, FakeClock, bearer, sign_up
from tests.fakes import FakeUserStore

pytestmark = pytest.mark.usefixtures("restore_logging")  # the commands configure logging for the process

DATA = Path(__file__).resolve().parent / "data"
APPMIXER_EXPORT = DATA / "appmixer-users.jsonl"
APPMIXER_PASSWORDS = {
    "admin@acme.example": "Adm1n-secret",
    "jane": "tr0ub4dor&3",
    "Zoë": "correct horse battery",
    "bob": "hunter22",
}
HASH = "$2b$04$abcdefghijklmnopqrstuu5Ov7hTbyFZ0b1aLyNnyWZTLzCXlCmYy"


def run(argv: list[str], data_dir: Path) -> int:
    environ = {"BCRYPT_ROUNDS": "4", "DATA_DIR": str(data_dir), "JWT_SECRET": JWT_SECRET}
    return main(argv, environ=environ, stdin=io.StringIO(""))


def export(data_dir: Path, output: Path) -> bytes:
    assert run(["export-users", "--output", str(output)], data_dir) == 0
    return output.read_bytes()


def records(data_dir: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """The users of ``data_dir`` as export-users writes them."""
    text = export(data_dir, tmp_path / "records.jsonl").decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def count(data_dir: Path) -> int:
    async def read() -> int:
        async with open_store(data_dir) as store:
            return await store.count(UserQuery())

    return asyncio.run(read())


def add_users(data_dir: Path, users: list[NewUser]) -> None:
    async def write() -> None:
        async with open_store(data_dir) as store:
            await store.add_many(users)

    asyncio.run(write())


def user(username: str, email: str | None = None, **changes: Any) -> NewUser:
    new = build_new_user(username, email or f"{username}@example.com", HASH, ("user",), "free")
    return dataclasses.replace(new, **changes)


def line(**fields: Any) -> str:
    """One import line of a user with every required field, changed by ``fields`` (None removes one)."""
    document: dict[str, Any] = {
        "_id": "5f3e1c2a9b1d4e00aaaaaaaa",
        "username": "carol",
        "email": "carol@example.com",
        "password": HASH,
    }
    document.update(fields)
    return json.dumps({key: value for key, value in document.items() if value is not None}, ensure_ascii=False)


# The Appmixer sample: every user signs in with the old password.


async def test_an_appmixer_export_imports_and_every_user_signs_in_with_the_old_password(
    make_client: ClientFactory, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(run, ["import-users", str(APPMIXER_EXPORT)], settings.data_dir) == 0
    out, err = capsys.readouterr()
    assert out == "imported 4, skipped 0\n"
    assert "\r" not in err  # no progress bar: stderr is not a terminal

    documents = [json.loads(text) for text in APPMIXER_EXPORT.read_text(encoding="utf-8").splitlines()]
    assert {document["password"][:4] for document in documents} == {"$2a$", "$2y$"}
    # Imported as they were: each user keeps the hash Appmixer had.
    imported = await asyncio.to_thread(records, settings.data_dir, tmp_path)
    assert {record["password"] for record in imported} == {document["password"] for document in documents}

    client = await make_client()
    for document in documents:
        username = document["username"]
        response = await client.post(
            "/user/auth", json={"username": username, "password": APPMIXER_PASSWORDS[username]}
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        raw_id = document["_id"]["$oid"] if isinstance(document["_id"], dict) else document["_id"]
        assert body["user"]["id"] == raw_id.lower()
        me = await client.get("/user", headers=bearer(body["token"]))
        assert me.status == 200
        wrong = await client.post("/user/auth", json={"username": username, "password": "not-the-password"})
        assert wrong.status == 403

    # What the import made of Appmixer's forms: ids lower-cased, dates in milliseconds, a vendor string as a
    # list, the configured plan and scope user where they were missing, empty metadata as none.
    exported = {record["username"]: record for record in await asyncio.to_thread(records, settings.data_dir, tmp_path)}
    admin = exported["admin@acme.example"]
    assert admin["scope"] == ["user", "admin"]
    assert admin["plan"] == "enterprise"
    assert admin["vendor"] == ["acme"]
    assert admin["isActive"] is True
    assert admin["created"] == "2020-08-20T06:31:06.123Z"
    assert admin["metadata"] == {"firstName": "Ada", "company": "Acme"}
    assert exported["jane"]["vendor"] == ["acme", "beta"]
    assert exported["jane"]["plan"] == settings.default_plan
    assert exported["jane"]["created"] == "2020-08-21T10:00:00.500Z"
    assert exported["Zoë"]["id"] == "5f3e1c2a9b1d4e001234567a"
    assert exported["Zoë"]["created"] == "2020-08-21T08:53:20.000Z"
    assert exported["bob"]["scope"] == ["user"]
    assert exported["bob"]["isActive"] is False
    assert exported["bob"]["created"] == "2020-09-13T12:26:40.000Z"
    # Each sign-in upgraded its $2a$ or $2y$ hash to $2b$ at the configured cost.
    assert {record["password"][:7] for record in exported.values()} == {f"$2b${settings.bcrypt_rounds:02d}$"}
    assert "lastLogin" not in exported["jane"]


def test_a_2y_hash_is_checked_like_the_2b_hash_it_was_made_from() -> None:
    made = bcrypt.hashpw(b"tr0ub4dor&3", bcrypt.gensalt(4)).decode("ascii")
    assert check_password(password_bytes("tr0ub4dor&3"), "$2y$" + made[4:])
    assert not check_password(password_bytes("tr0ub4dor&4"), "$2y$" + made[4:])


# Export, import into an empty store, export again: the same bytes.


def test_export_then_import_into_an_empty_store_then_export_gives_the_same_file(tmp_path: Path) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    add_users(
        source,
        [
            user("Alice", scope=("admin", "user"), metadata={"team": {"name": "ops", "size": 3}, "n": 1.5}),
            user("Zoë", "zoe@bücher.example", vendor=("acme", "beta"), is_active=True, created=1_700_000_000_123),
            user("bob", plan="pro", token_version=7, metadata={"big": 2**70}),
        ],
    )
    first = export(source, tmp_path / "first.jsonl")
    assert run(["import-users", str(tmp_path / "first.jsonl")], copy) == 0
    second = export(copy, tmp_path / "second.jsonl")
    assert second == first
    assert len(first.splitlines()) == 3
    ids = [json.loads(text)["id"] for text in first.splitlines()]
    assert ids == sorted(ids)
    assert stat.S_IMODE((tmp_path / "first.jsonl").stat().st_mode) == 0o600
    assert json.loads(first.splitlines()[0]).keys() == {
        "id",
        "username",
        "email",
        "isActive",
        "scope",
        "plan",
        "vendor",
        "metadata",
        "created",
        "password",
        "tokenVersion",
    }


def test_export_to_stdout_writes_the_same_lines(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    add_users(tmp_path / "data", [user("alice"), user("Zoë", "zoe@bücher.example")])
    assert run(["export-users"], tmp_path / "data") == 0
    out, _ = capsysbinary.readouterr()
    assert out == export(tmp_path / "data", tmp_path / "file.jsonl")
    assert "Zoë".encode() in out


def test_an_export_that_fails_half_way_leaves_the_old_file_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_users(tmp_path / "data", [user("alice"), user("bob")])
    output = tmp_path / "out" / "users.jsonl"
    output.parent.mkdir()
    output.write_text("the previous export\n")
    written: list[bytes] = []
    real = transfer.export_line

    def disk_full_after_one(stored: Any) -> bytes:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real(stored))
        return written[-1]

    monkeypatch.setattr(transfer, "export_line", disk_full_after_one)
    assert run(["export-users", "--output", str(output)], tmp_path / "data") == 1
    assert capsys.readouterr().err == f"mixauth: cannot write {output}: No space left on device\n"
    assert output.read_text() == "the previous export\n"
    assert os.listdir(output.parent) == ["users.jsonl"]


def test_export_of_a_missing_data_directory_is_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["export-users"], tmp_path / "typo") == 1
    assert capsys.readouterr().err.startswith("mixauth: ")
    assert not (tmp_path / "typo").exists()


# A bad line imports nothing and is named by its number.

BAD_LINES = {
    "bad JSON": ('{"_id": "5f3e1c2a9b1d4e00aaaaaaaa", "username": "carol",', "not valid JSON"),
    "missing field": (line(email=None), "The email field is required."),
    "bad hash": (line(password="$2x$04$" + "a" * 53), "not a bcrypt hash"),
    "plain password": (line(password="hunter22"), "not a bcrypt hash"),
    "bad email": (line(email="carol@@example.com"), "The email address is not valid."),
    "bad id": (line(_id="5f3e1c2a9b1d4e00aaaaaaa"), "24 hex characters"),
    "bad scope": (line(scope=["user", "no spaces"]), "not a valid scope name"),
    "bad created": (line(created="2020-08-20 06:31"), "created field"),
    "bad username": (line(username="car\u200bol"), "control or invisible"),
    "duplicate email": (line(email="ALICE@example.com"), "the email address is already on line 1"),
    "duplicate id": (
        line(_id={"$oid": "5F3E1C2A9B1D4E0011111111"}),
        "the id 5f3e1c2a9b1d4e0011111111 is already on line 1",
    ),
    "look-alike username": (line(username="\u0430lice"), "the username '\\u0430lice' looks like one already on line 1"),
}


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_one_bad_line_imports_nothing_and_is_named(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, message = BAD_LINES[kind]
    good_first = line(_id="5f3e1c2a9b1d4e0011111111", username="alice", email="alice@example.com")
    good_last = line(_id="5f3e1c2a9b1d4e0022222222", username="dave", email="dave@example.com")
    source = tmp_path / "users.jsonl"
    source.write_text("\n".join([good_first, bad, good_last]) + "\n", encoding="utf-8")

    assert run(["import-users", str(source)], tmp_path / "data") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0].startswith(f"mixauth: {source}:2: ")
    assert message in err.splitlines()[0]
    assert err.splitlines()[-1] == f"mixauth: 1 bad line in {source}: nothing imported"
    assert len(err.splitlines()) == 2
    assert HASH not in err
    assert "a" * 53 not in err  # never a hash, even a bad one, in the output
    assert count(tmp_path / "data") == 0


def test_every_bad_line_is_named_and_a_conflict_with_the_store_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_users(tmp_path / "data", [user("alice")])
    source = tmp_path / "users.jsonl"
    source.write_text(
        "\n".join([line(username="ALICE", email="other@example.com"), "[1, 2]", "", line(), "not json"]) + "\n"
    )
    assert run(["import-users", str(source)], tmp_path / "data") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"mixauth: {source}:1: Conflict: the username 'ALICE' is already in the store.",
        f"mixauth: {source}:2: The line is not a JSON object.",
        f"mixauth: {source}:5: The line is not valid JSON.",
        f"mixauth: 3 bad lines in {source}: nothing imported",
    ]
    assert count(tmp_path / "data") == 1


def test_skip_mode_skips_and_counts_the_conflicting_users_and_imports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_users(tmp_path / "data", [user("alice")])
    source = tmp_path / "users.jsonl"
    lines = [
        line(_id="5f3e1c2a9b1d4e0011111111", username="Alice", email="new@example.com"),  # the store's username
        line(_id="5f3e1c2a9b1d4e0022222222", username="bob", email="bob@example.com"),
        line(_id="5f3e1c2a9b1d4e0033333333", username="b0b", email="bob@EXAMPLE.com"),  # line 2's email
        line(_id="5f3e1c2a9b1d4e0022222222", username="carol", email="carol@example.com"),  # line 2's id
        line(_id="5f3e1c2a9b1d4e0044444444", username="dave", email="dave@example.com"),
    ]
    source.write_text("\n".join(lines) + "\n")
    assert run(["import-users", str(source), "--on-conflict", "skip"], tmp_path / "data") == 0
    out, err = capsys.readouterr()
    assert out == "imported 2, skipped 3\n"
    skipped = [text for text in err.splitlines() if text.startswith("skipped ")]
    assert [text.split(": ")[0] for text in skipped] == [f"skipped {source}:{number}" for number in (1, 3, 4)]
    assert count(tmp_path / "data") == 3

    # A bad line still fails a skipping import: only conflicts are skipped.
    source.write_text(line(_id="5f3e1c2a9b1d4e0055555555", email="nope") + "\n")
    assert run(["import-users", str(source), "--on-conflict", "skip"], tmp_path / "data") == 1
    assert count(tmp_path / "data") == 3


def test_a_dry_run_checks_everything_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["import-users", str(APPMIXER_EXPORT), "--dry-run"], tmp_path / "data") == 0
    assert capsys.readouterr().out == "dry run: would import 4, skip 0; nothing written\n"
    assert not (tmp_path / "data").exists()  # not even an empty database
    add_users(tmp_path / "data", [user("bob")])
    assert run(["import-users", str(APPMIXER_EXPORT), "--dry-run"], tmp_path / "data") == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"mixauth: {APPMIXER_EXPORT}:4: Conflict: the username 'bob' is already in the store."
    )
    assert run(["import-users", str(APPMIXER_EXPORT), "--dry-run", "--on-conflict", "skip"], tmp_path / "data") == 0
    assert capsys.readouterr().out == "dry run: would import 3, skip 1; nothing written\n"
    assert count(tmp_path / "data") == 1

    broken = tmp_path / "broken.jsonl"
    broken.write_text(APPMIXER_EXPORT.read_text(encoding="utf-8") + line(email="x") + "\n", encoding="utf-8")
    assert run(["import-users", str(broken), "--dry-run"], tmp_path / "other") == 1
    assert capsys.readouterr().err.splitlines()[0].startswith(f"mixauth: {broken}:5: ")


def test_import_reads_standard_input_and_refuses_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"BCRYPT_ROUNDS": "4", "DATA_DIR": str(tmp_path / "data")}
    assert main(["import-users", "-"], environ=environ, stdin=io.StringIO(line() + "\n")) == 0
    assert capsys.readouterr().out == "imported 1, skipped 0\n"
    assert run(["import-users", str(tmp_path / "nope.jsonl")], tmp_path / "data") == 1
    assert capsys.readouterr().err == f"mixauth: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory\n"


def test_a_line_too_long_to_be_a_user_is_refused_unparsed_and_the_next_lines_keep_their_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "users.jsonl"
    huge = '{"padding": "' + "x" * (transfer.MAX_LINE_BYTES * 2) + '"}'
    source.write_text("\n".join([line(), huge, "{}"]) + "\n")
    assert run(["import-users", str(source)], tmp_path / "data") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"mixauth: {source}:2: The line is longer than {transfer.MAX_LINE_BYTES} bytes."
    assert err[1].startswith(f"mixauth: {source}:3: The id field")


# Tokens: the ids and the revocation state move with the users.


async def test_tokens_issued_before_the_export_are_judged_the_same_after_the_import(
    make_client: ClientFactory, settings: Settings, tmp_path: Path
) -> None:
    source = await make_client()
    kept = await sign_up(source, "kept", "kept@example.com")
    revoked = await sign_up(source, "revoked", "revoked@example.com")
    revoked_user = await source.app[STORE].get_by_username("revoked")
    assert revoked_user is not None
    assert await source.app[STORE].revoke_tokens(revoked_user.id) == 1
    output = tmp_path / "users.jsonl"
    assert await asyncio.to_thread(run, ["export-users", "--output", str(output)], settings.data_dir) == 0
    versions = {
        json.loads(text)["username"]: json.loads(text)["tokenVersion"] for text in output.read_text().splitlines()
    }
    assert versions == {"kept": 0, "revoked": 1}

    target_dir = tmp_path / "new-data"
    assert await asyncio.to_thread(run, ["import-users", str(output)], target_dir) == 0
    target = await make_client(data_dir=target_dir)  # the same JWT secret, a new data directory
    assert (await target.get("/user", headers=bearer(kept))).status == 200
    imported = await target.app[STORE].get_by_username("revoked")
    assert imported is not None
    assert imported.token_version == 1
    signed_in = await target.post("/user/auth", json={"username": "revoked", "password": PASSWORD})
    assert signed_in.status == 200

    # Revoked before the export, on the source and on the target alike.
    assert (await source.get("/user", headers=bearer(revoked))).status == 401
    assert (await target.get("/user", headers=bearer(revoked))).status == 401


# The parts, without a store on disk.


@pytest.mark.parametrize(
    ("created", "milliseconds"),
    [
        ("2020-08-20T06:31:06.123Z", 1597905066123),
        ("2020-08-20T08:31:06.123+02:00", 1597905066123),
        ({"$date": "2020-08-20T06:31:06.123Z"}, 1597905066123),
        ({"$date": 1597905066123}, 1597905066123),
        ({"$date": {"$numberLong": "1597905066123"}}, 1597905066123),
        (None, 0x5F3E1C2A * 1000),
    ],
)
def test_created_in_every_form_appmixer_writes(created: object, milliseconds: int) -> None:
    parsed = transfer.parse_line(line(_id="5f3e1c2a9b1d4e00aaaaaaaa", created=created).encode(), default_plan="free")
    assert parsed.as_user().created == milliseconds


@pytest.mark.parametrize(
    "fields",
    [
        {"created": "2020-08-20T06:31:06"},  # no time zone
        {"created": {"$date": -1}},
        {"created": {"$date": True}},
        {"created": {"$date": {"$numberLong": "12x"}}},
        {"tokenVersion": -1},
        {"tokenVersion": True},
        {"tokenVersion": "1"},
        {"isActive": "yes"},
        {"plan": ""},
        {"vendor": [1]},
        {"scope": "user"},
        {"metadata": [1]},
        {"id": "5f3e1c2a9b1d4e00bbbbbbbb"},  # differs from _id
        {"_id": {"$oid": 5}},
        {"username": ""},
        {"password": "$2b$03$" + "a" * 53},  # cost below 4
    ],
)
def test_a_field_in_a_wrong_form_is_a_bad_line(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        transfer.parse_line(line(**fields).encode(), default_plan="free")


@pytest.mark.parametrize(
    "raw",
    [b'{"a": NaN}', b'{"a": 1e999}', b'"\\ud800"', b'{"u": "\\ud800"}', b"\xff\xfe", b"[" * 100 + b"]" * 100],
)
def test_json_that_is_not_strict_utf8_json_is_a_bad_line(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        transfer.parse_line(raw, default_plan="free")


async def test_a_user_added_between_the_check_and_the_write_makes_the_write_add_nothing() -> None:
    store = FakeUserStore()
    plan = await transfer.plan_import(store, [line().encode()], default_plan="free")
    assert plan.ok
    await store.add(user("someone", "carol@example.com"))
    with pytest.raises(EmailTaken):
        await transfer.apply_import(store, plan)
    assert len(store.by_id) == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_on_a_terminal_only() -> None:
    clock = FakeClock()
    terminal = Terminal()
    bar = Progress(terminal, "checking users.jsonl", 200, clock=clock)
    bar.advance(50)
    bar.advance(50)  # within the redraw interval: not drawn
    clock.advance(1)
    bar.advance(50)
    bar.close()
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 3
    assert " 25%" in drawn
    assert " 75%" in drawn
    assert drawn.endswith(" 75%\n")

    piped = io.StringIO()
    silent = Progress(piped, "checking", 10, clock=clock)
    silent.advance(10)
    silent.close()
    assert piped.getvalue() == ""


def test_import_draws_its_progress_bar_when_stderr_is_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert run(["import-users", str(APPMIXER_EXPORT)], tmp_path / "data") == 0
    assert f"\rchecking {APPMIXER_EXPORT}: [" in terminal.getvalue()
    assert terminal.getvalue().split("\n")[0].endswith("100%")
    assert capsys.readouterr().out == "imported 4, skipped 0\n"
