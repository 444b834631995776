"""CachedUserStore: users by id are remembered, and never past a change, wherever the change was made."""

from __future__ import annotations

import asyncio

from server.domain import NewUser, User
from server.security import build_new_user
from server.storage.cached import CachedUserStore
from tests.conftest import FakeClock
from tests.fakes import FakeUserStore


class CountingStore(FakeUserStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.hold: asyncio.Event | None = None

    async def get_by_id(self, user_id: str) -> User | None:
        self.reads += 1
        user = await super().get_by_id(user_id)
        if self.hold is not None:
            await self.hold.wait()
        return user


class Marker:
    """A stand-in for PRAGMA data_version: bumped when 'another process' writes."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0

    async def __call__(self) -> int:
        self.reads += 1
        return self.value


def new_user(name: str) -> NewUser:
    return build_new_user(name, f"{name}@example.com", "$2b$04$" + "x" * 53, ("user",), "free")


async def setup(max_users: int = 10) -> tuple[CachedUserStore, CountingStore, Marker, FakeClock, str]:
    store, marker, clock = CountingStore(), Marker(), FakeClock()
    cached = CachedUserStore(store, marker, max_users=max_users, recheck=1.0, clock=clock)
    user = await cached.add(new_user("alice"))
    return cached, store, marker, clock, user.id


async def test_a_user_is_read_once_then_remembered() -> None:
    cached, store, _, _, user_id = await setup()
    for _ in range(5):
        user = await cached.get_by_id(user_id)
        assert user is not None
        assert user.username == "alice"
    assert store.reads == 1


async def test_unknown_ids_are_not_remembered() -> None:
    cached, store, _, _, _ = await setup()
    assert await cached.get_by_id("0" * 24) is None
    assert await cached.get_by_id("0" * 24) is None
    assert store.reads == 2


async def test_writes_through_the_store_are_seen_on_the_next_read() -> None:
    cached, _, _, _, user_id = await setup()
    await cached.get_by_id(user_id)
    assert await cached.set_scope(user_id, ("admin",))
    assert (await cached.get_by_id(user_id)).scope == ("admin",)  # type: ignore[union-attr]
    assert await cached.set_password_hash(user_id, "$2b$04$" + "y" * 53)
    assert (await cached.get_by_id(user_id)).password_hash.endswith("y" * 53)  # type: ignore[union-attr]
    assert await cached.delete(user_id)
    assert await cached.get_by_id(user_id) is None


async def test_a_read_racing_a_write_is_not_remembered() -> None:
    cached, store, _, _, user_id = await setup()
    gate = asyncio.Event()
    store.hold = gate
    stale_read = asyncio.create_task(cached.get_by_id(user_id))
    await asyncio.sleep(0)  # the read has fetched the old row and waits at the gate
    store.hold = None
    assert await cached.set_scope(user_id, ("admin",))
    gate.set()
    assert (await stale_read).scope == ("user",)  # type: ignore[union-attr]
    assert len(cached) == 0  # what it read predates the write, so it was not remembered
    assert (await cached.get_by_id(user_id)).scope == ("admin",)  # type: ignore[union-attr]


async def test_outside_changes_are_noticed_within_the_recheck_interval() -> None:
    cached, store, marker, clock, user_id = await setup()
    await cached.get_by_id(user_id)
    await store.set_scope(user_id, ("admin",))  # behind the cache's back, as another process would
    marker.value += 1
    clock.advance(0.5)
    assert (await cached.get_by_id(user_id)).scope == ("user",)  # type: ignore[union-attr]
    clock.advance(0.5)
    assert (await cached.get_by_id(user_id)).scope == ("admin",)  # type: ignore[union-attr]


async def test_remembered_answers_only_what_get_by_id_would_without_a_wait() -> None:
    cached, store, marker, clock, user_id = await setup()
    assert cached.remembered(user_id) is None  # not read yet
    await cached.get_by_id(user_id)
    assert cached.remembered(user_id) == await cached.get_by_id(user_id)
    await store.set_scope(user_id, ("admin",))  # behind the cache's back, as another process would
    marker.value += 1
    clock.advance(1.0)
    assert cached.remembered(user_id) is None  # the check for outside changes is due: get_by_id makes it
    assert (await cached.get_by_id(user_id)).scope == ("admin",)  # type: ignore[union-attr]
    assert cached.remembered(user_id).scope == ("admin",)  # type: ignore[union-attr]
    await cached.set_scope(user_id, ("user",))
    assert cached.remembered(user_id) is None  # a write through the cache forgets the user
    assert store.reads == 2


async def test_the_marker_is_read_at_most_once_per_interval() -> None:
    cached, _, marker, clock, user_id = await setup()
    for _ in range(50):
        await cached.get_by_id(user_id)
    assert marker.reads == 1
    clock.advance(1.0)
    await cached.get_by_id(user_id)
    assert marker.reads == 2


async def test_the_cache_is_bounded() -> None:
    cached, _, _, _, _ = await setup(max_users=3)
    ids = [(await cached.add(new_user(f"user{n}"))).id for n in range(5)]
    for user_id in ids:
        await cached.get_by_id(user_id)
    assert len(cached) == 3


async def test_forget_drops_one_user_and_a_read_in_flight_is_not_kept() -> None:
    cached, store, _, _, user_id = await setup()
    other = (await cached.add(new_user("bob"))).id
    await cached.get_by_id(user_id)
    await cached.get_by_id(other)
    gate = asyncio.Event()
    store.hold = gate
    in_flight = asyncio.create_task(cached.get_fresh_by_id(other))
    await asyncio.sleep(0)
    cached.forget(user_id)  # a notification of another process's write, while the read waits
    gate.set()
    await in_flight
    assert len(cached) == 0  # alice forgotten; bob's read began before the news, so it was not kept
    store.hold = None
    reads = store.reads
    await cached.get_by_id(other)
    await cached.get_by_id(other)
    assert store.reads == reads + 1


async def test_forget_all_drops_everyone() -> None:
    cached, _, _, _, user_id = await setup()
    other = (await cached.add(new_user("bob"))).id
    await cached.get_by_id(user_id)
    await cached.get_by_id(other)
    cached.forget_all()
    assert len(cached) == 0


async def test_without_a_marker_only_writes_and_forget_change_what_is_remembered() -> None:
    store, clock = CountingStore(), FakeClock()
    cached = CachedUserStore(store, clock=clock)
    user_id = (await cached.add(new_user("alice"))).id
    await cached.get_by_id(user_id)
    clock.advance(3600)
    await cached.get_by_id(user_id)
    assert store.reads == 1


async def test_watch_reads_the_new_marker_at_once_and_forgets_everything() -> None:
    cached, store, marker, _, user_id = await setup()
    await cached.get_by_id(user_id)
    deaf = Marker()
    cached.watch(deaf)
    assert len(cached) == 0
    await cached.get_by_id(user_id)
    assert deaf.reads == 1
    assert marker.reads == 1  # the old marker is not read again
    assert store.reads == 2
