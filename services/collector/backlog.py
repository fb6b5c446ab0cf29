"""Requests in flight inside a server, from its Status-Server counters (the ``outstanding`` part).

FreeRADIUS 3.2 counts an Access-Request in ``Total-Access-Requests`` when it
reads it, but its response in ``Total-Auth-Responses`` only when it
forgets the request, ``cleanup_delay`` seconds after answering it
(``request_stats_final`` runs when the request is deleted). Every
Status-Server it reads is an Access-Request that is never a response, and
so are duplicates, malformed, invalid and dropped requests (each with its
own ``Total-Auth-*`` counter). So, with ``A`` the requests that can be
answered (Access-Requests less those counters and less the collector's own
Status-Server probes) and ``E`` those of them not yet counted as answered::

    E(t) = requests in flight + requests answered in the last cleanup_delay
         + a constant (what happened before the collector looked)

and the level ``E(t) - (A(t) - A(t - cleanup_delay))`` is the requests in
flight plus that constant. The constant is taken as the lowest level seen in
the last ``baseline_s``, at the price of reading a backlog that lasts
longer than that as a rise that has passed. The figure is therefore a rise
of the backlog, which is what an onset is; a slowdown shows here one
``cleanup_delay`` after it begins, and the latency probes see it sooner.

Status-Servers sent by anyone else (a proxy's checks of a zombie home
server, a monitoring tool reading the statistics) are requests that are
never answered too, and no counter tells them apart: FreeRADIUS counts every
packet its auth socket reads in ``Total-Access-Requests``
(``auth_socket_recv``) and never the reply to a Status-Server as a response
(``request_stats_final``). A burst of them raises the constant once, and the
baseline forgets it within ``baseline_s``; a steady stream of ``r`` a second
raises the level ``r`` every second, so the lowest level of the last
``baseline_s`` stays ``r * baseline_s`` below it for as long as the stream
lasts: a monitor reading a reference server's statistics 4 times a second
reads as 40 requests in flight, idle or not.

What is in flight is held by a worker thread or waits in the queue, so the
estimate is capped at what the server can hold (``cap``, from the caller):
its busy threads plus its queue when it reports how many of its threads are
busy (the reference server does; FreeRADIUS from 3.2.2), else all its
threads plus its queue. That cap is what keeps such a stream from reading
as a backlog on an idle server; where only the looser one is known, the
stream still reads as up to ``r * baseline_s``. (A request proxied to a home
server is held by neither, so a proxying server's backlog is under-read.)
Clients that send in lock-step put a burst in flight at one instant
that is gone the next: the figure reported is the lowest estimate of the
last ``SMOOTH_S``, so that only a backlog that lasts counts. Little's law
turns it into time: in flight / arrival rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

REQUESTS = "FreeRADIUS-Total-Access-Requests"
RESPONSES = "FreeRADIUS-Total-Auth-Responses"
NEVER_ANSWERED = (
    "FreeRADIUS-Total-Auth-Duplicate-Requests",
    "FreeRADIUS-Total-Auth-Malformed-Requests",
    "FreeRADIUS-Total-Auth-Invalid-Requests",
    "FreeRADIUS-Total-Auth-Dropped-Requests",
    "FreeRADIUS-Total-Auth-Unknown-Types",
    "FreeRADIUS-Total-Auth-Conflicts",
)
"""Counters of Access-Requests that are counted as requests and never as responses."""

BASELINE_S = 10.0
SMOOTH_S = 1.0
"""The reported figure is the lowest estimate of this many seconds (a backlog that lasts)."""


@dataclass(frozen=True)
class Backlog:
    """Requests in flight and the time in the server they imply, or why unknown."""

    outstanding: int | None = None
    latency_s: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class _Point:
    at: float
    arrivals: int
    unanswered: int


class BacklogTracker:
    """Turns one server's successive counters into its requests in flight (pure, no clock)."""

    def __init__(
        self, cleanup_delay_s: float, baseline_s: float = BASELINE_S, smooth_s: float = SMOOTH_S
    ) -> None:
        if cleanup_delay_s < 0 or baseline_s <= 0 or smooth_s < 0:
            raise ValueError(
                "cleanup_delay_s and smooth_s must not be negative, baseline_s must be positive"
            )
        self.cleanup_delay_s = cleanup_delay_s
        self.baseline_s = baseline_s
        self.smooth_s = smooth_s
        self._points: deque[_Point] = deque()
        self._levels: deque[tuple[float, int]] = deque()
        self._estimates: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        """Forget the history (the server restarted, or a counter went down)."""
        self._points.clear()
        self._levels.clear()
        self._estimates.clear()

    def update(
        self,
        at: float,
        counters: dict[str, int],
        own_status_probes: int,
        cap: int | None = None,
    ) -> Backlog:
        """The backlog after the counters read at ``at``.

        ``own_status_probes`` is how many Status-Server requests the
        collector has sent the server so far; ``cap`` the most it can hold in
        flight (busy threads, or all its threads, plus its queue), when known.
        """
        requests = counters.get(REQUESTS)
        responses = counters.get(RESPONSES)
        if requests is None or responses is None:
            return Backlog()  # the sample already says which totals the reply lacks
        never = sum(counters.get(name, 0) for name in NEVER_ANSWERED)
        arrivals = requests - never - own_status_probes
        point = _Point(at, arrivals, arrivals - responses)
        if self._points and (arrivals < self._points[-1].arrivals or at <= self._points[-1].at):
            self.reset()
        self._points.append(point)
        while len(self._points) > 2 and self._points[1].at <= at - self.cleanup_delay_s:
            self._points.popleft()
        recent = self._arrivals_since(at - self.cleanup_delay_s)
        if recent is None:
            return Backlog(
                note=f"outstanding: needs {self.cleanup_delay_s:g}s of counters "
                "(the server's cleanup_delay) first"
            )
        level = point.unanswered - recent
        self._levels.append((at, level))
        while self._levels and self._levels[0][0] < at - self.baseline_s:
            self._levels.popleft()
        if len(self._levels) < 2:
            return Backlog(note="outstanding: first level of the counters, no baseline yet")
        estimate = max(0, level - min(v for _, v in self._levels))
        if cap is not None:
            estimate = min(estimate, cap)
        self._estimates.append((at, estimate))
        while self._estimates[0][0] < at - self.smooth_s:
            self._estimates.popleft()
        outstanding = min(v for _, v in self._estimates)
        return Backlog(outstanding, self._latency(outstanding))

    def _arrivals_since(self, since: float) -> int | None:
        """Arrivals after ``since``, interpolated between readings; None if too early."""
        points = self._points
        last = points[-1]
        if since >= last.at:
            return 0
        if points[0].at > since:
            return None
        for before, after in zip(points, list(points)[1:], strict=False):
            if before.at <= since <= after.at:
                span = after.at - before.at
                share = (since - before.at) / span if span > 0 else 1.0
                at_since = before.arrivals + share * (after.arrivals - before.arrivals)
                return round(last.arrivals - at_since)
        return None

    def _latency(self, outstanding: int) -> float | None:
        points = self._points
        if len(points) < 2:
            return None
        first, last = points[-2], points[-1]
        rate = (last.arrivals - first.arrivals) / (last.at - first.at)
        if rate <= 0:
            return None
        return outstanding / rate
