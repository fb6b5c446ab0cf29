"""The agent's /metrics: how each client's requests fared per upstream, its own failovers,
and what its receivers (CoA and ICMP listeners, the RADIUS proxy) did with each packet."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from schemas.events import UpstreamChange, UpstreamReport
from services.runtime.metrics import PREFIX


class UpstreamMetrics:
    """Counters fed from each status's upstream reports, labelled by client and server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_agent_upstream_requests",
            "Requests to an upstream by how they ended: answered or timeout (no answer "
            "within the response window); resent counts those sent on to the next upstream.",
            ["client", "server", "outcome"],
            registry=registry,
        )
        self.changes = Counter(
            f"{PREFIX}_agent_upstream_changes",
            "The client's own failover decisions: an upstream became zombie, dead or alive.",
            ["client", "server", "to"],
            registry=registry,
        )

    def record(
        self, client: str, reports: list[UpstreamReport], changes: list[UpstreamChange]
    ) -> None:
        for report in reports:
            for outcome, count in (
                ("answered", report.answers),
                ("timeout", report.timeouts),
                ("resent", report.resent),
            ):
                if count:
                    self.requests.labels(client, report.server, outcome).inc(count)
        for change in changes:
            self.changes.labels(client, change.server, change.after).inc()


class PacketCounts(Collector):
    """``aaa_failover_agent_packets_total{client, receiver, outcome}``, read at each scrape
    from the counts each receiver keeps (a CoA listener's ``malformed``, ``bad-authenticator``,
    ``accepted``...; the proxy's dropped packets by reason), so every packet a receiver
    refuses shows on /metrics, as every event the bus drops does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._sources: list[tuple[str, str, Mapping[str, int]]] = []
        registry.register(self)

    def add(self, client: str, receiver: str, counts: Mapping[str, int]) -> None:
        """Show ``counts``, a live mapping the receiver updates, as ``receiver``'s."""
        self._sources.append((client, receiver, counts))

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            f"{PREFIX}_agent_packets",
            "Packets the agent's receivers handled, by outcome: a CoA or ICMP listener's "
            "notices (accepted, refused, malformed, bad-authenticator, ...) and the "
            "RADIUS proxy's packets left unanswered, by reason.",
            labels=["client", "receiver", "outcome"],
        )
        for client, receiver, counts in self._sources:
            for outcome, count in sorted(counts.items()):
                family.add_metric([client, receiver, outcome], count)
        yield family
