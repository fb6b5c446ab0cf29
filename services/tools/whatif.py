"""`aaa-failover what-if`: a recorded incident replayed through the decisions with other settings.

Pure and deterministic: no clock, no bus, no random ids. :func:`apply_settings`
makes the settings, :func:`recorded` reads what the live services decided
from the recorded events, :func:`simulate` decides again from the recorded
metrics samples with the same pure functions the services use (the
evaluator's :func:`~services.evaluator.health.score`, with the clients part
from the recorded ``ClientStatus`` reports folded as the evaluator folds them
(:class:`~services.evaluator.clients.ClientsView`), and
:func:`~services.evaluator.incidents.step`, the targeter's
:func:`~services.targeter.steps.step_due` and
:func:`~services.targeter.steps.next_step`, the readmitter's
:mod:`~services.readmitter.waves`), and :func:`side_by_side` /
:func:`to_json` show both.

What the simulation assumes: health is as recorded (it cannot know how load
would have moved); every client told to move goes to its first alternate and
every readmitted client comes back; the readmitter decides at each sample
of the server and whenever a wave falls due, on the latest health; clients
returning on their own request (wave 0) are not simulated and not counted.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from schemas.events import (
    ClientStatus,
    Event,
    FailoverPlan,
    HealthReport,
    Incident,
    MetricsSample,
    ReadmitWave,
)
from services.evaluator.clients import ClientsView
from services.evaluator.health import score
from services.evaluator.incidents import ServerState, Transition, close, step
from services.evaluator.reports import health_report
from services.readmitter import waves
from services.runtime.config import Config, ConfigError
from services.targeter.registry import ClientRecord, apply_status, moved, record_from_config
from services.targeter.steps import Tracked, next_step, step_due

logger = logging.getLogger(__name__)

SECTIONS = ("collector", "evaluator", "targeter", "readmitter")
"""The config sections whose fields ``--set`` may change."""

HEALTH_NOTE = (
    "Health is as recorded: the simulation cannot know how load would have moved "
    "under other decisions."
)

SOURCE = "what-if"

_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class WaveOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One readmission wave: when it went out, its number, who came back, whether it was final."""

    at: float
    wave: int
    clients: list[str]
    final: bool = False


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What was (or would have been) decided about the first incident of one server.

    Times are UNIX times (None: never). ``onset_at`` and ``recovering_at`` are
    the times of the samples that opened the incident and started its
    recovery; ``closed_at`` that of the final wave, which closes it;
    ``first_move_at`` that of the first plan that moved a client (a plan may
    move no one: health not yet below the threshold when a prediction opened
    the incident). ``onset_reason`` says why it opened, and
    ``onset_predicted`` how many of the samples that opened it counted as
    low by the health trend rather than by the threshold.
    ``lowest_health`` is the lowest health during the incident, or in the
    whole window when no incident opened. ``clients_moved`` are in plan order;
    ``steps`` counts the plans; ``re_overloads`` the relapses from recovering
    to overloaded; ``further_incidents`` the other incidents of the server
    opened later in the window. The thresholds are those the decisions were
    made with (None: not known from the recording).
    """

    server: str
    incident_id: str | None
    onset_at: float | None
    lowest_health: float | None
    clients_moved: list[str] = msgspec.field(default_factory=list)
    steps: int = 0
    waves: list[WaveOutcome] = msgspec.field(default_factory=list)
    re_overloads: int = 0
    recovering_at: float | None = None
    closed_at: float | None = None
    further_incidents: int = 0
    failover_threshold: float | None = None
    connection_threshold: float | None = None
    failover_samples: int | None = None
    first_move_at: float | None = None
    onset_reason: str = ""
    onset_predicted: int = 0
    predict_horizon_s: float | None = None


# --- settings ----------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """A TOML value (scalar or array); a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.match(text):
            return text
        raise ValueError(f"{text!r} is not a TOML value") from None


def apply_settings(config: Config, assignments: Sequence[str]) -> Config:
    """``config`` with each ``section.field=value`` set, checked as a config file would be.

    Sections: collector, evaluator, targeter, readmitter; a nested field is
    named with more dots (``evaluator.weights.cpu=0.5``). A value is a TOML
    value (``0.1``, ``3``, ``true``, ``"site"``, ``["a", "b"]``), or a bare
    word taken as a string. Every assignment is applied, then the whole config
    is validated once, so related fields may change together (both
    thresholds). Raises ConfigError with one line.
    """
    if not assignments:
        return config
    data = msgspec.to_builtins(config)
    for assignment in assignments:
        key, eq, raw = assignment.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise ConfigError(f"--set {assignment!r}: expected section.field=value")
        path = key.split(".")
        if len(path) < 2 or not all(path):
            raise ConfigError(f"--set {assignment!r}: expected section.field=value")
        if path[0] not in SECTIONS:
            raise ConfigError(
                f"--set {assignment!r}: unknown section {path[0]!r} (one of {', '.join(SECTIONS)})"
            )
        node = data[path[0]]
        for depth, name in enumerate(path[1:], start=1):
            if not isinstance(node, dict) or name not in node:
                where = ".".join(path[:depth])
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ConfigError(
                    f"--set {assignment!r}: {where} has no field {name!r} (fields: {known})"
                )
            if depth < len(path) - 1:
                node = node[name]
        try:
            node[path[-1]] = _parse_value(raw)
        except ValueError as exc:
            raise ConfigError(f"--set {assignment!r}: {exc}") from None
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"--set {' '.join(assignments)}: {exc}") from None


# --- what was decided ----------------------------------------------------------


def first_opened(events: Sequence[Event], server: str) -> float | None:
    """The time of the first recorded Incident that opened an incident of ``server``."""
    for event in events:
        if (
            isinstance(event, Incident)
            and event.server == server
            and event.state == "opened"
            and event.relapses == 0
        ):
            return event.time
    return None


def recorded(events: Sequence[Event], incident_id: str) -> Outcome:
    """What the live services decided about ``incident_id``, from its recorded events.

    Onset and recovery are the times of the samples whose HealthReports
    first show the incident opened and recovering (the Incident events' times
    when those reports are not recorded); ``closed_at`` is the time of the
    final wave that closed it. Raises ValueError if no Incident event has
    ``incident_id``.
    """
    incidents = [e for e in events if isinstance(e, Incident) and e.incident_id == incident_id]
    if not incidents:
        raise ValueError(f"no Incident event of incident {incident_id!r} in the recording")
    server = incidents[0].server
    sample_times = {e.id: e.time for e in events if isinstance(e, MetricsSample)}
    reports = [e for e in events if isinstance(e, HealthReport) and e.incident_id == incident_id]

    def sample_time(report: HealthReport | None, fallback: float | None) -> float | None:
        if report is not None and report.sample_id in sample_times:
            return sample_times[report.sample_id]
        return fallback

    onset_at = sample_time(reports[0] if reports else None, min(e.opened_at for e in incidents))
    recovering_events = [e.time for e in incidents if e.state == "recovering"]
    recovering_at = sample_time(
        next((r for r in reports if r.state == "recovering"), None),
        recovering_events[0] if recovering_events else None,
    )

    plans = sorted(
        (e for e in events if isinstance(e, FailoverPlan) and e.incident_id == incident_id),
        key=lambda p: (p.time, p.step, p.part),
    )
    moved_clients: list[str] = []
    for plan in plans:
        moved_clients.extend(m.client for m in plan.moves)
    first_move_at = next((p.time for p in plans if p.moves), None)
    opened = [e for e in incidents if e.state == "opened" and e.relapses == 0]

    wave_events = [
        e
        for e in events
        if isinstance(e, ReadmitWave) and e.incident_id == incident_id and e.wave >= 1
    ]
    closes = [e.time for e in incidents if e.state == "closed"]
    closed_at: float | None = None
    if closes:
        finals = [w.time for w in wave_events if w.final and w.time <= closes[0]]
        closed_at = finals[-1] if finals else closes[0]

    healths = [r.health for r in reports] or [e.health for e in incidents]
    opened_first = min(e.time for e in incidents)
    later = {
        e.incident_id
        for e in events
        if isinstance(e, Incident)
        and e.server == server
        and e.state == "opened"
        and e.relapses == 0
        and e.incident_id != incident_id
        and e.time > opened_first
    }
    return Outcome(
        server=server,
        incident_id=incident_id,
        onset_at=onset_at,
        lowest_health=min(healths),
        clients_moved=list(dict.fromkeys(moved_clients)),
        steps=len({p.plan_id for p in plans}),
        waves=[
            WaveOutcome(at=w.time, wave=w.wave, clients=list(w.clients), final=w.final)
            for w in wave_events
        ],
        re_overloads=max(e.relapses for e in incidents),
        recovering_at=recovering_at,
        closed_at=closed_at,
        further_incidents=len(later),
        failover_threshold=reports[0].failover_threshold if reports else None,
        connection_threshold=reports[0].connection_threshold if reports else None,
        first_move_at=first_move_at,
        onset_reason=opened[0].reason if opened else "",
    )


# --- what would have been decided ------------------------------------------------


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
class _ServerSim:
    """One server in the simulation: evaluator, targeter and readmitter state."""

    state: ServerState
    tracked: Tracked | None = None
    readmission: waves.Readmission | None = None
    incidents: list[_IncidentLog] = field(default_factory=list)
    lowest: float | None = None
    wake_at: float | None = None


class _Replay:
    """The farm's decisions replayed sample by sample, as the services would make them."""

    def __init__(self, config: Config, registry: dict[str, ClientRecord]) -> None:
        self.config = config
        self.registry = registry
        self.servers = {s.id: s for s in config.servers}
        self.sims = {sid: _ServerSim(state=ServerState(server=sid)) for sid in self.servers}
        self.reports: dict[str, HealthReport] = {}
        cfg = config.evaluator
        self.clients = ClientsView(
            cfg.clients_window_s, cfg.clients_tolerance, cfg.clients_min_requests, self.servers
        )
        counter = itertools.count(1)
        self.make_id: Callable[[], str] = lambda: f"{SOURCE}-{next(counter)}"

    def in_incident(self) -> set[str]:
        """Servers whose incident, as the targeter tracks it, is not closed."""
        return {
            sid
            for sid, sim in self.sims.items()
            if sim.tracked is not None and sim.tracked.state != "closed"
        }

    def feed(self, sample: MetricsSample) -> None:
        """One sample: the evaluator, then the targeter's steps, then the readmitter."""
        server = self.servers[sample.server]
        sim = self.sims[server.id]
        cfg = self.config.evaluator
        now = sample.time
        result = score(sample, server, cfg, self.clients.parts(server.id, now))
        sim.state, transition = step(sim.state, result.health, now, cfg, self.make_id)
        report = health_report(
            sample, result, sim.state, cfg, source=SOURCE, event_id=sample.id, at=now
        )
        self.reports[server.id] = report
        sim.lowest = result.health if sim.lowest is None else min(sim.lowest, result.health)
        log = sim.incidents[-1] if sim.incidents else None
        if log is not None and log.incident_id == sim.state.incident_id:
            log.lowest = min(log.lowest, result.health)

        tracked = sim.tracked
        if (
            tracked is not None
            and tracked.state == "opened"
            and step_due(
                health=report.health,
                failover_threshold=report.failover_threshold,
                last_plan_health=tracked.last_plan_health,
                last_plan_at=tracked.last_plan_at,
                now=now,
                step_interval_s=self.config.targeter.step_interval_s,
            )
        ):
            self.plan(server.id, tracked, fallback_health=report.health, now=now)
        if transition is not None:
            self.transition(server.id, transition, now)
        self.readmit(server.id, report, now)

    def tick(self, until: float) -> None:
        """The readmitter's own timers up to ``until``: between samples it wakes when a
        wave falls due, deciding on the latest health, as the service's wave loop does."""
        while True:
            due = [
                (sim.wake_at, sid)
                for sid, sim in self.sims.items()
                if sim.wake_at is not None and sim.wake_at <= until and sid in self.reports
            ]
            if not due:
                return
            at, sid = min(due)
            self.sims[sid].wake_at = None
            self.readmit(sid, self.reports[sid], at)

    def transition(self, sid: str, transition: Transition, now: float) -> None:
        """An Incident as the targeter, the readmitter and the outcome see it."""
        sim = self.sims[sid]
        if transition.state == "opened" and transition.relapses == 0:
            sim.incidents.append(
                _IncidentLog(
                    incident_id=transition.incident_id,
                    onset_at=now,
                    lowest=transition.health,
                    reason=transition.reason,
                    predicted=transition.predicted,
                )
            )
        log = sim.incidents[-1] if sim.incidents else None
        if log is not None and log.incident_id == transition.incident_id:
            log.relapses = max(log.relapses, transition.relapses)
            if transition.state == "recovering" and log.recovering_at is None:
                log.recovering_at = now
            if transition.state == "closed":
                log.closed_at = now
        tracked = Tracked(incident_id=transition.incident_id, state=transition.state, time=now)
        previous = sim.tracked
        if previous is not None and previous.incident_id == transition.incident_id:
            tracked = msgspec.structs.replace(tracked, step=previous.step)
        sim.tracked = tracked
        sim.readmission = waves.on_incident(
            sim.readmission, server=sid, incident_id=transition.incident_id, state=transition.state
        )
        if transition.state == "opened":
            self.plan(sid, tracked, fallback_health=transition.health, now=now)

    def plan(self, sid: str, tracked: Tracked, *, fallback_health: float, now: float) -> None:
        """One step of the targeter: plan, move the clients, tell the readmitter."""
        step = next_step(
            sid,
            tracked,
            config=self.config,
            reports=self.reports,
            registry=self.registry,
            in_incident=self.in_incident(),
            fallback_health=fallback_health,
            now=now,
            source=SOURCE,
        )
        if step is None:
            return
        plan, after = step
        clients = [m.client for m in plan.moves]
        sim = self.sims[sid]
        sim.tracked = after
        for move in plan.moves:
            self.registry[move.client] = moved(self.registry[move.client], move.alternates[0], now)
        sim.readmission = waves.record_plan(
            sim.readmission, server=sid, incident_id=tracked.incident_id, clients=clients
        )
        log = sim.incidents[-1] if sim.incidents else None
        if log is not None and log.incident_id == tracked.incident_id:
            log.steps += 1
            log.moved.extend(c for c in clients if c not in log.moved)
            if clients and log.first_move_at is None:
                log.first_move_at = now

    def readmit(self, sid: str, report: HealthReport, now: float) -> None:
        """The readmitter at this sample: a wave if one is due; the final one closes."""
        sim = self.sims[sid]
        current = sim.readmission
        if current is None or current.state != "recovering" or current.final_sent:
            return
        settings = self.config.readmitter
        decision = waves.next_wave(
            current,
            now=now,
            health=report.health,
            connection_threshold=report.connection_threshold,
            wave_size=settings.wave_size,
            wave_interval_s=settings.wave_interval_s,
        )
        sim.wake_at = _wake_at(decision, now, settings.wave_interval_s)
        if not isinstance(decision, waves.Wave):
            return
        sim.readmission = waves.record_wave(current, decision, now=now)
        for client in decision.clients:
            self.registry[client] = moved(self.registry[client], sid, now)
        log = sim.incidents[-1] if sim.incidents else None
        if log is not None and log.incident_id == current.incident_id:
            log.waves.append(
                WaveOutcome(
                    at=now, wave=decision.wave, clients=list(decision.clients), final=decision.final
                )
            )
        if decision.final:
            sim.state, transition = close(sim.state, current.incident_id, report.health, now)
            if transition is not None:
                self.transition(sid, transition, now)


def _wake_at(decision: waves.Decision, now: float, interval_s: float) -> float | None:
    """When the readmitter's wave loop wakes next after ``decision`` (None: it stops)."""
    if isinstance(decision, waves.Wait):
        return decision.until
    if isinstance(decision, waves.Paused):
        return now + max(interval_s, 0.1)
    if isinstance(decision, waves.Wave) and not decision.final:
        return now + interval_s
    return None


def _placement(config: Config, events: Sequence[Event], before: float) -> dict[str, ClientRecord]:
    """Every client of the config, placed by the recorded ClientStatus events before ``before``."""
    registry = {c.id: record_from_config(c) for c in config.clients}
    servers = {s.id for s in config.servers}
    statuses = sorted(
        (e for e in events if isinstance(e, ClientStatus) and e.time < before),
        key=lambda e: e.time,
    )
    unknown = 0
    for status in statuses:
        record = registry.get(status.client)
        if record is None:
            unknown += 1
            continue
        changed = apply_status(record, status, servers)
        if changed is not None:
            registry[status.client] = changed
    if unknown:
        logger.warning("what-if: ignored %d statuses of clients not in the config", unknown)
    return registry


def simulate(
    config: Config,
    events: Sequence[Event],
    server: str,
    *,
    placement_before: float | None = None,
    until: float | None = None,
) -> Outcome:
    """What the services would have decided with ``config``, for the first incident of ``server``.

    Every MetricsSample (of every server of the config, in time order) is
    scored and stepped through its server's incident machine; an incident
    that opens is planned, later samples take further steps by the targeter's
    rule, and a recovering one is readmitted in waves until the final wave
    closes it. Clients start where the recorded ClientStatus events before
    ``placement_before`` put them (default: before the first sample), then
    move by the simulation's own plans and waves. Between samples, and after
    the last one up to ``until`` (default: the last event), the readmitter
    wakes when a wave falls due, as its wave loop does. Raises ValueError if
    ``server`` is not in the config.
    """
    if server not in {s.id for s in config.servers}:
        raise ValueError(f"server {server!r} is not in the config")
    known = {s.id for s in config.servers}
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
    replay = _Replay(config, _placement(config, events, before))
    statuses: list[MetricsSample | ClientStatus] = [
        e for e in events if isinstance(e, ClientStatus)
    ]
    for event in sorted([*samples, *statuses], key=lambda e: e.time):
        if isinstance(event, ClientStatus):
            replay.clients.add(event, event.time)  # the clients part, as the evaluator has it
            continue
        replay.tick(event.time)
        replay.feed(event)
    replay.tick(until if until is not None else max((e.time for e in events), default=0.0))

    sim = replay.sims[server]
    cfg = config.evaluator
    thresholds: dict[str, Any] = {
        "failover_threshold": cfg.failover_threshold,
        "connection_threshold": cfg.connection_threshold,
        "failover_samples": cfg.failover_samples,
        "predict_horizon_s": cfg.predict_horizon_s,
    }
    if not sim.incidents:
        return Outcome(
            server=server, incident_id=None, onset_at=None, lowest_health=sim.lowest, **thresholds
        )
    log = sim.incidents[0]
    return Outcome(
        server=server,
        incident_id=log.incident_id,
        onset_at=log.onset_at,
        lowest_health=log.lowest,
        clients_moved=list(log.moved),
        steps=log.steps,
        waves=list(log.waves),
        re_overloads=log.relapses,
        recovering_at=log.recovering_at,
        closed_at=log.closed_at,
        further_incidents=len(sim.incidents) - 1,
        first_move_at=log.first_move_at,
        onset_reason=log.reason,
        onset_predicted=log.predicted,
        **thresholds,
    )


# --- showing both -----------------------------------------------------------------

NAMES_SHOWN = 6
"""The most client names one cell lists; the rest are counted."""


def _at(value: float | None, start: float) -> str:
    return "never" if value is None else f"{value - start:.1f} s"


def _clients(clients: Sequence[str]) -> str:
    if not clients:
        return "0"
    names = ", ".join(clients[:NAMES_SHOWN])
    more = f", +{len(clients) - NAMES_SHOWN} more" if len(clients) > NAMES_SHOWN else ""
    return f"{len(clients)}: {names}{more}"


def _wave(wave: WaveOutcome | None, start: float) -> str:
    if wave is None:
        return "-"
    return f"{_at(wave.at, start)}: {_clients(wave.clients)}{' (final)' if wave.final else ''}"


def _number(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def _threshold(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _rows(rec: Outcome, sim: Outcome, start: float) -> list[tuple[str, str, str]]:
    def both(label: str, show: Callable[[Outcome], str]) -> tuple[str, str, str]:
        return label, show(rec), show(sim)

    rows = [
        both("incident", lambda o: o.incident_id or "none"),
        both("failover threshold", lambda o: _threshold(o.failover_threshold)),
        both("connection threshold", lambda o: _threshold(o.connection_threshold)),
        both("onset detected", lambda o: _at(o.onset_at, start)),
        both("first client moved", lambda o: _at(o.first_move_at, start)),
        both("lowest health", lambda o: _number(o.lowest_health, 3)),
        both("clients moved", lambda o: _clients(o.clients_moved)),
        both("steps", lambda o: str(o.steps)),
        both("waves", lambda o: str(len(o.waves))),
    ]
    for n in range(max(len(rec.waves), len(sim.waves))):
        rows.append(
            (
                f"  wave {n + 1}",
                _wave(rec.waves[n] if n < len(rec.waves) else None, start),
                _wave(sim.waves[n] if n < len(sim.waves) else None, start),
            )
        )
    rows += [
        both("re-overloads", lambda o: str(o.re_overloads)),
        both("recovering", lambda o: _at(o.recovering_at, start)),
        both("closed", lambda o: _at(o.closed_at, start)),
        both("further incidents", lambda o: str(o.further_incidents)),
    ]
    return rows


def _shift(what: str, rec: float | None, sim: float | None) -> str | None:
    """How a time moved, in words, or None when it did not (to 0.1 s)."""
    if rec is None and sim is None:
        return None
    if sim is None:
        return f"{what} never"
    if rec is None:
        return f"{what} although it never did in the recording"
    delta = round(sim - rec, 1)
    if delta == 0:
        return None
    return f"{what} {abs(delta):.1f} s {'later' if delta > 0 else 'earlier'}"


MOVE_LAG_S = 0.25
"""How much later than its onset a recorded first move may come and still be at the onset:
the services' own latency from a sample to its plan, which the simulation does not have."""


def _moves_apart(rec: Outcome, sim: Outcome) -> bool:
    """Whether the first move is not as far from the onset in both (said only then: an
    onset predicted on the health trend moves no one until health is below the threshold)."""

    def lag(o: Outcome) -> float | None:
        return (
            None if o.first_move_at is None or o.onset_at is None else o.first_move_at - o.onset_at
        )

    rec_lag, sim_lag = lag(rec), lag(sim)
    if rec_lag is None or sim_lag is None:
        return False  # one side moves no one: the count of clients moved says so
    return abs(rec_lag - sim_lag) > MOVE_LAG_S


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(rec: Outcome, sim: Outcome, settings: Sequence[str]) -> str:
    """One or two sentences: what the settings change compared with the recording."""
    head = f"With {', '.join(settings)}" if settings else "With the live settings"
    if sim.onset_at is None:
        threshold = _threshold(sim.failover_threshold)
        samples = sim.failover_samples or 1
        held = "fell below" if samples == 1 else "stayed below"
        span = "" if samples == 1 else f" for {samples} samples"
        lowest = "" if sim.lowest_health is None else f" (lowest {sim.lowest_health:.3f})"
        first = f"{head} the onset is never detected: health never {held} {threshold}{span}{lowest}"
        if sim.predict_horizon_s:
            first += f", nor did its trend cross it within {sim.predict_horizon_s:g} s"
        moved = len(rec.clients_moved)
        return f"{first}. No client moves ({_count(moved, 'client', 'clients')} in the recording)."
    if rec.onset_at is None:
        first = f"{head} the onset is detected although the recording has none"
    else:
        first = f"{head} " + (
            _shift("the onset is detected", rec.onset_at, sim.onset_at)
            or "the onset is detected at the same time"
        )
    if sim.onset_predicted:
        first += f", on the health trend: {sim.onset_reason}"
    changes: list[str] = []
    if sim.clients_moved != rec.clients_moved:
        if len(sim.clients_moved) != len(rec.clients_moved):
            changes.append(
                f"{_count(len(sim.clients_moved), 'client moves', 'clients move')} "
                f"instead of {len(rec.clients_moved)}"
            )
        elif set(sim.clients_moved) == set(rec.clients_moved):
            changes.append("the same clients move in another order")
        else:
            changes.append(f"as many clients move ({len(sim.clients_moved)}) but not the same ones")
    if sim.steps != rec.steps:
        changes.append(f"in {_count(sim.steps, 'step', 'steps')} instead of {rec.steps}")
    if len(sim.waves) != len(rec.waves):
        changes.append(
            f"{_count(len(sim.waves), 'readmission wave', 'readmission waves')} "
            f"instead of {len(rec.waves)}"
        )
    if sim.re_overloads != rec.re_overloads:
        changes.append(
            f"{_count(sim.re_overloads, 're-overload', 're-overloads')} "
            f"instead of {rec.re_overloads}"
        )
    if _moves_apart(rec, sim):
        shift = _shift("the first client moves", rec.first_move_at, sim.first_move_at)
        changes.append(shift or "the first client moves at the same time")
    for what, r, s in (
        ("recovery starts", rec.recovering_at, sim.recovering_at),
        ("the incident closes", rec.closed_at, sim.closed_at),
    ):
        shift = _shift(what, r, s)
        if shift is not None:
            changes.append(shift)
    if sim.further_incidents != rec.further_incidents:
        changes.append(
            f"{_count(sim.further_incidents, 'further incident', 'further incidents')} "
            f"instead of {rec.further_incidents}"
        )
    if not changes:
        return f"{first}. Everything else is as recorded."
    rest = ", ".join(changes[:-1]) + (" and " if len(changes) > 1 else "") + changes[-1]
    return f"{first}. {rest[0].upper()}{rest[1:]}."


def side_by_side(
    recorded: Outcome, simulated: Outcome, *, settings: Sequence[str], start: float
) -> str:
    """A plain-text table of both outcomes (times in seconds after ``start``) and a summary."""
    when = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds")
    rows = [("", "recorded", "what-if"), *_rows(recorded, simulated, start)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [
        f"what-if for server {recorded.server}: times in seconds after {when}",
        f"settings: {' '.join(settings) if settings else 'as live'}",
        "",
    ]
    for label, rec, sim in rows:
        lines.append(f"{label:<{widths[0]}}  {rec:<{widths[1]}}  {sim}".rstrip())
    lines += ["", HEALTH_NOTE, summary(recorded, simulated, settings)]
    return "\n".join(lines)


def to_json(recorded: Outcome, simulated: Outcome, settings: Sequence[str]) -> dict[str, Any]:
    """Both outcomes, the settings, the health note and the summary, as JSON-ready data."""
    return {
        "settings": list(settings),
        "recorded": msgspec.to_builtins(recorded),
        "simulated": msgspec.to_builtins(simulated),
        "note": HEALTH_NOTE,
        "summary": summary(recorded, simulated, settings),
    }
