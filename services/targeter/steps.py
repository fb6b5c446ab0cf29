"""The targeter's steps in one incident: when a further step is due, and what it plans.

Pure: over plain data and a given ``now``, shared by the targeter service and
the ``what-if`` replay so both decide steps alike. :class:`Tracked` is what
the targeter keeps per server (in KV); :func:`next_step` turns it, the farm's
latest health and the registry into the next FailoverPlan.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from schemas.events import FailoverPlan, HealthReport, IncidentState
from services.runtime.config import Config
from services.targeter.planning import Pressure, ServerView, plan_failover, step_plan_id
from services.targeter.registry import ClientRecord


class Tracked(msgspec.Struct, frozen=True, kw_only=True):
    """One server's last incident state, and the steps planned in it.

    ``outbox``: parts of a step's plan the stream has not stored yet (the bus
    away longer than a publish is tried), written with the step so that the next
    event of the server, or the next start, publishes them with the same ids.
    """

    incident_id: str
    state: IncidentState
    time: float
    step: int = 0
    planned: tuple[str, ...] = ()
    last_plan_at: float = 0.0
    last_plan_health: float | None = None
    outbox: tuple[FailoverPlan, ...] = ()


def server_views(
    config: Config, reports: Mapping[str, HealthReport], in_incident: set[str]
) -> dict[str, ServerView]:
    """Every server as the planner sees it: its latest health, room and incident."""
    views = {}
    for server in config.servers:
        report = reports.get(server.id)
        views[server.id] = ServerView(
            id=server.id,
            site=server.site,
            health=report.health if report is not None else None,
            failover_threshold=(
                report.failover_threshold
                if report is not None
                else config.evaluator.failover_threshold
            ),
            in_incident=server.id in in_incident,
            capacity_rps=server.capacity_rps,
        )
    return views


def unmoved(
    server: str,
    tracked: Tracked,
    registry: Mapping[str, ClientRecord],
    heard: Mapping[str, float],
    replan_after_s: float,
) -> set[str]:
    """The clients planned away from ``server`` that their own statuses (``heard``: when
    each was last stamped) still put on it ``replan_after_s`` after the last plan: their
    move was lost (a notice never sent, a notifier killed before it sent it) or refused,
    and they are planned again."""
    since = tracked.last_plan_at + replan_after_s
    return {
        cid
        for cid in tracked.planned
        if (r := registry.get(cid)) is not None
        and r.current == server
        and heard.get(cid, 0.0) > since
    }


def step_due(
    *,
    health: float,
    failover_threshold: float,
    last_plan_health: float | None,
    last_plan_at: float,
    now: float,
    step_interval_s: float,
    unmoved: bool = False,
) -> bool:
    """Whether a further step is due: health below the threshold, falling (or clients of
    the last plans still on the server: ``unmoved``), interval passed.

    Falling means no higher than at the last plan (any health when there was
    none); the interval is ``step_interval_s`` since the last plan.
    """
    falling = last_plan_health is None or health <= last_plan_health
    due = now - last_plan_at >= step_interval_s
    return health < failover_threshold and (falling or unmoved) and due


def next_step(
    server: str,
    tracked: Tracked,
    *,
    config: Config,
    reports: Mapping[str, HealthReport],
    registry: Mapping[str, ClientRecord],
    in_incident: set[str],
    fallback_health: float,
    heard: Mapping[str, float] | None = None,
    now: float,
    source: str,
) -> tuple[FailoverPlan, Tracked] | None:
    """The next step's plan for ``server`` and what to track after it.

    It sheds the clients still on the server that no earlier step planned
    away, and those an earlier step planned that are still reported on it
    (:func:`unmoved`), to alternates not in ``in_incident``, and keeps where
    they are the clients of the server that left it by their own failover.
    None when every client has been planned away already.
    """
    report = reports.get(server)
    pressure = Pressure(
        health=report.health if report is not None else fallback_health,
        failover_threshold=(
            report.failover_threshold if report is not None else config.evaluator.failover_threshold
        ),
        limiting=report.limiting if report is not None else "",
    )
    planned = set(tracked.planned)
    again = unmoved(server, tracked, registry, heard or {}, config.targeter.replan_after_s)
    remaining = [
        r
        for r in registry.values()
        if r.current == server and (r.id not in planned or r.id in again)
    ]
    away = [
        r
        for r in registry.values()
        if r.home == server and r.current != server and r.id not in planned
    ]
    if not remaining and not away and tracked.step > 0:
        return None
    plan = plan_failover(
        server,
        tracked.incident_id,
        pressure,
        remaining,
        server_views(config, reports, in_incident - {server}),
        config.targeter,
        step=tracked.step + 1,
        source=source,
        away=away,
    )
    plan = msgspec.structs.replace(
        plan, plan_id=step_plan_id(server, tracked.incident_id, plan.step)
    )
    after = msgspec.structs.replace(
        tracked,
        step=plan.step,
        planned=tuple(sorted(planned | {m.client for m in plan.moves})),
        last_plan_at=now,
        last_plan_health=pressure.health,
    )
    return plan, after
