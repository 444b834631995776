"""Prometheus metrics: one registry per application, rendered in the text format for ``GET /metrics``.

- ``mixauth_http_requests_total`` and ``mixauth_http_request_duration_seconds``: every answered request by
  route (the path pattern; ``unmatched`` for paths no route has), method and status.
- ``mixauth_auth_events_total``: every auth event by name and outcome (the reason a token was refused, the
  limit that throttled or rate-limited, how a user was created; ``server.service.OUTCOME_FIELDS``). No
  outcome may tell a known account from an unknown one, so a failed sign-in has none: its reason is logged.
- Gauges read when scraped: live rate-limit buckets and evictions (in coarse steps, see
  ``server.web.app``) and the cap, the password-hashing pool's workers, busy workers and queue depth, and
  the sizes of the token and user caches.

Where it is served, and who may read it, is ``server.web.app``'s and ``handlers.get_metrics``'s.
- ``mixauth_build_info``: version, Python and aiohttp.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a cached token check (about 0.1 ms) to a bcrypt check at a high cost (over a second).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Readings(Collector):
    """Gauges whose values are read from live objects at scrape time."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, str, Callable[[], float]]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, read in self.readings:
            yield GaugeMetricFamily(name, documentation, value=read())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "mixauth_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "mixauth_http_request_duration_seconds",
            "Time to answer HTTP requests, by route, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._events = Counter(
            "mixauth_auth_events",
            "Auth events (the JSON log's event names), by outcome: reason, limit or via.",
            ["event", "outcome"],
            registry=self.registry,
        )
        Info("mixauth_build", "The running build.", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version(), "aiohttp": aiohttp.__version__}
        )
        self._readings = _Readings()
        self.registry.register(self._readings)
        # Label children by their labels: looking them up is most of the cost of counting a request.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def auth_event(self, event: str, outcome: str) -> None:
        self._events.labels(event, outcome).inc()

    def request_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            labels = (route, method, str(status))
            children = self._children[(route, method, status)] = (
                self._requests.labels(*labels),
                self._latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as the gauge ``name`` at every scrape."""
        self._readings.readings.append((name, documentation, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
