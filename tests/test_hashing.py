"""PasswordHasher: bcrypt always runs on the pool's worker threads, never on the event loop's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from server import security
from server.hashing import PasswordHasher


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher(rounds=4, workers=2)
    yield hasher
    hasher.close()


@pytest.fixture
def bcrypt_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the thread each bcrypt call runs on."""
    seen: list[str] = []
    original_hash, original_check = security.hash_password, security.check_password

    def hash_password(password: bytes, rounds: int) -> str:
        seen.append(threading.current_thread().name)
        return original_hash(password, rounds)

    def check_password(password: bytes, password_hash: str) -> bool:
        seen.append(threading.current_thread().name)
        return original_check(password, password_hash)

    monkeypatch.setattr(security, "hash_password", hash_password)
    monkeypatch.setattr(security, "check_password", check_password)
    return seen


async def test_hash_verify_and_waste_run_off_the_loop(hasher: PasswordHasher, bcrypt_threads: list[str]) -> None:
    password_hash = await hasher.hash(b"abc321")
    assert await hasher.verify(b"abc321", password_hash)
    assert not await hasher.verify(b"wrong!", password_hash)
    await hasher.waste(b"abc321")
    loop_thread = threading.current_thread().name
    assert len(bcrypt_threads) == 4
    assert all(name.startswith("bcrypt") and name != loop_thread for name in bcrypt_threads)


async def test_hashes_use_the_configured_cost(hasher: PasswordHasher) -> None:
    assert (await hasher.hash(b"abc321")).startswith("$2b$04$")


async def test_wasting_runs_a_real_check_at_the_current_cost(bcrypt_threads: list[str]) -> None:
    hasher = PasswordHasher(rounds=5, workers=1)
    try:
        assert hasher._dummy_hash.startswith("$2b$05$")
        await hasher.waste(b"anything")
        assert len(bcrypt_threads) == 1
    finally:
        hasher.close()
