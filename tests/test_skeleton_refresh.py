"""The start-up check of the confusables data: ICU is loaded only when the skeletons may need recomputing.

The stored data version carries the ICU module's fingerprint: while it is unchanged, a start loads no ICU; a
changed module with the same data only notes the new fingerprint; changed data recomputes the skeletons.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from server.security import skeleton_data_fingerprint, skeleton_data_version, username_skeleton
from server.storage import skeletons as skeleton_note
from server.storage import sqlite
from server.storage.sqlite import DATABASE_FILE
from tests.test_store_contract import new_user


def must_not_load_icu() -> str:
    raise AssertionError("ICU was loaded")


async def stored_version(tmp_path: Path) -> str:
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("SELECT version FROM username_skeleton_data") as cursor,
    ):
        row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def skeletons(tmp_path: Path) -> list[str | None]:
    async with (
        aiosqlite.connect(tmp_path / DATABASE_FILE) as connection,
        connection.execute("SELECT username_skeleton FROM users ORDER BY username_key") as cursor,
    ):
        return [row[0] for row in await cursor.fetchall()]


def test_the_fingerprint_names_the_installed_icu_module_without_loading_it() -> None:
    fingerprint = skeleton_data_fingerprint()
    assert "_icu_" in fingerprint
    assert skeleton_data_fingerprint() == fingerprint


async def test_a_new_store_and_its_restarts_load_no_icu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skeleton_note, "skeleton_data_version", must_not_load_icu)
    async with sqlite.open_store(tmp_path):
        pass
    assert await stored_version(tmp_path) == f" @ {skeleton_data_fingerprint()}"  # no users: the module alone
    async with sqlite.open_store(tmp_path) as store:
        await store.add(new_user("alice", "alice@example.com"))
    async with sqlite.open_store(tmp_path):
        pass
    assert await skeletons(tmp_path) == [username_skeleton("alice")]


async def test_another_module_with_the_same_data_notes_its_fingerprint_and_keeps_the_skeletons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sqlite.open_store(tmp_path) as store:
        await store.add(new_user("alice", "alice@example.com"))
    with monkeypatch.context() as first_module:  # a start with users notes the data version too
        first_module.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "the first ICU module")
        async with sqlite.open_store(tmp_path):
            pass
    assert await stored_version(tmp_path) == f"{skeleton_data_version()} @ the first ICU module"
    monkeypatch.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "a rebuilt ICU module")
    monkeypatch.setattr(sqlite, "username_skeleton", lambda username: "recomputed")
    async with sqlite.open_store(tmp_path):
        pass
    assert await skeletons(tmp_path) == [username_skeleton("alice")]
    assert await stored_version(tmp_path) == f"{skeleton_data_version()} @ a rebuilt ICU module"
    monkeypatch.setattr(skeleton_note, "skeleton_data_version", must_not_load_icu)
    async with sqlite.open_store(tmp_path):  # noted: the next start loads no ICU
        pass


async def test_a_store_noted_without_users_recomputes_under_another_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sqlite.open_store(tmp_path):
        pass
    monkeypatch.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "must not match")
    async with sqlite.open_store(tmp_path) as store:
        await store.add(new_user("alice", "alice@example.com"))
    monkeypatch.setattr(skeleton_note, "skeleton_data_fingerprint", lambda: "another ICU module")
    monkeypatch.setattr(sqlite, "username_skeleton", lambda username: "recomputed")
    async with sqlite.open_store(tmp_path):
        pass
    assert await skeletons(tmp_path) == ["recomputed"]


async def test_a_version_stored_before_fingerprints_is_kept_and_noted(tmp_path: Path) -> None:
    async with sqlite.open_store(tmp_path) as store:
        await store.add(new_user("alice", "alice@example.com"))
    async with aiosqlite.connect(tmp_path / DATABASE_FILE) as connection:
        await connection.execute("UPDATE username_skeleton_data SET version = ?", (skeleton_data_version(),))
        await connection.execute("UPDATE users SET username_skeleton = 'kept'")
        await connection.commit()
    async with sqlite.open_store(tmp_path):
        pass
    assert await skeletons(tmp_path) == ["kept"]
    assert await stored_version(tmp_path) == f"{skeleton_data_version()} @ {skeleton_data_fingerprint()}"
