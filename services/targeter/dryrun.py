"""`aaa-failover plan --dry-run`: the plan a given situation would produce, without a bus.

Every client of the config is taken to be on its home server; servers named
with ``--server-health`` have that health, the others 1.0, and none is in an
incident unless its health is below the failover threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.events import FailoverPlan
from services.runtime.config import Config, ConfigError
from services.targeter.planning import Pressure, ServerView, plan_failover
from services.targeter.registry import record_from_config


def dry_run(
    config: Config,
    server: str,
    health: float,
    *,
    limiting: str = "",
    server_health: Mapping[str, float] | None = None,
) -> FailoverPlan:
    """The first plan for ``server`` at ``health``, the others as ``server_health`` says."""
    known = {s.id for s in config.servers}
    unknown = sorted(({server} | set(server_health or {})) - known)
    if unknown:
        raise ConfigError(f"plan: unknown servers {unknown}")
    failover = config.evaluator.failover_threshold
    healths = {sid: 1.0 for sid in known} | dict(server_health or {})
    views = {
        s.id: ServerView(
            id=s.id,
            site=s.site,
            health=healths[s.id],
            failover_threshold=failover,
            in_incident=s.id != server and healths[s.id] < failover,
            capacity_rps=s.capacity_rps,
        )
        for s in config.servers
    }
    return plan_failover(
        server,
        "dry-run",
        Pressure(health=health, failover_threshold=failover, limiting=limiting),
        [record_from_config(c) for c in config.clients],
        views,
        config.targeter,
        source="dry-run",
    )


def describe(plan: FailoverPlan) -> str:
    """The plan as an operator reads it: the summary, then one line per client."""
    lines = [f"plan for {plan.server}: {plan.reason}"]
    for move in plan.moves:
        lines.append(
            f"  move {move.client} ({move.load:g} rps) -> {', '.join(move.alternates)}"
            f"  | chosen: {move.why} | to {move.where}"
        )
    for client in plan.unplaced:
        lines.append(f"  stays {client}: no alternate has room")
    return "\n".join(lines)
