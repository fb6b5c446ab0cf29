"""Prometheus metrics of one service: its own registry and, when asked, a /metrics endpoint.

Every service process gets a :class:`ServiceMetrics` with its own
``CollectorRegistry`` (never the global one, so several services in one
process do not collide). The bus counters are read on each scrape by
:class:`BusCollector`; services add their own metrics to ``registry``. The
endpoint is served only for a service with a port in ``[metrics] ports``
(or ``aaa-failover run X --metrics-port N``); port 0 picks a free one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.values import MutexValue

from services.runtime.bus import DropCounters
from services.runtime.config import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "aaa_failover"

# Buckets (seconds) for in-process latencies: sub-millisecond to a few seconds.
LATENCY_BUCKETS: Sequence[float] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class LoopHistogram(Histogram):
    """prometheus_client's Histogram, with the same samples on /metrics, observed without a
    lock per value: for a histogram without labels that only the event loop's thread
    observes, once an event (the evaluator's decision latency). Each value is still read
    under its lock by the endpoint's thread; written by one thread only, it is whole
    either way. An exemplar, or values that are not a plain float in memory (multiprocess
    mode), take prometheus_client's own path."""

    def __init__(self, name: str, documentation: str, **kwargs: Any) -> None:
        if kwargs.get("labelnames"):
            raise ValueError("a LoopHistogram has no labels")
        super().__init__(name, documentation, **kwargs)

    def _metric_init(self) -> None:
        super()._metric_init()
        self._plain = isinstance(self._sum, MutexValue)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None or not self._plain:
            super().observe(amount, exemplar)
            return
        bounds = self._upper_bounds
        self._sum._value += amount
        # the first bucket whose bound is at least ``amount`` (none for NaN), as
        # prometheus_client's loop over the bounds finds it
        i = bisect_left(bounds, amount)
        if i < len(bounds) and amount <= bounds[i]:
            self._buckets[i]._value += 1


class LoopGauge(Gauge):
    """prometheus_client's Gauge, set without a lock: for gauges only the event loop's
    thread sets (each server's health, once a sample). Each value is still read under its
    lock by the endpoint's thread. Values that are not a plain float in memory
    (multiprocess mode) take prometheus_client's own path."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._plain = isinstance(self._value, MutexValue)

    def set(self, value: float) -> None:
        if self._plain:
            self._value._value = float(value)
        else:
            super().set(value)


class BusCollector(Collector):
    """The counters of a bus, as Prometheus counters labelled with the service name.

    Every drop, whoever found it (the bus's checks, a guard, a handler), is in
    ``events_dropped`` by reason; handling times are a summary by event kind.
    """

    def __init__(self, service: str, counters: DropCounters) -> None:
        self.service = service
        self.counters = counters

    def collect(self) -> Iterable[Metric]:
        c = self.counters
        labels = ["service"]
        published = CounterMetricFamily(
            f"{PREFIX}_events_published", "Events this service published.", labels=labels
        )
        published.add_metric([self.service], c.published)
        received = CounterMetricFamily(
            f"{PREFIX}_events_received", "Messages this service received.", labels=labels
        )
        received.add_metric([self.service], c.received)
        dropped = CounterMetricFamily(
            f"{PREFIX}_events_dropped",
            "Events this service dropped, by reason.",
            labels=["service", "reason"],
        )
        for reason, count in sorted(dict(c.dropped).items()):
            dropped.add_metric([self.service, reason], count)
        errors = CounterMetricFamily(
            f"{PREFIX}_handler_errors", "Handlers of this service that raised.", labels=labels
        )
        errors.add_metric([self.service], c.handler_errors)
        handling = SummaryMetricFamily(
            f"{PREFIX}_handler_seconds",
            "Time this service's handlers took per event, by event kind.",
            labels=["service", "event"],
        )
        for kind, count in sorted(dict(c.handled).items()):
            handling.add_metric([self.service, kind], count, c.handling_s.get(kind, 0.0))
        return [published, received, dropped, errors, handling]


class ServiceMetrics:
    """One service's registry and, while serving, its HTTP endpoint."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.url: str | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch_bus(self, counters: DropCounters) -> None:
        """Report ``counters`` on every scrape."""
        self.registry.register(BusCollector(self.service, counters))

    def serve(self, listen: str, port: int) -> str:
        """Serve /metrics on ``listen:port`` (0: a free port) in a thread; return its URL.

        Raises ConfigError if it cannot listen there.
        """
        try:
            server, thread = start_http_server(port, listen, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {listen}:{port}: {exc.strerror or exc}"
            ) from None
        self._server, self._thread = server, thread
        host = f"[{listen}]" if ":" in listen else listen
        self.url = f"http://{host}:{server.server_port}/metrics"
        logger.info("metrics at %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Stop serving (if serving) and close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5)
        logger.debug("metrics of %s stopped", self.service)
