"""Webhook delivery of reset codes, and the background tasks it runs in.

``WebhookNotifier`` (a ``ResetNotifier``) posts a reset code's JSON to WEBHOOK_USER_FORGOT_PASSWORD, signed
with WEBHOOK_SECRET when one is set (``X-Mixauth-Signature: sha256=<hex HMAC-SHA256 of the raw body>``),
with a timeout per attempt and a bounded number of attempts, backing off between them. It never follows a
redirect (the code would go where the receiver says). A failure is logged as ``webhook.delivery_failed``
with the URL's scheme, host and path only (a query or user info may hold the receiver's credentials), and
never with the code, the link or the email.

``BackgroundTasks`` (a ``Background``) is the application's set of such work: a spawned task runs on its
own, after the answer that started it; at shutdown the set is given ``DRAIN_SECONDS`` to finish, then the
rest is cancelled (``drained``, a cleanup context). ``webhook_context`` owns the HTTP client session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from server import __version__
from server.config import Settings
from server.domain import ResetCodeMessage
from server.views import iso_ms
from server.web.keys import RESET_NOTIFIER

log = structlog.get_logger("mixauth.webhook")

SIGNATURE_HEADER = "X-Mixauth-Signature"
ATTEMPTS = 3
ATTEMPT_TIMEOUT = 5.0  # seconds, each attempt
BACKOFF = 1.0  # seconds before the second attempt; doubled before each later one
DRAIN_SECONDS = 5.0
# Statuses worth another attempt: the receiver may answer differently in a moment. Other 4xx answers will
# not change, so they end the delivery at once.
_RETRIED_CLIENT_ERRORS = frozenset({408, 425, 429})


def signature(body: bytes, secret: bytes) -> str:
    """The X-Mixauth-Signature value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def message_body(message: ResetCodeMessage) -> bytes:
    """The JSON a delivery posts: ``{"code", "email", "userId", "created", "link"}``."""
    return orjson.dumps(
        {
            "code": message.code,
            "email": message.email,
            "userId": message.user_id,
            "created": iso_ms(message.created),
            "link": message.link,
        }
    )


def loggable_url(url: str) -> str:
    """``url`` without user info, query or fragment, which may carry the receiver's credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookNotifier:
    """Posts reset codes to one URL, with retries; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: bytes | None,
        *,
        attempts: int = ATTEMPTS,
        timeout: float = ATTEMPT_TIMEOUT,
        backoff: float = BACKOFF,
    ) -> None:
        self._session = session
        self._url = url
        self._secret = secret
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"WebhookNotifier({loggable_url(self._url)!r})"

    async def deliver(self, message: ResetCodeMessage) -> None:
        body = message_body(message)
        headers = {"Content-Type": "application/json", "User-Agent": f"mixauth/{__version__}"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(body, self._secret)
        reason = "no_attempt"
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 2))
            retry, reason = await self._post(body, headers)
            if reason == "delivered":
                log.info("webhook.delivered", url=loggable_url(self._url), attempts=attempt, user_id=message.user_id)
                return
            log.debug("webhook.attempt_failed", url=loggable_url(self._url), attempt=attempt, reason=reason)
            if not retry:
                break
        log.warning(
            "webhook.delivery_failed",
            url=loggable_url(self._url),
            attempts=attempt,
            reason=reason,
            user_id=message.user_id,
        )

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str]:
        """One attempt: (whether another may help, what happened: ``delivered`` or why not)."""
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return True, "timeout"
        except aiohttp.ClientError as exc:
            return True, type(exc).__name__
        if 200 <= status < 300:
            return False, "delivered"
        return (status >= 500 or status in _RETRIED_CLIENT_ERRORS), f"status_{status}"


class UnsentNotifier:
    """What stands in for the webhook when WEBHOOK_USER_FORGOT_PASSWORD is unset: nothing is sent."""

    async def deliver(self, message: ResetCodeMessage) -> None:
        log.debug("webhook.not_sent", reason="not_configured", user_id=message.user_id)


class BackgroundTasks:
    """The application's background work; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            work.close()
            log.warning("background.dropped", reason="shutting_down")
            return
        task = asyncio.get_running_loop().create_task(self._run(work))
        # Held until done: the loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged here: nobody awaits a background task
            log.error("background.failed", error=type(exc).__name__)

    async def wait(self) -> None:
        """Until every task spawned so far is done (for tests, and the drain)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def drained(self, _app: web.Application) -> AsyncIterator[None]:
        """A cleanup context that drains the tasks when the application stops."""
        yield
        await self.drain(DRAIN_SECONDS)  # read now: tests shorten it

    async def drain(self, grace: float = DRAIN_SECONDS) -> None:
        """Refuse new work, give the running tasks ``grace`` seconds, then cancel what is left."""
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("background.cancelled", tasks=len(pending))
            await asyncio.wait(pending)


# The application's background tasks, for whoever must wait for them (tests, the drain).
BACKGROUND = web.AppKey("background", BackgroundTasks)


def webhook_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context of the webhook's HTTP client session: ``app[RESET_NOTIFIER]`` while it lives.

    Append it before the context that builds the services, and ``BackgroundTasks.drained`` after it:
    contexts close in reverse, so the deliveries, which use the store and the session, finish first.
    """

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        url = settings.webhook_user_forgot_password
        if url is None:
            log.warning(
                "webhook.not_configured",
                setting="WEBHOOK_USER_FORGOT_PASSWORD",
                effect="forgot-password reset codes are not sent to anyone",
            )
            app[RESET_NOTIFIER] = UnsentNotifier()
            yield
            return
        secret = settings.webhook_secret.encode() if settings.webhook_secret is not None else None
        async with aiohttp.ClientSession() as session:
            # The module's constants read now, not when the class was defined: tests shorten the backoff.
            app[RESET_NOTIFIER] = WebhookNotifier(
                session, url, secret, attempts=ATTEMPTS, timeout=ATTEMPT_TIMEOUT, backoff=BACKOFF
            )
            yield

    return lifetime
