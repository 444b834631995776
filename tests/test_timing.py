"""Sign-in failures are indistinguishable, in their bodies and in their timing, at the real bcrypt cost.

An unknown user, a known user with a wrong password and a known user with a password over bcrypt's 72 bytes
(whose first 72 bytes are the right password) must all cost one bcrypt check at the configured cost, or an
attacker could tell which usernames exist from how long a failure takes. The tests in the rest of the suite run
bcrypt at cost 4, where a check takes about a millisecond and a difference would hide in the noise; here it runs
at the default cost of 12, where one check takes a few hundred milliseconds.

The three kinds of sign-in are interleaved round robin, each round in a rotated order, so that load on the
machine affects them alike; the median of each is compared with the others.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from aiohttp.test_utils import TestClient

from server.config import Settings
from tests.conftest import ClientFactory, sign_up

DEFAULT_COST = Settings().bcrypt_rounds
ROUNDS = 13
TOLERANCE = 0.15
# Exactly 72 bytes, bcrypt's limit: the too-long attempt below is this password with one more character, so
# a server that only looked at the first 72 bytes would let it in.
PASSWORD = "p" * 66 + "abc321"
ATTEMPTS: dict[str, dict[str, str]] = {
    "unknown user": {"username": "nobody-by-this-name", "password": "wrong-password"},
    "wrong password": {"username": "known", "password": "wrong-password"},
    "password over 72 bytes": {"username": "known", "password": PASSWORD + "!"},
}


async def timed_sign_in(client: TestClient[Any, Any], body: dict[str, str]) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    response = await client.post("/user/auth", json=body)
    raw = await response.read()
    return time.perf_counter() - started, response.status, raw


async def test_sign_in_failures_look_and_take_the_same(make_client: ClientFactory) -> None:
    assert DEFAULT_COST == 12
    client = await make_client(
        bcrypt_rounds=DEFAULT_COST, user_signin_rate_limit_account=10_000, user_signin_rate_limit_ip=10_000
    )
    assert len(PASSWORD.encode()) == 72
    await sign_up(client, username="known", email="known@example.com", password=PASSWORD)
    # The right password works, so the failures below fail for the reasons their names say.
    signed_in = await client.post("/user/auth", json={"username": "known", "password": PASSWORD})
    assert signed_in.status == 200

    names = list(ATTEMPTS)
    for name in names:  # one round to warm up, not counted
        await timed_sign_in(client, ATTEMPTS[name])
    durations: dict[str, list[float]] = {name: [] for name in names}
    bodies: dict[str, set[bytes]] = {name: set() for name in names}
    for round_number in range(ROUNDS):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, status, raw = await timed_sign_in(client, ATTEMPTS[name])
            assert status == 403, (name, raw)
            durations[name].append(elapsed)
            bodies[name].add(raw)

    assert len(set().union(*bodies.values())) == 1, bodies
    medians = {name: statistics.median(values) for name, values in durations.items()}
    report = ", ".join(f"{name}: {median * 1000:.0f} ms" for name, median in medians.items())
    # Every failure paid for a check at the real cost (well over a cost-4 check's millisecond)...
    assert min(medians.values()) > 0.02, report
    # ...and no pair of medians differs by 15% or more.
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            low, high = sorted((medians[first], medians[second]))
            assert (high - low) / low < TOLERANCE, f"{first} vs {second}: {report}"
    print(f"median sign-in failure times at cost {DEFAULT_COST}: {report}")  # shown by pytest -rP
