"""Prometheus metrics: one registry per application, rendered in the text format for ``GET /metrics``.

- ``mixauth_http_requests_total`` and ``mixauth_http_request_duration_seconds``: every answered request by
  route (the path pattern; ``unmatched`` for paths no route has), method and status.
- ``mixauth_auth_events_total``: every auth event by name and outcome (the reason a token was refused, the
  limit that throttled or rate-limited, how a user was created; ``server.service.OUTCOME_FIELDS``). No
  outcome may tell a known account from an unknown one, so a failed sign-in has none: its reason is logged.
- Gauges read when scraped: live rate-limit buckets and evictions (in coarse steps, see
  ``server.web.app``) and the cap, the password-hashing pool's workers, busy workers and queue depth, and
  the sizes of the token and user caches.

- ``mixauth_build_info``: version, Python and aiohttp.

Where it is served, and who may read it, is ``server.web.app``'s and ``handlers.get_metrics``'s.

The request and auth-event counts are plain numbers kept on the event loop (every observation is on it),
turned into metric families only when scraped: a prometheus-client ``Counter`` or ``Histogram`` takes a
lock and a label lookup on every observation, about as much as the rest of counting a request. The
families are the ones those classes would expose, series for series: names, types, labels, buckets and
each series' ``_created`` time.

prometheus-client itself is imported at the first scrape, not at start-up (it costs about 15 ms to import,
before the first request could be answered): until then, metrics are these numbers and the gauges' readers.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

import aiohttp

from server import __version__

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a cached token check (about 0.1 ms) to a bcrypt check at a high cost (over a second).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Readings:
    """Gauges and counters whose values are read from live objects at scrape time (a prometheus-client
    collector): a counter is a number that only grows, such as reconnections since start."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, str, Callable[[], float], bool]] = []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, documentation, read, counts in self.readings:
            family = CounterMetricFamily if counts else GaugeMetricFamily
            yield family(name, documentation, value=read())


REQUEST_LABELS = ("route", "method", "status")
EVENT_LABELS = ("event", "outcome")
_REQUESTS = ("mixauth_http_requests", "HTTP requests answered, by route, method and status.")
_LATENCY = ("mixauth_http_request_duration_seconds", "Time to answer HTTP requests, by route, method and status.")
_EVENTS = ("mixauth_auth_events", "Auth events (the JSON log's event names), by outcome: reason, limit or via.")
# The "le" labels, as prometheus-client writes these bounds.
_BUCKET_NAMES = [str(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]


class RequestSeries:
    """One (route, method, status): its count, latency sum and latency counts per bucket (not cumulative)."""

    __slots__ = ("buckets", "count", "created", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        """One more request answered in ``seconds``."""
        self.count += 1
        self.total += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


class _Counts:
    """The request and auth-event counters, as prometheus-client's Counter and Histogram would expose them (a
    prometheus-client collector)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], RequestSeries] = {}
        self.events: dict[tuple[str, str], list[float]] = {}  # [count, created]

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        import prometheus_client.metrics
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        # As prometheus-client's own metrics: no _created series once disable_created_metrics() was called.
        created = getattr(prometheus_client.metrics, "_use_created", True)
        requests = CounterMetricFamily(*_REQUESTS, labels=REQUEST_LABELS)
        latency = HistogramMetricFamily(*_LATENCY, labels=REQUEST_LABELS)
        for (route, method, status), series in self.requests.items():
            labels = [route, method, str(status)]
            requests.add_metric(labels, series.count, created=series.created if created else None)
            cumulative, buckets = 0, []
            for name, count in zip(_BUCKET_NAMES, series.buckets, strict=True):
                cumulative += count
                buckets.append((name, float(cumulative)))
            latency.add_metric(labels, buckets, series.total)
            if created:
                latency.add_sample(
                    f"{_LATENCY[0]}_created", dict(zip(REQUEST_LABELS, labels, strict=True)), series.created
                )
        events = CounterMetricFamily(*_EVENTS, labels=EVENT_LABELS)
        for (event, outcome), (times, since) in self.events.items():
            events.add_metric([event, outcome], times, created=since if created else None)
        yield requests
        yield latency
        yield events


class Metrics:
    def __init__(self) -> None:
        self._counts = _Counts()
        self._readings = _Readings()
        self._registry: CollectorRegistry | None = None  # built at the first scrape

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus-client's registry of these metrics (imported and built on first use)."""
        if self._registry is None:
            import platform

            from prometheus_client import CollectorRegistry, Info

            registry = CollectorRegistry()
            # Plain objects with collect(), which is all a registry calls: a Collector subclass would need
            # prometheus-client imported with this module.
            registry.register(cast("Collector", self._counts))
            Info("mixauth_build", "The running build.", registry=registry).info(
                {"version": __version__, "python": platform.python_version(), "aiohttp": aiohttp.__version__}
            )
            registry.register(cast("Collector", self._readings))
            self._registry = registry
        return self._registry

    def auth_event(self, event: str, outcome: str) -> None:
        counted = self._counts.events.get((event, outcome))
        if counted is None:
            self._counts.events[(event, outcome)] = [1.0, time.time()]
        else:
            counted[0] += 1

    def request_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests(route, method, status).observe(seconds)

    def requests(self, route: str, method: str, status: int) -> RequestSeries:
        """The series of requests to ``route`` with ``method`` answered with ``status``, made at first use: the
        access log keeps the ones it counts in, per connection."""
        series = self._counts.requests.get((route, method, status))
        if series is None:
            series = self._counts.requests[(route, method, status)] = RequestSeries()
        return series

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as the gauge ``name`` at every scrape."""
        self._readings.readings.append((name, documentation, read, False))

    def counter(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Report ``read()``, a count since start, as the counter ``name`` (exposed as ``name_total``)."""
        self._readings.readings.append((name, documentation, read, True))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
