"""load_or_create_secret: a 64-byte secret generated once, kept with mode 0600, refused when corrupt."""

from __future__ import annotations

import base64
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.storage import StorageError
from server.storage.secret import SECRET_BYTES, SECRET_FILE, load_or_create_secret


def test_creates_a_64_byte_secret_in_a_0600_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"
    secret = load_or_create_secret(data_dir)
    assert SECRET_BYTES == 64
    assert len(secret) == 64
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.urlsafe_b64decode(path.read_bytes().strip()) == secret


def test_the_second_call_returns_the_same_secret(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    second = load_or_create_secret(tmp_path)
    assert second == first


def test_different_data_directories_get_different_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not base64 at all!",
        base64.urlsafe_b64encode(b"x" * 16) + b"\n",  # valid base64, too short for HS256
        base64.urlsafe_b64encode(b"x" * 31),
    ],
    ids=["empty", "garbage", "16-bytes", "31-bytes"],
)
def test_a_corrupt_or_short_file_raises_a_clear_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / SECRET_FILE
    path.write_bytes(content)
    with pytest.raises(StorageError, match=r"does not hold a valid secret; remove it to generate a new one") as info:
        load_or_create_secret(tmp_path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # left as it was, for a person to look at


def test_racing_starts_agree_on_one_secret_and_leave_no_temporary_files(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = list(pool.map(lambda _: load_or_create_secret(tmp_path), range(32)))
    assert len(set(secrets)) == 1
    assert [path.name for path in tmp_path.iterdir()] == [SECRET_FILE]
