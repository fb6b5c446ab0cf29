"""The evaluator's decisions as one function: ``(state, event, now) -> (state, events)``.

:meth:`EvaluatorCore.handle` takes what the evaluator hears (a
``MetricsSample``, an agent's ``ClientStatus``, a final ``ReadmitWave``) and
returns the new :class:`EvaluatorState` and the events to publish, in order:
the sample's ``HealthReport``, then an ``Incident`` when the server's machine
changed. The state is the core's, threaded through: each call updates it in
place and returns it (see :class:`EvaluatorState`). No I/O and no clock: the
service wires it to the bus and KV, and
``what-if`` runs the same core over a recording. Events of servers it does
not know never reach it (the service's guards drop them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.events import ClientStatus, Event, Incident, MetricsSample, ReadmitWave, new_id
from services.evaluator.clients import ClientsView
from services.evaluator.health import score
from services.evaluator.incidents import ServerState, Transition, close, step
from services.evaluator.reports import health_report
from services.runtime.config import EvaluatorConfig, ServerConfig


@dataclass(frozen=True)
class EvaluatorState:
    """Every server's machine, the agents' recent reports, and each server's last transition.

    ``clients`` is the window of the agents' reports, folded in as they come.
    ``transitions`` keeps the last change each machine made with why it made
    it (how many of an opening's samples were predicted); it lives in memory
    only, for tools that explain a run. The maps are updated in place by
    :meth:`EvaluatorCore.handle`, which returns the state it was given: a new
    map for every sample would copy every server's machine each time (32 us
    at 10,000 servers, each of them sampled twice a second). A caller that
    wants the state of a moment keeps a :meth:`copy`.
    """

    servers: dict[str, ServerState]
    clients: ClientsView
    transitions: dict[str, Transition] = field(default_factory=dict)

    def copy(self) -> EvaluatorState:
        """The machines and transitions as they are now (the agents' window is shared)."""
        return EvaluatorState(dict(self.servers), self.clients, dict(self.transitions))


def _fresh_id(sample: MetricsSample) -> str | None:
    return None


@dataclass(frozen=True)
class EvaluatorCore:
    """What the evaluator decides with: the health rule and the servers it scores.

    ``make_id`` names new incidents; ``report_id`` names a sample's report
    (None: a fresh id); ``source`` is written on every event.
    """

    cfg: EvaluatorConfig
    servers: Mapping[str, ServerConfig]
    source: str
    make_id: Callable[[], str] = new_id
    report_id: Callable[[MetricsSample], str | None] = _fresh_id

    def initial(self) -> EvaluatorState:
        """Every server healthy, no reports from the agents yet."""
        cfg = self.cfg
        return EvaluatorState(
            servers={sid: ServerState(server=sid) for sid in self.servers},
            clients=ClientsView(
                cfg.clients_window_s, cfg.clients_tolerance, cfg.clients_min_requests, self.servers
            ),
        )

    def handle(
        self, state: EvaluatorState, event: Event, now: float
    ) -> tuple[EvaluatorState, list[Event]]:
        """The state after ``event`` at ``now``, and the events to publish for it."""
        if isinstance(event, MetricsSample):
            return self.on_sample(state, event, now)
        if isinstance(event, ClientStatus):
            state.clients.add(event, now)
            return state, []
        if isinstance(event, ReadmitWave):
            return self.on_wave(state, event, now)
        return state, []

    def on_sample(
        self, state: EvaluatorState, sample: MetricsSample, now: float
    ) -> tuple[EvaluatorState, list[Event]]:
        """Score ``sample``, step its server's machine: its report, and an Incident on a change."""
        server = self.servers[sample.server]
        cfg = self.cfg
        result = score(sample, server, cfg, state.clients.parts(server.id, now))
        machine, transition = step(state.servers[server.id], result.health, now, cfg, self.make_id)
        report_id = self.report_id(sample)
        report = health_report(
            sample, result, machine, cfg, source=self.source, event_id=report_id, at=now
        )
        events: list[Event] = [report]
        state.servers[server.id] = machine
        if transition is None:
            return state, events
        reason = result.reason
        if transition.predicted:
            reason = f"{transition.reason}; {reason}"
        events.append(self._incident(machine, transition, reason, now))
        return self._changed(state, machine, transition), events

    def on_wave(
        self, state: EvaluatorState, wave: ReadmitWave, now: float
    ) -> tuple[EvaluatorState, list[Event]]:
        """A final wave closes its recovering incident; anything else changes nothing."""
        if not wave.final:
            return state, []
        current = state.servers[wave.server]
        health = wave.health if wave.health is not None else (current.health or 0.0)
        machine, transition = close(current, wave.incident_id, health, now)
        if transition is None:
            return state, []
        incident = self._incident(machine, transition, f"readmission finished: {wave.reason}", now)
        return self._changed(state, machine, transition), [incident]

    def _changed(
        self, state: EvaluatorState, machine: ServerState, transition: Transition
    ) -> EvaluatorState:
        state.servers[machine.server] = machine
        state.transitions[machine.server] = transition
        return state

    def _incident(
        self, machine: ServerState, transition: Transition, reason: str, now: float
    ) -> Incident:
        return Incident(
            time=now,
            source=self.source,
            incident_id=transition.incident_id,
            server=machine.server,
            state=transition.state,
            health=transition.health,
            reason=reason,
            opened_at=transition.opened_at,
            relapses=transition.relapses,
        )
