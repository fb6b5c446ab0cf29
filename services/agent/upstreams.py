"""The upstream pool of one proxied client: which server it uses and which are zombies (pure).

Like a FreeRADIUS ``home_server_pool`` of type ``fail-over``: the upstreams
are ordered (the client's home, then its configured alternates, then any
server a notice named that the config did not). The *preferred* upstream is
the one verified notices chose (``ClientState.current``); the one *in use*
is the preferred one while it is alive, else the next alive one in order
after it (wrapping round). When none is alive the preferred one is used
anyway, as the only guess left.

Each upstream is ``alive``, ``zombie`` or ``dead``. An alive upstream
becomes a zombie when a request sent to it went unanswered for
``response_window_s`` and no answer came from it since that request was
sent. A zombie is not used; it is probed with Status-Server every
``check_interval_s``, and a probe left unanswered makes it ``dead`` (still
probed). ``answers_to_alive`` consecutive probe answers bring a zombie or a
dead upstream back to ``alive``; a missed probe starts the count again.

Every time is the caller's clock (a monotonic one in the proxy), passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.events import Endpoint

UpstreamState = Literal["alive", "zombie", "dead"]

WINDOW_SLACK_S = 0.001
"""A timer may fire this much early: a request that waited the window less this waited it."""


@dataclass
class Upstream:
    """One upstream server and what the pool knows of it.

    ``last_answer`` is when its last answer came (to a request or a probe);
    ``answers`` counts consecutive probe answers while it is not alive;
    ``next_probe`` is when it is due for a probe, None while alive;
    ``probing`` marks a probe sent and not settled yet.
    """

    endpoint: Endpoint
    state: UpstreamState = "alive"
    since: float = 0.0
    last_answer: float | None = None
    answers: int = 0
    next_probe: float | None = None
    probing: bool = False


@dataclass(frozen=True)
class Transition:
    """An upstream changed state, and why."""

    server: str
    before: UpstreamState
    after: UpstreamState
    reason: str


class UpstreamPool:
    """Ordered upstreams of one client, their states, and the one in use."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        response_window_s: float,
        check_interval_s: float,
        answers_to_alive: int,
    ) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one upstream")
        if response_window_s <= 0 or check_interval_s <= 0:
            raise ValueError("response_window_s and check_interval_s must be positive")
        if answers_to_alive < 1:
            raise ValueError("answers_to_alive must be at least 1")
        self.response_window_s = response_window_s
        self.check_interval_s = check_interval_s
        self.answers_to_alive = answers_to_alive
        self._upstreams: dict[str, Upstream] = {}
        for endpoint in endpoints:
            if endpoint.server in self._upstreams:
                raise ValueError(f"upstream {endpoint.server!r} appears twice")
            self._upstreams[endpoint.server] = Upstream(endpoint)
        self.preferred = endpoints[0].server

    # --- looking -------------------------------------------------------

    @property
    def order(self) -> list[Endpoint]:
        """Every upstream, in fail-over order."""
        return [u.endpoint for u in self._upstreams.values()]

    def upstream(self, server: str) -> Upstream:
        """The record of ``server``; KeyError if the pool does not hold it."""
        return self._upstreams[server]

    def state(self, server: str) -> UpstreamState:
        return self._upstreams[server].state

    def states(self) -> dict[str, UpstreamState]:
        """Each upstream's state, in order."""
        return {sid: u.state for sid, u in self._upstreams.items()}

    def candidates(self) -> list[Upstream]:
        """Every upstream in the order it would be tried: the preferred one, then the
        ones after it, wrapping round to those before it."""
        ups = list(self._upstreams.values())
        start = next(i for i, u in enumerate(ups) if u.endpoint.server == self.preferred)
        return ups[start:] + ups[:start]

    def in_use(self) -> Endpoint:
        """The preferred upstream if alive, else the next alive one; the preferred one if
        none is alive."""
        for upstream in self.candidates():
            if upstream.state == "alive":
                return upstream.endpoint
        return self._upstreams[self.preferred].endpoint

    def retry_target(self, failed: str) -> Endpoint | None:
        """Where a request that ``failed`` to get an answer goes once more: the first
        alive upstream other than ``failed``, in the order of :meth:`candidates`."""
        for upstream in self.candidates():
            if upstream.state == "alive" and upstream.endpoint.server != failed:
                return upstream.endpoint
        return None

    # --- notices -------------------------------------------------------

    def prefer(self, endpoint: Endpoint) -> None:
        """Make ``endpoint`` the preferred upstream (a verified notice chose it).

        A server the pool does not hold is added at the end of the order, alive;
        a known one takes the notice's address if that differs.
        """
        upstream = self._upstreams.get(endpoint.server)
        if upstream is None:
            self._upstreams[endpoint.server] = Upstream(endpoint)
        elif upstream.endpoint != endpoint:
            upstream.endpoint = endpoint
        self.preferred = endpoint.server

    def gone(self, server: str, now: float) -> bool:
        """``server`` is dead and nothing has come from it within the response window.

        A dead upstream that still answers (a full thread pool that lets Status-
        Server wait, but answers the requests it has) can carry on the EAP
        conversations it holds; a gone one cannot.
        """
        upstream = self._upstreams.get(server)
        if upstream is None or upstream.state != "dead":
            return False
        last = upstream.last_answer
        return last is None or now - last > self.response_window_s

    # --- requests ------------------------------------------------------

    def answered(self, server: str, now: float) -> None:
        """An answer came from ``server`` at ``now`` (to a request it was sent)."""
        upstream = self._upstreams.get(server)
        if upstream is not None:
            upstream.last_answer = now

    def unanswered(self, server: str, sent_at: float, now: float) -> Transition | None:
        """A request sent to ``server`` at ``sent_at`` still has no answer at ``now``.

        The upstream becomes a zombie if it is alive, the response window is
        over, and nothing came from it since ``sent_at``.
        """
        upstream = self._upstreams.get(server)
        if upstream is None or upstream.state != "alive":
            return None
        if now - sent_at < self.response_window_s - WINDOW_SLACK_S:
            return None
        if upstream.last_answer is not None and upstream.last_answer >= sent_at:
            return None
        return self._become(
            upstream,
            "zombie",
            now,
            f"no answer in {self.response_window_s:g}s",
            next_probe=now + self.check_interval_s,
        )

    # --- probes --------------------------------------------------------

    def probes_due(self, now: float) -> list[Endpoint]:
        """The upstreams to probe now; each is marked as being probed, and its next
        probe is due ``check_interval_s`` from now."""
        due = []
        for upstream in self._upstreams.values():
            if upstream.state == "alive" or upstream.probing:
                continue
            if upstream.next_probe is not None and upstream.next_probe <= now:
                upstream.probing = True
                upstream.next_probe = now + self.check_interval_s
                due.append(upstream.endpoint)
        return due

    def next_probe_at(self) -> float | None:
        """When the next probe is due, or None when every upstream is alive."""
        times = [
            u.next_probe
            for u in self._upstreams.values()
            if u.state != "alive" and u.next_probe is not None and not u.probing
        ]
        return min(times) if times else None

    def probed(self, server: str, answered: bool, now: float) -> Transition | None:
        """The outcome of a probe of ``server``: answered or not, at ``now``."""
        upstream = self._upstreams.get(server)
        if upstream is None:
            return None
        upstream.probing = False
        if answered:
            upstream.last_answer = now
        if upstream.state == "alive":
            return None
        if not answered:
            upstream.answers = 0
            if upstream.state == "zombie":
                return self._become(
                    upstream, "dead", now, "probe unanswered", next_probe=upstream.next_probe
                )
            return None
        upstream.answers += 1
        if upstream.answers >= self.answers_to_alive:
            return self._become(
                upstream, "alive", now, f"{upstream.answers} probes answered", next_probe=None
            )
        return None

    def _become(
        self,
        upstream: Upstream,
        state: UpstreamState,
        now: float,
        reason: str,
        *,
        next_probe: float | None,
    ) -> Transition:
        before = upstream.state
        upstream.state = state
        upstream.since = now
        upstream.answers = 0
        upstream.next_probe = next_probe
        return Transition(upstream.endpoint.server, before, state, reason)
