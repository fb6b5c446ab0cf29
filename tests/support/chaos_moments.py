"""The chaos tests' vocabulary: the moments of an incident, the processes killed, and which
kills the ordinary suite runs today.

A moment is recognised from the events seen so far (:func:`reached`, a plain function
over them and the time now): ``opens`` (the server's Incident opened), ``mid-overload``
(every move of the first FailoverPlan acked as accepted, or ``MID_OVERLOAD_AFTER_S`` after
that plan), ``first-wave`` (ReadmitWave 1), ``before-final-wave`` (the incident recovering
with at most one wave of clients left to readmit: the wave before the final one, or the
recovery itself when one wave readmits them all).

:func:`rotation` is the ordinary suite's share of the matrix: every target once, two
service kills to a run, the moments given out by the day so that they move round.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.events import Ack, Event, FailoverNotice, FailoverPlan, Incident, ReadmitWave

Moment = Literal["opens", "mid-overload", "first-wave", "before-final-wave"]
MOMENTS: tuple[Moment, ...] = ("opens", "mid-overload", "first-wave", "before-final-wave")

SERVICE_TARGETS = ("collector", "evaluator", "targeter", "notifier", "readmitter", "agent")
"""Targets that are one service's process(es) of the farm."""
NATS = "nats-server"
UP = "up"
CLUSTER_NODE = "cluster-node"
TARGETS: tuple[str, ...] = (*SERVICE_TARGETS, NATS, UP, CLUSTER_NODE)

MID_OVERLOAD_AFTER_S = 1.5
"""How long after the first plan ``mid-overload`` comes when its moves are not all acked."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``target`` when ``moment`` comes, and start it again."""

    target: str
    moment: Moment

    def __str__(self) -> str:
        return f"{self.target}@{self.moment}"


def _first_incident(events: Sequence[Event], server: str, since: float) -> str | None:
    for event in events:
        if (
            isinstance(event, Incident)
            and event.server == server
            and event.state == "opened"
            and event.time >= since
        ):
            return event.incident_id
    return None


def reached(
    moment: Moment,
    events: Sequence[Event],
    server: str,
    now: float,
    *,
    wave_size: int,
    since: float = 0.0,
) -> str | None:
    """What shows that ``moment`` of the first incident of ``server`` opened at or after
    ``since`` (the overload's onset: not one of a farm still starting) has come, in words;
    None while it has not."""
    incident_id = _first_incident(events, server, since)
    if incident_id is None:
        return None
    if moment == "opens":
        return f"incident {incident_id} opened"
    plans = [e for e in events if isinstance(e, FailoverPlan) and e.incident_id == incident_id]
    if moment == "mid-overload":
        if not plans:
            return None
        first = plans[0]
        notices = {
            e.id: e.client
            for e in events
            if isinstance(e, FailoverNotice) and e.incident_id == incident_id
        }
        acked = {
            notices[e.notice_id]
            for e in events
            if isinstance(e, Ack) and e.accepted and e.notice_id in notices
        }
        if first.moves and {m.client for m in first.moves} <= acked:
            return f"every move of plan {first.plan_id} acked"
        if now >= first.time + MID_OVERLOAD_AFTER_S:
            return f"{MID_OVERLOAD_AFTER_S}s after plan {first.plan_id}"
        return None
    waves = [
        e
        for e in events
        if isinstance(e, ReadmitWave) and e.incident_id == incident_id and e.wave >= 1
    ]
    if moment == "first-wave":
        first_wave = next((w for w in waves if w.wave == 1), None)
        return None if first_wave is None else f"wave 1 ({first_wave.id})"
    recovering = any(
        isinstance(e, Incident) and e.incident_id == incident_id and e.state == "recovering"
        for e in events
    )
    if not recovering:
        return None
    targeted = {m.client for p in plans for m in p.moves}
    left = targeted - {c for w in waves for c in w.clients}
    if any(w.final for w in waves):
        return f"final wave {max(w.wave for w in waves)} (late: the wave before it was missed)"
    if len(left) <= wave_size:
        last = f"wave {waves[-1].wave}" if waves else "recovering"
        return f"{last} seen, {len(left)} clients left for the final wave"
    return None


def rotation_day() -> int:
    """The day the rotation follows: ``AAA_CHAOS_ROTATION`` when set, else today."""
    text = os.environ.get("AAA_CHAOS_ROTATION", "").strip()
    return int(text) if text else datetime.date.today().toordinal()


PER_RUN = len(MOMENTS)
"""Kills in one run of the rotation: one at each moment."""


def rotation(day: int) -> list[list[Kill]]:
    """The runs of the ordinary suite on ``day``: the service targets and nats-server four to
    a run (in an order that turns with the day), then `up` alone; the kills of a run each at
    its own moment, each target's moment moving on each day. A cluster node is killed
    mid-incident in the ordinary suite by tests/bus/test_cluster.py, at every moment by
    `make chaos`."""
    processes = (*SERVICE_TARGETS, NATS)
    turn = day % len(processes)
    order = processes[turn:] + processes[:turn]
    runs: list[list[Kill]] = []
    for i in range(0, len(order), PER_RUN):
        runs.append(
            [
                Kill(target, MOMENTS[(day + j) % len(MOMENTS)])
                for j, target in enumerate(order[i : i + PER_RUN])
            ]
        )
    runs.append([Kill(UP, MOMENTS[day % len(MOMENTS)])])
    return runs
