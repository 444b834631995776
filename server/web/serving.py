"""Serving the application: the listener, its limits, its log lines and its lifetime, on a given event loop.

``run`` raises the process's file limit, binds the port and accepts connections itself, up to a cap
(past it a new one is reset at once), has aiohttp close idle connections after ``keepalive_timeout``, and
stops on SIGTERM or SIGINT once the requests in flight are answered. Its log lines: ``server.starting``,
``server.started`` once the port is bound, and always one end line, ``server.stopped`` or ``server.failed``.

A condition that can repeat thousands of times a second (a connection refused at the cap, an accept()
failing for want of descriptors, any other error the event loop reports) is logged once per interval with a
count, never once per event: a flood must not turn into a flood of log lines.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from server import __version__, backends
from server.config import Settings
from server.web.access import AccessLog

Clock = Callable[[], float]

# Descriptors kept out of the connection cap for everything else the process opens: about 20 at rest (stdio,
# the event loop's, the listeners, two SQLite connections with their WAL and shared-memory files), plus
# transient ones (the secret file, metrics scrapes on their own port, outgoing calls).
RESERVED_FILES = 64
# The default cap never goes above this, whatever the file limit: an idle connection costs about 13 KiB
# (measured with 500 held open), so 4096 of them hold about 52 MiB, and a container whose file limit is
# a million is not left to run out of memory instead.
DEFAULT_MAX_CONNECTIONS = 4096
# How often a repeating condition is logged, at most, per condition.
CONDITION_INTERVAL_S = 10.0
# How long requests in flight have to finish after SIGTERM (aiohttp's own default).
SHUTDOWN_TIMEOUT_S = 60.0
BACKLOG = 128
# How long accepting pauses after accept() fails for want of a resource (asyncio's own pause).
ACCEPT_RETRY_S = 1.0
# The collector's first threshold while serving (Python's default is 700): a collection runs once this many
# more container objects have been made than freed. The requests in flight hold about ten each, which
# reference counting frees as each is answered; at 700, 128 connections' worth set off several collections
# a turn of the loop, each walking every request in flight (5 % of the instructions of a GET /user). At this
# threshold it takes about a thousand requests in flight, or that much garbage in cycles (a few MiB at most).
GC_YOUNG_THRESHOLD = 10_000


class StartupError(Exception):
    """The server could not start (a port in use, an unusable data directory); the message is one line."""


@dataclass(eq=False, frozen=True, slots=True)
class FileLimit:
    """The process's limit on open files: as it is now, as it was at start, and the hard limit."""

    soft: int  # the soft RLIMIT_NOFILE now
    was: int  # the soft limit the process started with
    hard: int  # RLIM_INFINITY where there is no hard limit


def raise_file_limit() -> FileLimit:
    """Raise the soft limit on open files to the hard one, where the system allows it.

    Many systems start services with a soft limit of 1024 and a hard one far above; the soft limit is the
    process's to raise.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return FileLimit(soft=soft, was=soft, hard=hard)
    # Where the hard limit is unlimited, the kernel still caps open files (Linux: fs.nr_open, 2**20 by default).
    for target in (hard,) if hard != resource.RLIM_INFINITY else (1 << 20, 1 << 16):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return FileLimit(soft=target, was=soft, hard=hard)
    return FileLimit(soft=soft, was=soft, hard=hard)


def connection_limit(requested: int | None, open_files: int) -> int:
    """The connection cap: ``requested`` (None for the default), never more than the file limit leaves.

    The default is the soft file limit less ``RESERVED_FILES`` (half the limit, when that is smaller), at most
    ``DEFAULT_MAX_CONNECTIONS``. A larger request is lowered to what the file limit allows, so that accepting
    a connection never fails for want of a descriptor.
    """
    if open_files == resource.RLIM_INFINITY:
        open_files = 1 << 20
    allowed = max(1, open_files - RESERVED_FILES, open_files // 2)
    if requested is None:
        return min(allowed, DEFAULT_MAX_CONNECTIONS)
    return min(requested, allowed)


@dataclass(eq=False, slots=True)
class _Window:
    """One condition's window (ConditionLog): when it opened, its level, its latest fields and its count."""

    opened: float
    level: str
    fields: dict[str, Any]
    count: int = 0


@dataclass(eq=False)
class ConditionLog:
    """Repeating conditions, each logged when it first occurs and then at most once per ``interval``.

    A condition is an event name and a key (the loop's message, say). Its first occurrence is logged at once
    with ``count=1``; later ones are counted, and ``flush`` logs the count once the interval has passed,
    with ``seconds``, the length of the window counted. A condition quiet for a whole interval is forgotten,
    so its next occurrence is logged at once again.
    """

    log: Any
    interval: float = CONDITION_INTERVAL_S
    clock: Clock = time.monotonic
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)

    def note(
        self, event: str, key: str = "", *, level: str = "warning", exc_info: BaseException | None = None, **fields: Any
    ) -> None:
        window = self._windows.get((event, key))
        if window is None:
            self._windows[(event, key)] = _Window(self.clock(), level, fields)
            getattr(self.log, level)(event, count=1, **fields, **({"exc_info": exc_info} if exc_info else {}))
            return
        window.count += 1
        window.fields = fields
        self.flush()

    def flush(self, final: bool = False) -> None:
        """Log the counts of conditions whose interval has passed (``final``: of all of them)."""
        now = self.clock()
        for (event, key), window in list(self._windows.items()):
            if not final and now - window.opened < self.interval:
                continue
            if window.count:
                seconds = round(now - window.opened, 1)
                getattr(self.log, window.level)(event, count=window.count, seconds=seconds, **window.fields)
            if window.count and not final:
                window.opened, window.count = now, 0
            else:
                del self._windows[(event, key)]

    def loop_exception(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An event-loop exception handler: asyncio logs each one ("socket.accept() out of system resource"
        once per accept attempt); this logs each message once per interval with a count."""
        message = str(context.get("message") or "unhandled exception in the event loop")
        exception = context.get("exception")
        error = f"{type(exception).__name__}: {exception}" if isinstance(exception, BaseException) else None
        self.note(
            "event_loop.error",
            message,
            level="error",
            exc_info=exception if isinstance(exception, BaseException) else None,
            message=message,
            error=error,
        )


class ConnectionGate:
    """The listener's protocol factory, counting connections: ``full`` once ``limit`` are open or being set
    up (``connecting``: accepted and handed over, not yet made)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self._factory = factory
        self.limit = limit
        self.open = 0
        self.connecting = 0

    @property
    def full(self) -> bool:
        return self.open + self.connecting >= self.limit

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self._factory(), self)


class _Counted(asyncio.Protocol):
    """Hands every call to the protocol it wraps, and counts its connection from made to lost."""

    __slots__ = ("_counted", "_gate", "_inner", "data_received")

    # The inner protocol's own method, called with no frame of this one's in between: it runs for every
    # read, and asyncio looks it up on each call (uvloop once, when the connection is made).
    data_received: Callable[[bytes], None]  # type: ignore[assignment]  # an attribute for a method

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate) -> None:
        self._inner = inner
        self.data_received = inner.data_received
        self._gate = gate
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.open += 1
        self._counted = True
        self._inner.connection_made(transport)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            if self._counted:
                self._counted = False
                self._gate.open -= 1


async def accept_forever(listener: socket.socket, gate: ConnectionGate, conditions: ConditionLog) -> None:
    """Accept connections on ``listener`` and hand them to ``gate``.

    The event loops' own accept loops cannot be told to refuse before a descriptor is spent: asyncio's takes
    up to a backlog of connections at once and, out of descriptors, reports each failure (thousands of log
    lines a second); uvloop's silently drops them. Here a connection past the cap is closed with a reset as
    soon as it is accepted, so it holds its descriptor for no time at all, and a failing accept() is
    counted and retried after a pause instead of at once.

    Like the loops' own, it takes every connection waiting in the backlog at once (up to ``BACKLOG``) and
    sets them up side by side: one connection per turn of a busy loop had a burst of new clients wait in
    line, the last of 128 for most of a second before its first request was read.
    """
    loop = asyncio.get_running_loop()
    handing_over: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def admit(connection: socket.socket) -> None:
        # Before the next accept(): a connection past the cap never holds its descriptor beside another.
        if gate.full:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            connection.close()
            conditions.note("connections.refused", max_connections=gate.limit)
            return
        connection.setblocking(False)
        gate.connecting += 1
        task = loop.create_task(_hand_over(loop, gate, connection))
        handing_over.add(task)
        task.add_done_callback(handing_over.discard)

    while True:
        try:
            connection, _ = await loop.sock_accept(listener)
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as exc:
            conditions.note("connections.accept_failed", exc.strerror or "", error=exc.strerror or str(exc))
            await asyncio.sleep(ACCEPT_RETRY_S)
            continue
        admit(connection)
        for _ in range(BACKLOG - 1):
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as exc:  # out of descriptors, say: the next sock_accept finds out and pauses
                conditions.note("connections.accept_failed", exc.strerror or "", error=exc.strerror or str(exc))
                break
            admit(connection)


async def _hand_over(loop: asyncio.AbstractEventLoop, gate: ConnectionGate, connection: socket.socket) -> None:
    try:
        await loop.connect_accepted_socket(gate, connection)
    except OSError:  # the client left between accept() and now
        connection.close()
    finally:
        gate.connecting -= 1


# SO_LINGER on, with a zero timeout: close() sends a reset and frees the descriptor at once.
_RESET = struct.pack("ii", 1, 0)


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` names, bound as asyncio's create_server binds them."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: {reason}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def run(app: web.Application, settings: Settings, loop: asyncio.AbstractEventLoop, loop_name: str) -> None:
    """Serve ``app`` on ``loop`` until SIGTERM or SIGINT; raise StartupError if it cannot start."""
    log = structlog.get_logger("mixauth.server")
    files = raise_file_limit()
    max_connections = connection_limit(settings.max_connections, files.soft)
    log.info(
        "server.starting",
        version=__version__,
        host=settings.host,
        port=settings.port,
        loop=loop_name,
        open_files_limit=files.soft,
        open_files_limit_was=files.was,
        max_connections=max_connections,
        keepalive_timeout=settings.keepalive_timeout,
        **backends.describe(settings),
    )
    if settings.max_connections is not None and max_connections < settings.max_connections:
        log.warning(
            "server.max_connections_lowered",
            requested=settings.max_connections,
            max_connections=max_connections,
            open_files_limit=files.soft,
        )
    conditions = ConditionLog(log)
    loop.set_exception_handler(conditions.loop_exception)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(app, settings, max_connections, conditions, log))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = (
            f"cannot use {exc.filename}: {reason}"
            if exc.filename is not None
            else f"cannot serve on {settings.host}:{settings.port}: {reason}"
        )
        log.error("server.failed", error=message)
        raise StartupError(message) from None
    except BaseException as exc:
        log.error("server.failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        conditions.flush(final=True)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
    log.info("server.stopped")
    # Everything is closed and the process is about to exit. Left alone, the interpreter's final garbage
    # collections walk every object of every module imported (aiohttp, structlog, cryptography...): 0.15 s
    # of CPU, and over a second of wall time on a busy machine, spent after the last request was answered.
    # Frozen objects are skipped; nothing is left that needs a finaliser.
    gc.freeze()


async def _serve(
    app: web.Application, settings: Settings, max_connections: int, conditions: ConditionLog, log: Any
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLog,
        keepalive_timeout=settings.keepalive_timeout,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    try:
        # The application's start-up (database, secret, hashing pool) runs before the port is bound; if it or
        # the bind fails, whatever did start is closed here rather than left to the interpreter.
        await runner.setup()
        assert runner.server is not None
        gate = ConnectionGate(runner.server, max_connections)
        listeners = await _listen(settings.host, settings.port)
    except BaseException:
        await runner.cleanup()
        raise
    # What start-up made lives as long as the process: frozen, later collections never walk it (nor the few
    # thousand objects the imports left unreachable). Collection was off until now under python -m server.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)  # the older generations' thresholds stay Python's
    gc.enable()
    addresses = [listener.getsockname()[:2] for listener in listeners]
    log.info("server.started", addresses=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses])
    tasks = [loop.create_task(accept_forever(listener, gate, conditions)) for listener in listeners]
    tasks.append(loop.create_task(_flush_every(conditions)))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in listeners:
            listener.close()
        # Idle keep-alive connections are closed at once; requests in flight get SHUTDOWN_TIMEOUT_S to finish.
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _flush_every(conditions: ConditionLog) -> None:
    while True:
        await asyncio.sleep(conditions.interval)
        conditions.flush()
