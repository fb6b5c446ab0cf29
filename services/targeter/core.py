"""The targeter's decisions as one function: ``(state, event, now) -> (state, events)``.

:meth:`TargeterCore.handle` takes what the targeter hears (an ``Incident``, a
``HealthReport``, a client's ``ClientStatus`` or ``Ack``) and returns the new
:class:`TargeterState` and the ``FailoverPlan`` parts to publish. An incident
older than the one tracked is dropped by raising ``Rejected``. The registry
and the latest reports are updated in place (see :class:`TargeterState`);
the decisions (incidents tracked, steps) are new values. No I/O and no
clock: the service wires it to the bus and KV, and ``what-if`` runs the same
core over a recording. Events of servers or clients it does not know never
reach it (the service's guards drop them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import msgspec

from schemas.errors import Rejected
from schemas.events import Ack, ClientStatus, Event, FailoverPlan, HealthReport, Incident
from services.runtime.config import Config
from services.runtime.placement import now_on
from services.targeter.planning import split_plan
from services.targeter.registry import ClientRecord, apply_status, merge, moved
from services.targeter.steps import Tracked, next_step, step_due, unmoved


@dataclass(frozen=True)
class TargeterState:
    """Per server the incident tracked and its steps; the client registry; the latest health.

    ``registry`` and ``reports`` are what the clients and the evaluator say, kept up to
    date in place as their events come (a statement, not a decision: as the
    evaluator's window of agents' reports). Copying them for every status would
    cost a copy of every client's record per client per second: 32 us at 10,000
    clients, each of 10,000 times a second.
    """

    tracked: Mapping[str, Tracked] = field(default_factory=dict)
    registry: dict[str, ClientRecord] = field(default_factory=dict)
    reports: dict[str, HealthReport] = field(default_factory=dict)
    heard: dict[str, float] = field(default_factory=dict)
    """When each client's latest status was stamped (in memory: statuses come every few
    seconds), whether or not it changed its record."""

    def in_incident(self) -> set[str]:
        """Servers with an incident that is opened or recovering."""
        return {sid for sid, t in self.tracked.items() if t.state != "closed"}


@dataclass(frozen=True)
class TargeterCore:
    """What the targeter decides with: the farm's config; ``source`` is written on plans."""

    config: Config
    source: str

    @cached_property
    def servers(self) -> frozenset[str]:
        """The servers of the config."""
        return frozenset(s.id for s in self.config.servers)

    def initial(self, stored: Mapping[str, ClientRecord] | None = None) -> TargeterState:
        """No incident; the registry of the config's clients, live fields from ``stored``."""
        return TargeterState(registry=merge(self.config, stored or {}))

    def handle(
        self, state: TargeterState, event: Event, now: float
    ) -> tuple[TargeterState, list[FailoverPlan]]:
        """The state after ``event`` at ``now``, and the plan parts to publish for it."""
        if isinstance(event, Incident):
            return self.on_incident(state, event, now)
        if isinstance(event, HealthReport):
            return self.on_health(state, event, now)
        if isinstance(event, ClientStatus):
            record = state.registry[event.client]
            state.heard[event.client] = max(event.time, state.heard.get(event.client, 0.0))
            return self._record(state, apply_status(record, event, self.servers)), []
        placed = now_on(event)
        if isinstance(event, Ack) and placed is not None:
            record = state.registry[event.client]
            server = placed[1]
            if server in self.servers and server != record.current:
                return self._record(state, moved(record, server, event.time)), []
        return state, []

    def on_incident(
        self, state: TargeterState, incident: Incident, now: float
    ) -> tuple[TargeterState, list[FailoverPlan]]:
        """Track ``incident``; an opening gets the first (or, on a relapse, the next) step."""
        previous = state.tracked.get(incident.server)
        if previous is not None and incident.time < previous.time:
            raise Rejected("out-of-order", f"incident {incident.incident_id}: older than stored")
        if previous is not None and (previous.incident_id, previous.state, previous.time) == (
            incident.incident_id,
            incident.state,
            incident.time,
        ):
            return state, []  # the same change again (offered again after a restart)
        tracked = Tracked(
            incident_id=incident.incident_id, state=incident.state, time=incident.time
        )
        if previous is not None and previous.incident_id == incident.incident_id:
            # the same incident changing (a relapse, a recovery): the steps go on, and the
            # clients it moved that are still away stay planned, so that a relapse does not
            # tell them again to leave a server they are not on (those readmitted since
            # are on it again, and planned anew)
            server = incident.server
            still_away = tuple(
                cid
                for cid in previous.planned
                if (record := state.registry.get(cid)) is not None and record.current != server
            )
            tracked = msgspec.structs.replace(tracked, step=previous.step, planned=still_away)
        state = replace(state, tracked={**state.tracked, incident.server: tracked})
        if incident.state != "opened":
            return state, []
        return self._plan(state, incident.server, tracked, incident.health, now)

    def on_health(
        self, state: TargeterState, report: HealthReport, now: float
    ) -> tuple[TargeterState, list[FailoverPlan]]:
        """Keep the latest health; a further step when it is due."""
        state.reports[report.server] = report
        tracked = state.tracked.get(report.server)
        if tracked is None or tracked.state != "opened":
            return state, []
        stuck = unmoved(
            report.server,
            tracked,
            state.registry,
            state.heard,
            self.config.targeter.replan_after_s,
        )
        if not step_due(
            health=report.health,
            failover_threshold=report.failover_threshold,
            last_plan_health=tracked.last_plan_health,
            last_plan_at=tracked.last_plan_at,
            now=now,
            step_interval_s=self.config.targeter.step_interval_s,
            unmoved=bool(stuck),
        ):
            return state, []
        return self._plan(state, report.server, tracked, report.health, now)

    def _plan(
        self,
        state: TargeterState,
        server: str,
        tracked: Tracked,
        fallback_health: float,
        now: float,
    ) -> tuple[TargeterState, list[FailoverPlan]]:
        step = next_step(
            server,
            tracked,
            config=self.config,
            reports=state.reports,
            registry=state.registry,
            heard=state.heard,
            in_incident=state.in_incident(),
            fallback_health=fallback_health,
            now=now,
            source=self.source,
        )
        if step is None:
            return state, []  # every client of the server has been planned away already
        plan, after = step
        state = replace(state, tracked={**state.tracked, server: after})
        return state, split_plan(plan)

    def _record(self, state: TargeterState, record: ClientRecord | None) -> TargeterState:
        if record is None:
            return state
        state.registry[record.id] = record
        return state
