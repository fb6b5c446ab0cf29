"""What the clients see of each server: the ``clients`` part of health (pure, no clock).

Each agent's ``ClientStatus`` says, per upstream, how many requests were
answered within the client's response window and how many were not. The
view keeps those reports for ``window_s`` and scores each server by the
share of its clients' requests not answered in time, against
``tolerance``: ``1 - share / tolerance``. With fewer than ``min_requests``
requests decided in the window there is no part (too few to tell).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from schemas.events import ClientStatus
from services.evaluator.health import Parts


@dataclass(frozen=True)
class _Seen:
    at: float
    client: str
    answers: int
    timeouts: int


@dataclass(frozen=True)
class ClientsPart:
    """The clients' view of one server: headroom, and the figures behind it in words."""

    headroom: float
    detail: str


class ClientsView:
    """The agents' recent reports, folded per server."""

    def __init__(
        self,
        window_s: float,
        tolerance: float,
        min_requests: int,
        servers: Collection[str] | None = None,
    ) -> None:
        self.window_s = window_s
        self.tolerance = tolerance
        self.min_requests = min_requests
        self.servers = None if servers is None else frozenset(servers)
        self._seen: dict[str, deque[_Seen]] = {}

    def add(self, status: ClientStatus, now: float) -> None:
        """Take in one agent's report, received at ``now`` (reports on servers the view
        does not score are left out)."""
        for report in status.upstreams:
            if self.servers is not None and report.server not in self.servers:
                continue
            if report.answers or report.timeouts:
                seen = self._seen.setdefault(report.server, deque())
                seen.append(_Seen(now, status.client, report.answers, report.timeouts))
                self._forget(seen, now)

    def _forget(self, seen: deque[_Seen], now: float) -> None:
        while seen and seen[0].at <= now - self.window_s:
            seen.popleft()

    def parts(self, server: str, now: float) -> Parts | None:
        """The ``clients`` part of ``server`` at ``now`` as extra health parts, or None."""
        part = self.part(server, now)
        if part is None:
            return None
        parts = Parts()
        parts.add("clients", part.headroom, "agents", part.detail)
        return parts

    def part(self, server: str, now: float) -> ClientsPart | None:
        """The ``clients`` part of ``server`` at ``now``, or None with too few requests."""
        seen = self._seen.get(server)
        if not seen:
            return None
        self._forget(seen, now)
        answers = sum(s.answers for s in seen)
        timeouts = sum(s.timeouts for s in seen)
        decided = answers + timeouts
        if decided < self.min_requests:
            return None
        share = timeouts / decided
        clients = len({s.client for s in seen})
        late = len({s.client for s in seen if s.timeouts})
        headroom = min(1.0, max(0.0, 1 - share / self.tolerance))
        detail = (
            f"{timeouts} of {decided} requests of {clients} clients unanswered "
            f"within their response window" + (f", at {late} clients" if timeouts else "")
        )
        return ClientsPart(headroom, detail)
