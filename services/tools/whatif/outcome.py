"""What was decided about an incident: the outcome both sides of a what-if are told in,
and the live services' outcome read from the recorded events."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from schemas.events import Event, FailoverPlan, HealthReport, Incident, MetricsSample, ReadmitWave


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
