"""What one client saw of each upstream since its previous status (plain data, no I/O).

The proxy and the agent's own load both record here how each request to
each server ended; the agent drains it into the ``upstreams`` and
``changes`` of its next ``ClientStatus``, so the evaluator sees the server
as its clients do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.events import UpstreamChange, UpstreamReport
from services.runtime.quantiles import percentile


@dataclass
class _Tally:
    answers: int = 0
    timeouts: int = 0
    resent: int = 0
    changes: int = 0
    latencies: list[float] = field(default_factory=list)


class Tallies:
    """Per-server outcomes of one client's requests, and its own failovers, until drained."""

    def __init__(self) -> None:
        self._by_server: dict[str, _Tally] = {}
        self._changes: list[UpstreamChange] = []

    def _of(self, server: str) -> _Tally:
        tally = self._by_server.get(server)
        if tally is None:
            tally = self._by_server[server] = _Tally()
        return tally

    def answered(self, server: str, latency_s: float) -> None:
        """A request to ``server`` was answered within the response window."""
        tally = self._by_server.get(server)
        if tally is None:
            tally = self._by_server[server] = _Tally()
        tally.answers += 1
        tally.latencies.append(latency_s)

    def timed_out(self, server: str) -> None:
        """A request to ``server`` got no answer within the response window."""
        self._of(server).timeouts += 1

    def resent(self, server: str) -> None:
        """A request ``server`` left unanswered was sent to the next upstream."""
        self._of(server).resent += 1

    def changed(self, change: UpstreamChange) -> None:
        """The client changed its mind about an upstream by itself."""
        self._of(change.server).changes += 1
        self._changes.append(change)

    def drain(
        self, states: Mapping[str, str], conversations: Mapping[str, int] | None = None
    ) -> tuple[list[UpstreamReport], list[UpstreamChange]]:
        """The reports of every server seen since the last drain (and of every one in
        ``states``, with the EAP conversations each holds), with the changes; starts afresh."""
        held = conversations or {}
        reports = []
        for server in dict.fromkeys([*states, *self._by_server]):
            tally = self._by_server.get(server, _Tally())
            values = sorted(tally.latencies)
            state = states.get(server, "alive")
            reports.append(
                UpstreamReport(
                    server=server,
                    state="zombie" if state == "zombie" else "dead" if state == "dead" else "alive",
                    answers=tally.answers,
                    timeouts=tally.timeouts,
                    resent=tally.resent,
                    p50_s=percentile(values, 0.5) if values else None,
                    p90_s=percentile(values, 0.9) if values else None,
                    max_s=values[-1] if values else None,
                    changes=tally.changes,
                    conversations=held.get(server, 0),
                )
            )
        changes, self._changes = self._changes, []
        self._by_server.clear()
        return reports, changes
