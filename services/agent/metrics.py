"""The agent's /metrics: how each client's requests fared per upstream, and its own failovers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
