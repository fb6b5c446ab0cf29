"""The timeline of one recorded incident, for `aaa-failover report`.

:func:`timeline` is pure: from the verified events of a stream window around
one incident (sorted by time) it builds a :class:`Timeline`, with every time
in seconds after the window's first event: the health of each server and the
incident server's thresholds, the incident's state changes and phases, the
clients on each server over time, and the notices, acks, plans and waves of
the incident. ``incident_figure`` draws it, ``incident_page`` lays it out as
HTML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import msgspec

from schemas.events import (
    Ack,
    Delivery,
    Event,
    FailoverNotice,
    FailoverPlan,
    HealthReport,
    Incident,
    IncidentState,
    ReadmitNotice,
    ReadmitWave,
)
from services.runtime.config import Config
from services.runtime.placement import Placement
from services.tools.errors import ToolError
from services.tools.tail import event_type, summary


class ReportError(ToolError):
    """The report cannot be made; the message says why."""


class HealthPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One HealthReport of a server."""

    t: float
    health: float


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One Incident event of the incident: ``opened`` with ``relapses`` > 0 is a relapse."""

    t: float
    state: IncidentState
    health: float
    relapses: int = 0
    reason: str = ""

    @property
    def relapse(self) -> bool:
        return self.state == "opened" and self.relapses > 0


class Phase(msgspec.Struct, frozen=True, kw_only=True):
    """A span of the incident in one state; ``closed`` is False if it lasts past the window."""

    state: Literal["overloaded", "recovering"]
    start: float
    end: float
    closed: bool = True


class Count(msgspec.Struct, frozen=True, kw_only=True):
    """From ``t`` on, ``count`` clients are on the server (a step series)."""

    t: float
    count: int


class NoticeMark(msgspec.Struct, frozen=True, kw_only=True):
    """A notice of the incident to one client; a readmit notice may not be ``granted``."""

    t: float
    kind: Literal["failover", "readmit"]
    client: str
    granted: bool = True


class AckMark(msgspec.Struct, frozen=True, kw_only=True):
    """A client's answer to a notice of the incident."""

    t: float
    client: str
    accepted: bool
    now_on: str = ""
    reason: str = ""


class PlanMark(msgspec.Struct, frozen=True, kw_only=True):
    """A failover plan of the incident (its parts taken together), at its first part."""

    t: float
    plan_id: str
    step: int
    moves: int
    unplaced: int = 0


class WaveMark(msgspec.Struct, frozen=True, kw_only=True):
    """A readmission wave of the incident (wave 0 answers a client's own request)."""

    t: float
    wave: int
    clients: int
    deferred: int = 0
    final: bool = False


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """A line of the decision table: when, the event type, what it said."""

    t: float
    event: str
    summary: str


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the report shows of one incident.

    ``start`` is the UNIX time of the window's first event and ``end`` the
    last event's time; every other time is in seconds after ``start``.
    ``health`` and ``clients`` are keyed by server, ``clients`` holding a
    step series that starts at 0 with each client at its home. ``moved`` and
    ``returned`` name the clients that left the incident's server and came
    back to it while the incident was in progress. ``lowest_health`` is the
    server's lowest health in that time.
    """

    incident_id: str
    server: str
    start: float
    end: float
    failover_threshold: float | None = None
    connection_threshold: float | None = None
    health: dict[str, list[HealthPoint]] = msgspec.field(default_factory=dict)
    changes: list[Change] = msgspec.field(default_factory=list)
    phases: list[Phase] = msgspec.field(default_factory=list)
    clients: dict[str, list[Count]] = msgspec.field(default_factory=dict)
    notices: list[NoticeMark] = msgspec.field(default_factory=list)
    acks: list[AckMark] = msgspec.field(default_factory=list)
    plans: list[PlanMark] = msgspec.field(default_factory=list)
    waves: list[WaveMark] = msgspec.field(default_factory=list)
    rows: list[Row] = msgspec.field(default_factory=list)
    moved: list[str] = msgspec.field(default_factory=list)
    returned: list[str] = msgspec.field(default_factory=list)
    lowest_health: float | None = None

    @property
    def short_id(self) -> str:
        return self.incident_id[:8]

    @property
    def title(self) -> str:
        return f"incident {self.short_id} on {self.server}"

    @property
    def plot_title(self) -> str:
        return f"incident {self.short_id} on {plain(self.server)}"

    def first(self, state: IncidentState) -> Change | None:
        """The first change to ``state``, if any."""
        return next((c for c in self.changes if c.state == state), None)

    @property
    def relapses(self) -> int:
        return max((c.relapses for c in self.changes), default=0)


def resolve_incident(events: Iterable[Event], incident_id: str) -> str:
    """The full id of the incident ``incident_id`` names: itself, or a unique prefix of one."""
    ids = {e.incident_id for e in events if isinstance(e, Incident)}
    if incident_id in ids:
        return incident_id
    matching = sorted(i for i in ids if incident_id and i.startswith(incident_id))
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise ReportError(f"incident {incident_id!r} is ambiguous: {', '.join(matching)}")
    raise ReportError(f"no Incident event of incident {incident_id!r} in these events")


def timeline(events: Sequence[Event], incident_id: str, config: Config | None = None) -> Timeline:
    """The timeline of incident ``incident_id`` (or a unique prefix of its id) in ``events``.

    Clients start on their home server from ``config``; a client the config
    does not know starts on the home its first ClientStatus names. ReportError
    if no Incident event has that id.
    """
    ordered = sorted(events, key=lambda e: e.time)
    incident_id = resolve_incident(ordered, incident_id)
    incidents = [e for e in ordered if isinstance(e, Incident) and e.incident_id == incident_id]
    server = incidents[0].server
    t0 = ordered[0].time
    end = ordered[-1].time - t0

    def rel(t: float) -> float:
        return t - t0

    reports = [e for e in ordered if isinstance(e, HealthReport)]
    health: dict[str, list[HealthPoint]] = {}
    for r in reports:
        health.setdefault(r.server, []).append(HealthPoint(t=rel(r.time), health=r.health))
    failover, connection = _thresholds(reports, server, incident_id, config)

    changes = [
        Change(t=rel(e.time), state=e.state, health=e.health, relapses=e.relapses, reason=e.reason)
        for e in incidents
    ]
    phases = _phases(incidents, t0, end)
    span_start = phases[0].start if phases else changes[0].t
    span_end = phases[-1].end if phases else end

    notices: list[NoticeMark] = []
    notice_ids: set[str] = set()
    all_notice_ids: set[str] = set()
    for e in ordered:
        if isinstance(e, FailoverNotice | ReadmitNotice):
            all_notice_ids.add(e.id)
            if e.incident_id != incident_id:
                continue
            notice_ids.add(e.id)
            if isinstance(e, FailoverNotice):
                notices.append(NoticeMark(t=rel(e.time), kind="failover", client=e.client))
            else:
                notices.append(
                    NoticeMark(t=rel(e.time), kind="readmit", client=e.client, granted=e.granted)
                )

    def ours(ack: Ack) -> bool:
        if ack.notice_id in notice_ids:
            return True
        return ack.notice_id not in all_notice_ids and ack.server == server

    acks = [
        AckMark(
            t=rel(e.time), client=e.client, accepted=e.accepted, now_on=e.now_on, reason=e.reason
        )
        for e in ordered
        if isinstance(e, Ack) and ours(e)
    ]
    plans, plan_rows = _plans(ordered, incident_id, rel)
    waves = [
        WaveMark(
            t=rel(e.time),
            wave=e.wave,
            clients=len(e.clients),
            deferred=len(e.deferred),
            final=e.final,
        )
        for e in ordered
        if isinstance(e, ReadmitWave) and e.incident_id == incident_id
    ]

    rows: list[Row] = []
    for e in ordered:
        if (
            (isinstance(e, Incident) and e.incident_id == incident_id)
            or (isinstance(e, ReadmitWave) and e.incident_id == incident_id)
            or (isinstance(e, Ack) and not e.accepted and ours(e))
            or (isinstance(e, Delivery) and e.outcome == "failed" and e.notice_id in notice_ids)
        ):
            rows.append(Row(t=rel(e.time), event=event_type(e), summary=_row_summary(e)))
    rows = sorted(rows + plan_rows, key=lambda r: r.t)

    clients, moved, returned = _placement(ordered, config, server, rel, span_start, span_end)
    during = [p.health for p in health.get(server, []) if span_start <= p.t <= span_end] + [
        e.health for e in incidents
    ]

    return Timeline(
        incident_id=incident_id,
        server=server,
        start=t0,
        end=end,
        failover_threshold=failover,
        connection_threshold=connection,
        health=health,
        changes=changes,
        phases=phases,
        clients=clients,
        notices=notices,
        acks=acks,
        plans=plans,
        waves=waves,
        rows=rows,
        moved=moved,
        returned=returned,
        lowest_health=min(during),
    )


def _thresholds(
    reports: Sequence[HealthReport], server: str, incident_id: str, config: Config | None
) -> tuple[float | None, float | None]:
    """The thresholds of the last report of the incident (else of the server, else config)."""
    own = [r for r in reports if r.server == server]
    of_incident = [r for r in own if r.incident_id == incident_id]
    chosen = (of_incident or own)[-1:] if own else []
    if chosen:
        return chosen[0].failover_threshold, chosen[0].connection_threshold
    if config is not None:
        return config.evaluator.failover_threshold, config.evaluator.connection_threshold
    return None, None


def _phases(incidents: Sequence[Incident], t0: float, end: float) -> list[Phase]:
    """The overloaded and recovering spans of the incident's changes."""
    phases: list[Phase] = []
    current: Literal["overloaded", "recovering"] | None = None
    since = 0.0
    for e in incidents:
        t = e.time - t0
        if not phases and current is None:
            # The window starts inside the incident: its state before the first change.
            if e.state == "recovering":
                current, since = "overloaded", max(0.0, e.opened_at - t0)
            elif e.state == "closed" or e.relapses > 0:
                current, since = "recovering", 0.0
        if current is not None:
            phases.append(Phase(state=current, start=since, end=t))
        match e.state:
            case "opened":
                current = "overloaded"
            case "recovering":
                current = "recovering"
            case "closed":
                current = None
        since = t
    if current is not None:
        phases.append(Phase(state=current, start=since, end=end, closed=False))
    return [p for p in phases if p.end > p.start or not p.closed]


def _plans(
    ordered: Sequence[Event], incident_id: str, rel: Callable[[float], float]
) -> tuple[list[PlanMark], list[Row]]:
    """The incident's plans, each plan's parts taken together, and their table rows."""
    parts: dict[str, list[FailoverPlan]] = {}
    for e in ordered:
        if isinstance(e, FailoverPlan) and e.incident_id == incident_id:
            parts.setdefault(e.plan_id, []).append(e)
    marks: list[PlanMark] = []
    rows: list[Row] = []
    for plan_id, plan in parts.items():
        first = plan[0]
        moves = sum(len(p.moves) for p in plan)
        unplaced = sum(len(p.unplaced) for p in plan)
        t = rel(first.time)
        marks.append(
            PlanMark(t=t, plan_id=plan_id, step=first.step, moves=moves, unplaced=unplaced)
        )
        targets = sorted({m.alternates[0] for p in plan for m in p.moves if m.alternates})
        text = (
            f"step={first.step} moves={moves} unplaced={unplaced} "
            f"to={','.join(targets) or '-'} health={num(first.health)}"
        )
        if len(plan) < first.parts:
            text += f" parts={len(plan)}/{first.parts}"
        if first.reason:
            text += f" reason={first.reason}"
        rows.append(Row(t=t, event=event_type(first), summary=text))
    return marks, rows


def _row_summary(event: Event) -> str:
    if isinstance(event, ReadmitWave):
        text = (
            f"wave={event.wave} clients={','.join(event.clients) or '-'} "
            f"deferred={','.join(event.deferred) or '-'} health={num(event.health)}"
            + (" final" if event.final else "")
        )
    else:
        text = summary(event)
    reason = getattr(event, "reason", "")
    if isinstance(event, Ack | Delivery):
        text = f"client={event.client} " + text
    if reason and "reason=" not in text:
        text += f" reason={reason}"
    return text


def _placement(
    ordered: Sequence[Event],
    config: Config | None,
    server: str,
    rel: Callable[[float], float],
    span_start: float,
    span_end: float,
) -> tuple[dict[str, list[Count]], list[str], list[str]]:
    """Clients per server over time, and who left and came back to ``server`` in the span.

    A client starts on its home; a ClientStatus moves it to ``current`` and an
    accepted Ack to ``now_on``.
    """
    placement = Placement.start(config, ordered)
    order = [c.id for c in config.servers] if config else []
    counts: dict[str, int] = {}
    for home in placement.where.values():
        counts[home] = counts.get(home, 0) + 1
    series: dict[str, list[Count]] = {s: [Count(t=0.0, count=n)] for s, n in counts.items()}
    moved: list[str] = []
    returned: list[str] = []
    for e in ordered:
        move = placement.follow(e)
        if move is None:
            continue
        client, before, now_on = move
        t = rel(e.time)
        for sid, delta in ((before, -1), (now_on, +1)):
            if sid is None:
                continue
            counts[sid] = counts.get(sid, 0) + delta
            steps = series.setdefault(sid, [Count(t=0.0, count=0)])
            if steps[-1].t == t:
                steps[-1] = Count(t=t, count=counts[sid])
            else:
                steps.append(Count(t=t, count=counts[sid]))
        if span_start <= t <= span_end:
            if before == server and client not in moved:
                moved.append(client)
            if now_on == server and client not in returned:
                returned.append(client)
    known = order + sorted(set(series) - set(order))
    return {s: series[s] for s in known if s in series}, moved, returned


def plain(text: str) -> str:
    """``text`` for a matplotlib label: a ``$`` is shown, never taken for mathtext."""
    return text.replace("$", r"\$")


def num(value: float | None) -> str:
    """``value`` with three decimals, or ``-`` for none."""
    return "-" if value is None else f"{value:.3f}"
