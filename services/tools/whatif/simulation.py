"""What would have been decided: a recording run again through the deciding services' cores.

:func:`simulate` feeds the recorded metrics samples to the evaluator's,
targeter's and readmitter's own pure cores
(:class:`~services.evaluator.core.EvaluatorCore`,
:class:`~services.targeter.core.TargeterCore`,
:class:`~services.readmitter.core.ReadmitterCore`), each event's outputs
delivered at once to those that subscribe to them, as the bus would, and
reads the outcome off the events they publish. It keeps no decision of its
own: what it adds is the clients, which do as they are told (an Ack to the
first alternate of each move, and home on each wave), and the readmitter's
timers, woken at each sample of the server and whenever a wave falls due.

Pure and deterministic: no clock, no bus; incidents are numbered
``what-if-1``, ``what-if-2``...; a report takes its sample's id.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import (
    Ack,
    ClientStatus,
    Event,
    FailoverPlan,
    HealthReport,
    Incident,
    MetricsSample,
    ReadmitWave,
)
from services.evaluator.core import EvaluatorCore
from services.readmitter.core import ReadmitterCore, ReadmitterState, WaveDue
from services.runtime.config import Config
from services.targeter.core import TargeterCore, TargeterState
from services.tools.whatif.outcome import Outcome, WaveOutcome

logger = logging.getLogger(__name__)

SOURCE = "what-if"


@dataclass
class _IncidentLog:
    """What the simulation decided about one incident."""

    incident_id: str
    onset_at: float
    lowest: float
    reason: str = ""
    predicted: int = 0
    first_move_at: float | None = None
    moved: list[str] = field(default_factory=list)
    steps: int = 0
    waves: list[WaveOutcome] = field(default_factory=list)
    relapses: int = 0
    recovering_at: float | None = None
    closed_at: float | None = None


@dataclass
class _ServerLog:
    """What the simulation decided about one server: its incidents and lowest health."""

    incidents: list[_IncidentLog] = field(default_factory=list)
    lowest: float | None = None

    def last(self, incident_id: str | None) -> _IncidentLog | None:
        """The server's latest incident, if it is ``incident_id``."""
        log = self.incidents[-1] if self.incidents else None
        return log if log is not None and log.incident_id == incident_id else None


class _Farm:
    """The three cores wired as the bus wires the services, and clients that do as told."""

    def __init__(self, config: Config, placement: TargeterState) -> None:
        counter = itertools.count(1)
        servers = {s.id: s for s in config.servers}
        self.evaluator = EvaluatorCore(
            config.evaluator,
            servers,
            source=SOURCE,
            make_id=lambda: f"{SOURCE}-{next(counter)}",
            report_id=lambda sample: sample.id,
        )
        self.targeter = TargeterCore(config, source=SOURCE)
        self.readmitter = ReadmitterCore(config, source=SOURCE)
        self.evaluated = self.evaluator.initial()
        self.targeted = placement
        self.readmitted = ReadmitterState()
        self.logs = {sid: _ServerLog() for sid in servers}

    def status(self, status: ClientStatus) -> None:
        """An agent's recorded report: the clients part of health, as the evaluator has it."""
        self.evaluated, _ = self.evaluator.handle(self.evaluated, status, status.time)

    def sample(self, sample: MetricsSample) -> None:
        """One sample through the farm, then the server's readmitter wakes on its health."""
        self.deliver(sample, sample.time)
        self.deliver(WaveDue(server=sample.server), sample.time)

    def tick(self, until: float) -> None:
        """The readmitter's own timers up to ``until``: between samples it wakes when a
        wave falls due, deciding on the latest health, as the service's wave loop does."""
        while True:
            due = [
                (timer.wake_at, sid)
                for sid, timer in self.readmitted.timers.items()
                if timer.wake_at is not None
                and timer.wake_at <= until
                and sid in self.targeted.reports
            ]
            if not due:
                return
            at, sid = min(due)
            self.deliver(WaveDue(server=sid), at)

    def deliver(self, event: Event | WaveDue, now: float) -> None:
        """``event`` to each core that takes it, in turn, each output delivered at once."""
        if not isinstance(event, WaveDue):
            self.observe(event, now)
        if isinstance(event, MetricsSample | ReadmitWave):
            self.evaluated, out = self.evaluator.handle(self.evaluated, event, now)
            self._each(out, now)
        if isinstance(event, HealthReport | Incident | FailoverPlan | Ack | WaveDue):
            before = self.readmitted.readmissions
            self.readmitted, waves = self.readmitter.handle(self.readmitted, event, now)
            self._each(waves, now)
            if isinstance(event, Ack) and self.readmitted.readmissions is not before:
                # a client heard home wakes its server's wave loop, as in the service
                self.deliver(WaveDue(server=event.server), now)
        if isinstance(event, HealthReport | Incident | Ack):
            self.targeted, plans = self.targeter.handle(self.targeted, event, now)
            self._each(plans, now)
        self._each(self.clients(event, now), now)

    def _each(self, events: Sequence[Event], now: float) -> None:
        for event in events:
            self.deliver(event, now)

    def clients(self, event: Event | WaveDue, now: float) -> list[Ack]:
        """What the clients answer: each moved goes to its first alternate, each readmitted home."""
        if isinstance(event, FailoverPlan):
            moves = [(move.client, move.alternates[0]) for move in event.moves]
            return [_ack(event.plan_id, event.server, c, to, now) for c, to in moves]
        if isinstance(event, ReadmitWave):
            return [_ack(event.id, event.server, c, event.server, now) for c in event.clients]
        return []

    def observe(self, event: Event, now: float) -> None:
        """The outcome, read off the events the cores publish."""
        if isinstance(event, HealthReport):
            log = self.logs[event.server]
            log.lowest = event.health if log.lowest is None else min(log.lowest, event.health)
            incident = log.last(event.incident_id)
            if incident is not None:
                incident.lowest = min(incident.lowest, event.health)
        elif isinstance(event, Incident):
            self._incident(event, now)
        elif isinstance(event, FailoverPlan):
            incident = self.logs[event.server].last(event.incident_id)
            if incident is not None:
                clients = [m.client for m in event.moves]
                incident.steps += event.part == 1
                incident.moved.extend(c for c in clients if c not in incident.moved)
                if clients and incident.first_move_at is None:
                    incident.first_move_at = now
        elif isinstance(event, ReadmitWave):
            incident = self.logs[event.server].last(event.incident_id)
            if incident is not None:
                incident.waves.append(
                    WaveOutcome(
                        at=now, wave=event.wave, clients=list(event.clients), final=event.final
                    )
                )

    def _incident(self, event: Incident, now: float) -> None:
        log = self.logs[event.server]
        if event.state == "opened" and event.relapses == 0:
            transition = self.evaluated.transitions[event.server]
            log.incidents.append(
                _IncidentLog(
                    incident_id=event.incident_id,
                    onset_at=now,
                    lowest=event.health,
                    reason=transition.reason,
                    predicted=transition.predicted,
                )
            )
        incident = log.last(event.incident_id)
        if incident is None:
            return
        incident.relapses = max(incident.relapses, event.relapses)
        if event.state == "recovering" and incident.recovering_at is None:
            incident.recovering_at = now
        if event.state == "closed":
            incident.closed_at = now


def _ack(notice_id: str, server: str, client: str, now_on: str, now: float) -> Ack:
    """A client's Ack: it did as told and is on ``now_on``."""
    return Ack(
        time=now,
        source=SOURCE,
        notice_id=notice_id,
        client=client,
        server=server,
        accepted=True,
        now_on=now_on,
    )


def _placement(config: Config, events: Sequence[Event], before: float) -> TargeterState:
    """The targeter's registry of the config's clients, placed by the recorded ClientStatus
    events before ``before`` as the targeter places them."""
    targeter = TargeterCore(config, source=SOURCE)
    state = targeter.initial()
    statuses = sorted(
        (e for e in events if isinstance(e, ClientStatus) and e.time < before),
        key=lambda e: e.time,
    )
    unknown = 0
    for status in statuses:
        if status.client not in state.registry:
            unknown += 1
            continue
        state, _ = targeter.handle(state, status, status.time)
    if unknown:
        logger.warning("what-if: ignored %d statuses of clients not in the config", unknown)
    return state


def simulate(
    config: Config,
    events: Sequence[Event],
    server: str,
    *,
    placement_before: float | None = None,
    until: float | None = None,
) -> Outcome:
    """What the services would have decided with ``config``, for the first incident of ``server``.

    Every MetricsSample (of every server of the config, in time order) goes
    through the cores: scored and stepped through its server's incident
    machine; an incident that opens is planned, later samples take further
    steps by the targeter's rule, and a recovering one is readmitted in waves
    until the final wave closes it. Clients start where the recorded
    ClientStatus events before ``placement_before`` put them (default: before
    the first sample), then move by the simulation's own plans and waves.
    Between samples, and after the last one up to ``until`` (default: the
    last event), the readmitter wakes when a wave falls due, as its wave loop
    does. Raises ValueError if ``server`` is not in the config.
    """
    known = {s.id for s in config.servers}
    if server not in known:
        raise ValueError(f"server {server!r} is not in the config")
    samples = sorted((e for e in events if isinstance(e, MetricsSample)), key=lambda e: e.time)
    skipped = sum(1 for s in samples if s.server not in known)
    if skipped:
        logger.warning("what-if: skipped %d samples of servers not in the config", skipped)
    samples = [s for s in samples if s.server in known]
    before = (
        placement_before
        if placement_before is not None
        else (samples[0].time if samples else math.inf)
    )
    farm = _Farm(config, _placement(config, events, before))
    statuses: list[MetricsSample | ClientStatus] = [
        e for e in events if isinstance(e, ClientStatus)
    ]
    for event in sorted([*samples, *statuses], key=lambda e: e.time):
        if isinstance(event, ClientStatus):
            farm.status(event)
            continue
        farm.tick(event.time)
        farm.sample(event)
    farm.tick(until if until is not None else max((e.time for e in events), default=0.0))

    log = farm.logs[server]
    cfg = config.evaluator
    thresholds: dict[str, Any] = {
        "failover_threshold": cfg.failover_threshold,
        "connection_threshold": cfg.connection_threshold,
        "failover_samples": cfg.failover_samples,
        "predict_horizon_s": cfg.predict_horizon_s,
    }
    if not log.incidents:
        return Outcome(
            server=server, incident_id=None, onset_at=None, lowest_health=log.lowest, **thresholds
        )
    first = log.incidents[0]
    return Outcome(
        server=server,
        incident_id=first.incident_id,
        onset_at=first.onset_at,
        lowest_health=first.lowest,
        clients_moved=list(first.moved),
        steps=first.steps,
        waves=list(first.waves),
        re_overloads=first.relapses,
        recovering_at=first.recovering_at,
        closed_at=first.closed_at,
        further_incidents=len(log.incidents) - 1,
        first_move_at=first.first_move_at,
        onset_reason=first.reason,
        onset_predicted=first.predicted,
        **thresholds,
    )
