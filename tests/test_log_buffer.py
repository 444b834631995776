"""The buffered log stream (the server's stdout): one write per loop turn, every line kept, in order.

What is proven here: the lines of one turn of the event loop go out together at the end of that turn, whichever
path logged them; a line logged from a request is on the stream before the next turn's callbacks run, so an
idle server holds nothing; every line of many concurrent requests reaches the stream exactly once, in the
order it was logged; a line logged off the loop (another thread, an admin command) goes out at once, after
whatever the loop had pending; and a real server process writes every line before it ends on SIGTERM, and
loses nothing but the turn it was in on ``kill -9``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from server.logs import configure_logging
from server.web.access import AccessLog
from tests.conftest import PASSWORD, ClientFactory, bearer, sign_up
from tests.process import start_server

pytestmark = pytest.mark.usefixtures("restore_logging")


class CountingStream(io.StringIO):
    """A stream that counts the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def events(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


async def next_turn() -> None:
    """Return once the callbacks the loop had queued when this was called have run (one loop turn)."""
    reached = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(reached.set_result, None)
    await reached


async def test_the_lines_of_one_loop_turn_go_out_in_one_write_at_its_end() -> None:
    stream = CountingStream()
    configure_logging("info", stream=stream, buffered=True)
    log = structlog.get_logger("mixauth.test")
    log.info("first")
    logging.getLogger("aiohttp.web").warning("second")  # the stdlib's path, into the same ordered stream
    log.info("third")
    assert stream.getvalue() == ""
    seen: list[list[str]] = []
    asyncio.get_running_loop().call_soon(lambda: seen.append(events(stream)))  # queued after the flush
    await next_turn()
    assert seen == [["first", "second", "third"]]
    assert stream.writes == 1


async def test_a_line_logged_from_a_request_is_out_before_the_next_turns_callbacks(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, buffered=True)
    client = await make_client()
    token = await sign_up(client)
    # Right after the access line is logged, queue a look at the stream for the loop's next turn.
    seen = asyncio.get_running_loop().create_future()
    original = AccessLog.log

    def log_and_look(self: AccessLog, *args: Any) -> None:
        original(self, *args)
        if not seen.done():
            line_count = len(stream.getvalue().splitlines())
            asyncio.get_running_loop().call_soon(lambda: seen.set_result((line_count, events(stream))))

    monkeypatch.setattr(AccessLog, "log", log_and_look)
    before = len(stream.getvalue().splitlines())
    response = await client.get("/user", headers=bearer(token))
    assert response.status == 200
    held, written = await seen  # no other request follows: the server is idle from here on
    assert held == before  # it was held at first ...
    assert written[-1] == "http.request"  # ... and out at the start of the next turn
    assert len(written) == before + 1


async def test_every_line_of_concurrent_requests_is_written_once_in_the_order_logged(
    make_client: ClientFactory, log_guard: list[str]
) -> None:
    stream = CountingStream()
    configure_logging("info", stream=stream, buffered=True)
    client = await make_client()
    token = await sign_up(client)
    log_guard.clear()
    stream.seek(0)
    stream.truncate(0)
    stream.writes = 0

    async def one(i: int) -> None:
        headers = {"X-Request-Id": f"req{i:03d}"}
        if i % 4 == 0:  # a sign-in: an auth event, then its access line
            body = {"username": "abc@example.com", "password": PASSWORD}
            response = await client.post("/user/auth", json=body, headers=headers)
        else:
            response = await client.get("/user", headers={**headers, **bearer(token)})
        assert response.status == 200
        await response.read()

    await asyncio.gather(*(one(i) for i in range(120)))
    await next_turn()
    written = stream.getvalue().splitlines()
    assert written == log_guard  # every line rendered, exactly once, in the order rendered
    access = [json.loads(line) for line in written if json.loads(line)["event"] == "http.request"]
    assert sorted(line["request_id"] for line in access) == [f"req{i:03d}" for i in range(120)]
    by_request: dict[str, list[str]] = {}
    for line in map(json.loads, written):
        by_request.setdefault(line["request_id"], []).append(line["event"])
    assert by_request["req000"] == ["user.signin.succeeded", "http.request"]
    assert stream.writes < len(written)  # lines of one turn went out together


async def test_a_line_logged_off_the_loop_goes_out_at_once_after_the_loops_pending_lines() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, buffered=True)
    log = structlog.get_logger("mixauth.test")
    log.info("on.the.loop")
    worker = threading.Thread(target=lambda: log.info("from.a.thread"))
    worker.start()
    worker.join()  # within this turn: the loop's line is still pending when the thread logs
    assert events(stream) == ["on.the.loop", "from.a.thread"]


async def test_threads_logging_while_the_loop_logs_lose_and_repeat_no_line() -> None:
    """The loop's thread appends without the lock while other threads write everything pending: every line
    is written once, each source's lines in the order it logged them."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, buffered=True)
    log = structlog.get_logger("mixauth.test")

    def from_a_thread(name: str) -> None:
        for number in range(400):
            log.info(name, number=number)

    workers = [threading.Thread(target=from_a_thread, args=(f"thread.{n}",)) for n in range(4)]
    for worker in workers:
        worker.start()
    for number in range(2000):
        log.info("loop", number=number)
        if number % 7 == 0:
            await next_turn()
    for worker in workers:
        worker.join()
    await next_turn()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_source: dict[str, list[int]] = {}
    for line in lines:
        by_source.setdefault(line["event"], []).append(line["number"])
    assert by_source == {"loop": list(range(2000)), **{f"thread.{n}": list(range(400)) for n in range(4)}}


def test_outside_a_running_loop_every_line_is_written_at_once() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, buffered=True)
    structlog.get_logger("mixauth.test").info("admin.command")
    logging.getLogger("aiohttp.web").warning("stdlib")
    assert events(stream) == ["admin.command", "stdlib"]


def test_a_line_logged_after_its_loop_stopped_goes_out_at_once_with_the_stopped_turns_lines() -> None:
    """The last turn of a loop schedules a flush that never runs: the next line, off the loop, writes both."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, buffered=True)
    log = structlog.get_logger("mixauth.test")
    loop = asyncio.new_event_loop()

    def last_turn() -> None:
        loop.stop()
        log.info("last.turn")
        log.info("last.turn.again")  # a flush is scheduled on this loop, in this thread, already

    try:
        loop.call_soon(last_turn)
        loop.run_forever()
        assert events(stream) == []  # held for a flush the stopped loop will not run
        log.info("after.the.loop")
        assert events(stream) == ["last.turn", "last.turn.again", "after.the.loop"]
    finally:
        loop.close()


def test_a_stream_given_for_a_test_is_not_buffered_unless_asked() -> None:
    configure_logging("info", stream=io.StringIO())
    assert not structlog.get_logger("x").bind()._logger._writer.buffered
    configure_logging("info")
    assert structlog.get_logger("x").bind()._logger._writer.buffered


async def requests_against(server: Any, count: int) -> str:
    """Sign up, then ``count`` concurrent GET /user; the token."""
    async with aiohttp.ClientSession(server.url) as session:
        body = {"username": "abc@example.com", "email": "abc@example.com", "password": PASSWORD}
        async with session.post("/user", json=body) as response:
            token: str = (await response.json())["token"]

        async def one(i: int) -> None:
            headers = {**bearer(token), "X-Request-Id": f"last{i:03d}"}
            async with session.get("/user", headers=headers) as response:
                assert response.status == 200

        await asyncio.gather(*(one(i) for i in range(count)))
    return token


async def test_on_sigterm_every_line_is_written_before_the_process_ends(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        await requests_against(server, 50)
    finally:
        code, lines, err = server.stop()
    assert code == 0, err
    ids = sorted(line["request_id"] for line in lines if line["event"] == "http.request" and line["route"] == "/user")
    assert ids[1:] == [f"last{i:03d}" for i in range(50)]  # the sign-up's own, then every GET
    assert lines[-1]["event"] == "server.stopped"


async def test_kill_9_loses_no_line_of_a_turn_that_ended(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        await requests_against(server, 20)
        # A later request answered: the server has run loop turns after the ones that logged the GETs.
        async with aiohttp.ClientSession(server.url) as session, session.get("/health/live") as response:
            assert response.status == 200
    finally:
        server.kill()  # SIGKILL: no shutdown, no exit handlers
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines()]
    ids = sorted(line["request_id"] for line in lines if line["event"] == "http.request" and line["route"] == "/user")
    assert ids[1:] == [f"last{i:03d}" for i in range(20)]
    assert "server.stopped" not in [line["event"] for line in lines]
