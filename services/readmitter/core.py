"""The readmitter's decisions as one pure function: ``(state, event, now) -> (state, events)``.

:meth:`ReadmitterCore.handle` takes what the readmitter hears (a
``HealthReport``, an ``Incident``, a ``FailoverPlan``, a client's
``ReadmitRequest`` or ``ClientStatus``) and :class:`WaveDue`, the wave loop of a server waking,
and returns the new :class:`ReadmitterState` and the ``ReadmitWave``s to
publish. Every ReadmitWave is built here, by :meth:`ReadmitterCore.wave`.
After a :class:`WaveDue` the state's ``timers`` say when that server's loop
wakes next (None: it stops). No I/O and no clock: the service wires it to the
bus, KV and its wave loops, and ``what-if`` runs the same core over a
recording. Events of servers or clients it does not know never reach it (the
service's guards drop them). The rules themselves are in
:mod:`services.readmitter.waves`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import msgspec

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverPlan,
    HealthReport,
    Incident,
    ReadmitRequest,
    ReadmitWave,
)
from services.readmitter import sizing, waves
from services.readmitter.waves import Readmission
from services.runtime.config import Config
from services.runtime.placement import homes

REFUSED_AS_STALE = frozenset({"old-seq", "expired"})
"""An agent's reasons for refusing a notice that a newer one cures (services/agent/client.py);
a refusal for any other reason would be refused again, so it does not bring a wave again."""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The latest health of a server and the connection threshold it came with."""

    health: float
    connection_threshold: float


class WaveDue(msgspec.Struct, frozen=True, kw_only=True):
    """The wave loop of ``server`` woke: send what is due (not an event on the bus)."""

    server: str


class Timer(msgspec.Struct, frozen=True, kw_only=True):
    """When a server's wave loop wakes next (None: it stops), and why, in words.

    ``paused`` says the reason is a pause (health, or the incident's state).
    """

    wake_at: float | None
    reason: str
    paused: bool = False


@dataclass(frozen=True)
class ReadmitterState:
    """Each server's readmission, its latest health, and its wave loop's timer; the
    request rates the clients' statuses measured away from their home (which size adaptive
    waves: the load a client brings back is the one it carries where it is)."""

    readmissions: Mapping[str, Readmission] = field(default_factory=dict)
    health: Mapping[str, Health] = field(default_factory=dict)
    timers: Mapping[str, Timer] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadmitterCore:
    """What the readmitter decides with: the config (settings, clients' homes) and ``source``."""

    config: Config
    source: str

    @cached_property
    def homes(self) -> dict[str, str]:
        """Each client of the config and its home server."""
        return homes(self.config)

    @cached_property
    def configured_rates(self) -> dict[str, float]:
        """Each client's request rate as the config expects it (0: not known)."""
        return {c.id: c.own_rate for c in self.config.clients}

    def rate(self, state: ReadmitterState, client: str) -> float:
        """``client``'s request rate: measured by its agent, else configured (0: unknown)."""
        return state.rates.get(client, self.configured_rates.get(client, 0.0))

    def handle(
        self, state: ReadmitterState, event: Event | WaveDue, now: float
    ) -> tuple[ReadmitterState, list[ReadmitWave]]:
        """The state after ``event`` at ``now``, and the waves to publish for it."""
        if isinstance(event, WaveDue):
            return self.wave_due(state, event.server, now)
        if isinstance(event, HealthReport):
            latest = Health(health=event.health, connection_threshold=event.connection_threshold)
            state = replace(state, health={**state.health, event.server: latest})
            current = state.readmissions.get(event.server)
            if current is not None:
                settle_s = self.config.readmitter.settle_s
                observed = waves.observe(current, event.health, now=now, settle_s=settle_s)
                state = self._set(state, observed)
            return self._closed_by_report(state, event), []
        if isinstance(event, Incident):
            current = state.readmissions.get(event.server)
            after = waves.on_incident(
                current, server=event.server, incident_id=event.incident_id, state=event.state
            )
            return self._set(state, after), []
        if isinstance(event, FailoverPlan):
            current = state.readmissions.get(event.server)
            # a client homed elsewhere (on this server by its own failover) goes home, not
            # back here: no wave of this server can readmit it (the notifier would drop it)
            clients = [m.client for m in event.moves if self.homes.get(m.client) == event.server]
            after = waves.record_plan(
                current, server=event.server, incident_id=event.incident_id, clients=clients
            )
            return self._set(state, after), []
        if isinstance(event, ReadmitRequest):
            return self.on_request(state, event, now)
        if isinstance(event, ClientStatus):
            # kept only while away (what a wave would bring back), so the statuses of the
            # clients at home, most of them most of the time, copy nothing
            rate = event.rate
            if (
                rate is not None
                and event.current != self.homes.get(event.client)
                and state.rates.get(event.client) != rate
            ):
                state = replace(state, rates={**state.rates, event.client: rate})
            state = self.on_status(state, event)
            return self.heard_on(state, event.client, event.current), []
        if isinstance(event, Ack):
            if not event.accepted and event.reason in REFUSED_AS_STALE:
                return self.refused(state, event), []
            return self.heard_on(state, event.client, event.now_on), []
        if isinstance(event, Delivery):
            return self.on_delivery(state, event), []
        return state, []

    def heard_on(self, state: ReadmitterState, client: str, server: str) -> ReadmitterState:
        """``client`` says it is on ``server``: if that is its home, it has returned."""
        home = self.homes.get(client)
        current = state.readmissions.get(home) if home is not None else None
        if current is None or server != home:
            return state
        return self._set(state, waves.arrived(current, client))

    def refused(self, state: ReadmitterState, ack: Ack) -> ReadmitterState:
        """A client on its way home refused a notice of its home server as stale: a wave's
        notice sent again after a restart of the notifier, which reached it after a newer
        notice (a plan of the server it had moved to, say). It did not return: away again,
        for a later wave, whose notice is newer."""
        current = state.readmissions.get(ack.server)
        if current is None or self.homes.get(ack.client) != ack.server:
            return state
        return self._set(state, waves.not_returned(current, ack.client))

    def on_delivery(self, state: ReadmitterState, delivery: Delivery) -> ReadmitterState:
        """A readmission notice the notifier gave up on: its client is away again."""
        if delivery.outcome != "failed" or not delivery.notice_type.startswith("notice.readmit"):
            return state
        current = state.readmissions.get(delivery.server)
        if current is None or self.homes.get(delivery.client) != delivery.server:
            return state
        return self._set(state, waves.not_returned(current, delivery.client))

    def _closed_by_report(self, state: ReadmitterState, report: HealthReport) -> ReadmitterState:
        """After its final wave, an incident the evaluator reports healthy again is closed,
        whether or not its ``Incident`` closed was heard (it may have gone out while this
        readmitter was down): the final wave is then not sent again."""
        current = state.readmissions.get(report.server)
        if current is None or not current.final_sent or current.state != "recovering":
            return state
        if report.state != "healthy":
            return state
        closed = waves.on_incident(
            current, server=report.server, incident_id=current.incident_id, state="closed"
        )
        return self._set(state, closed)

    def on_status(self, state: ReadmitterState, status: ClientStatus) -> ReadmitterState:
        """A client says where it is. One of a server in incident, away from it, that no plan
        this readmitter heard moved (a plan missed while it was down) is away all the same, so
        it is readmitted in a wave and the incident does not close while it is away."""
        home = self.homes.get(status.client)
        if home is None or not status.current or status.current == home:
            return state
        current = state.readmissions.get(home)
        if current is None or current.state == "closed" or current.final_sent:
            return state
        if status.client in current.away_set or status.client in current.readmitted_set:
            return state
        after = waves.record_plan(
            current, server=home, incident_id=current.incident_id, clients=[status.client]
        )
        return self._set(state, after)

    def on_request(
        self, state: ReadmitterState, request: ReadmitRequest, now: float
    ) -> tuple[ReadmitterState, list[ReadmitWave]]:
        """A client's own request to go home: a wave 0 that grants or defers it."""
        server, client = request.server, request.client
        current = state.readmissions.get(server)
        health = state.health.get(server)
        settings = self.config.readmitter
        answer, after = waves.answer_request(
            current,
            client=client,
            health=health.health if health else None,
            connection_threshold=self.threshold(state, server),
            now=now,
            wave_interval_s=settings.wave_interval_s,
            retry_after_s=settings.retry_after_s,
            wave_capacity=(
                settings.wave_size if settings.sizing == "fixed" else settings.max_wave_size
            ),
        )
        incident_id = current.incident_id if current is not None else ""
        if answer.granted:
            wave = self.wave(
                state,
                server,
                incident_id,
                0,
                now,
                clients=[client],
                reason=f"requested by {client}: {answer.reason}",
            )
        else:
            wave = self.wave(
                state,
                server,
                incident_id,
                0,
                now,
                deferred=[client],
                retry_after_s=answer.retry_after_s,
                reason=f"requested by {client}, deferred: {answer.reason}",
            )
        if after is not None:
            state = self._set(state, after)
        return state, [wave]

    def wave_due(
        self, state: ReadmitterState, server: str, now: float
    ) -> tuple[ReadmitterState, list[ReadmitWave]]:
        """What is due for ``server`` now: a wave, a wait, a pause, or the end of its loop."""
        settings = self.config.readmitter
        current = state.readmissions.get(server)
        if current is None or current.state != "recovering":
            why = f"incident is {current.state}" if current else "no incident"
            return self._timer(state, server, Timer(wake_at=None, reason=why)), []
        health = state.health.get(server)
        latest = health.health if health else None
        threshold = self.threshold(state, server)
        away_loads: list[float] = []

        def size() -> sizing.Size | sizing.Measuring:
            # only once a wave of clients may go: the queue and its loads are of every
            # client away, the rest of a loop's wake-ups reads none of them
            if latest is None or not current.away:
                return sizing.Size(clients=1, reason="")
            measuring = sizing.measuring(current.costs, settings=settings)
            if measuring is not None:
                return measuring
            order = waves.queue(current)
            away_loads[:] = sizing.loads(order, {c: self.rate(state, c) for c in order})
            return sizing.next_size(
                current.costs,
                settings=settings,
                health=latest,
                connection_threshold=threshold,
                away_loads=away_loads,
            )

        decision = waves.next_wave(
            current,
            now=now,
            health=latest,
            connection_threshold=threshold,
            size=size,
            wave_interval_s=settings.wave_interval_s,
            confirm_timeout_s=settings.confirm_timeout_s,
        )
        if isinstance(decision, waves.Done):
            return self._timer(state, server, Timer(wake_at=None, reason=decision.reason)), []
        if isinstance(decision, waves.Wait):
            timer = Timer(wake_at=decision.until, reason=decision.reason)
            return self._timer(state, server, timer), []
        if isinstance(decision, waves.Paused):
            wake_at = now + max(settings.wave_interval_s, 0.1)
            timer = Timer(wake_at=wake_at, reason=decision.reason, paused=True)
            return self._timer(state, server, timer), []
        brought = sum(away_loads[: len(decision.clients)]) if decision.clients else 0.0
        # the level the wave starts from: the mean since the wave before, if measured
        before = current.costs[-1].health_after if current.costs else None
        sent = waves.record_wave(
            current, decision, now=now, load=brought, health=latest if before is None else before
        )
        # a client homed elsewhere gets no readmission notice to this server (the notifier
        # drops it): nothing to wait for
        if any(self.homes.get(c) != server for c in sent.returning):
            returning = tuple(c for c in sent.returning if self.homes.get(c) == server)
            sent = msgspec.structs.replace(sent, returning=returning)
        # after the final wave too: it goes again until the incident is known closed
        next_at = now + settings.wave_interval_s
        state = self._timer(self._set(state, sent), server, Timer(wake_at=next_at, reason=""))
        wave = self.wave(
            state,
            server,
            current.incident_id,
            decision.wave,
            now,
            clients=list(decision.clients),
            final=decision.final,
            reason=decision.reason,
        )
        return state, [wave]

    def wave(
        self,
        state: ReadmitterState,
        server: str,
        incident_id: str,
        number: int,
        now: float,
        *,
        clients: list[str] | None = None,
        deferred: list[str] | None = None,
        retry_after_s: float = 0.0,
        final: bool = False,
        reason: str,
    ) -> ReadmitWave:
        """The ReadmitWave ``number`` of ``server`` at ``now``, with its latest health."""
        health = state.health.get(server)
        return ReadmitWave(
            time=now,
            source=self.source,
            incident_id=incident_id,
            server=server,
            wave=number,
            clients=clients or [],
            deferred=deferred or [],
            retry_after_s=retry_after_s,
            health=health.health if health else None,
            final=final,
            reason=reason,
        )

    def threshold(self, state: ReadmitterState, server: str) -> float:
        """The connection threshold of ``server``'s latest report, else the config's."""
        health = state.health.get(server)
        if health is not None:
            return health.connection_threshold
        return self.config.evaluator.connection_threshold

    def _set(self, state: ReadmitterState, readmission: Readmission) -> ReadmitterState:
        if readmission == state.readmissions.get(readmission.server):
            return state
        return replace(state, readmissions={**state.readmissions, readmission.server: readmission})

    def _timer(self, state: ReadmitterState, server: str, timer: Timer) -> ReadmitterState:
        return replace(state, timers={**state.timers, server: timer})
