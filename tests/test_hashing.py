"""PasswordHasher: bcrypt always runs on the pool's worker threads, never on the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from server import security
from server.domain import Overloaded
from server.hashing import PasswordHasher
from tests.conftest import PASSWORD, ClientFactory, bearer, sign_up


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


class Gate:
    """Holds every bcrypt check on its worker thread until the test opens it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Semaphore(0)
        self.opened = threading.Event()
        original = security.check_password

        def held_check(password: bytes, password_hash: str) -> bool:
            self.started.release()
            self.opened.wait(timeout=30)
            return original(password, password_hash)

        monkeypatch.setattr(security, "check_password", held_check)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 30)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate(monkeypatch)
    yield held
    held.opened.set()


async def test_the_wait_for_a_worker_is_bounded(gate: Gate) -> None:
    hasher = PasswordHasher(rounds=4, workers=1, queue_limit=2)
    try:
        password_hash = await asyncio.to_thread(security.hash_password, b"abc321", 4)
        admitted = [asyncio.create_task(hasher.verify(b"abc321", password_hash)) for _ in range(3)]
        await gate.wait_started()
        await asyncio.sleep(0)
        assert (hasher.busy, hasher.queued) == (1, 2)
        with pytest.raises(Overloaded):
            await hasher.verify(b"abc321", password_hash)
        with pytest.raises(Overloaded):
            await hasher.hash(b"abc321")
        gate.opened.set()
        assert await asyncio.gather(*admitted) == [True, True, True]
        assert (hasher.busy, hasher.queued) == (0, 0)
        assert await hasher.verify(b"abc321", password_hash)  # room again
    finally:
        hasher.close()


async def test_a_saturated_pool_answers_503_and_leaves_token_checks_alone(
    make_client: ClientFactory, gate: Gate
) -> None:
    client = await make_client(hash_workers=1, hash_queue_limit=0, user_signin_rate_limit_account=1)
    token = await sign_up(client, username="alice", email="alice@example.com")
    held = asyncio.create_task(client.post("/user/auth", json={"username": "bob", "password": PASSWORD}))
    await gate.wait_started()
    refused = await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["code"] == "overloaded"
    signup = await client.post("/user", json={"username": "bob", "email": "bob@example.com", "password": PASSWORD})
    assert signup.status == 503
    assert (await client.get("/user", headers=bearer(token))).status == 200  # the event loop is free
    gate.opened.set()
    assert (await held).status == 403  # bob is unknown: a dummy check ran, held like any other
    # The refused attempt took no throttle token: the account's single failure is still there to spend.
    assert (await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})).status == 403
    assert (await client.post("/user/auth", json={"username": "alice", "password": "wrong-password"})).status == 429
