"""Failover planning: which clients of an overloaded server move, and where to.

Pure: a plan is made from the config and the set of servers already in an
incident. Candidates are the clients whose home is the failing server (policy
``all``) or the predefined list ``targeter.clients`` in its order (policy
``list``). Each moves to its own configured alternates, in order, minus the
failing server and every server in an incident; a client with no alternate
left stays where it is and is listed as unplaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from schemas.events import FailoverPlan, Move
from services.runtime.config import ClientConfig, Config

logger = logging.getLogger(__name__)


def candidates(server_id: str, config: Config) -> tuple[list[ClientConfig], str]:
    """The clients the policy picks among those of ``server_id``, and how it picked them."""
    homed = [c for c in config.clients if c.home == server_id]
    if config.targeter.policy == "all":
        return homed, "policy all"
    by_id = {c.id: c for c in homed}
    picked = [by_id[cid] for cid in dict.fromkeys(config.targeter.clients) if cid in by_id]
    return picked, "policy list"


def usable_alternates(
    client: ClientConfig, server_id: str, servers_in_incident: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The client's alternates in its order that may take it, and those skipped."""
    excluded = {server_id, *servers_in_incident}
    usable: list[str] = []
    skipped: list[str] = []
    for alternate in dict.fromkeys(client.alternates):
        (skipped if alternate in excluded else usable).append(alternate)
    return usable, skipped


def plan_failover(
    server_id: str,
    incident_id: str,
    config: Config,
    servers_in_incident: set[str],
    *,
    source: str = "",
) -> FailoverPlan:
    """The plan that moves the chosen clients of ``server_id`` off it."""
    chosen, policy = candidates(server_id, config)
    homed = sum(1 for c in config.clients if c.home == server_id)
    moves: list[Move] = []
    unplaced: list[str] = []
    for client in chosen:
        usable, skipped = usable_alternates(client, server_id, servers_in_incident)
        if not usable:
            unplaced.append(client.id)
            continue
        why = f"{policy}: home of {client.id} is {server_id}"
        if policy == "policy list":
            why += f", listed at {config.targeter.clients.index(client.id) + 1}"
        if skipped:
            why += f"; skipped {', '.join(skipped)} (in incident)"
        moves.append(Move(client=client.id, alternates=usable, why=why))

    reason = f"{policy}: {len(moves)} of {homed} clients of {server_id} move"
    if policy == "policy list":
        reason += f" (listed: {len(chosen)})"
    others = sorted(servers_in_incident - {server_id})
    if others:
        reason += f"; servers in incident: {', '.join(others)}"
    if unplaced:
        reason += f"; unplaced (no alternate left): {', '.join(unplaced)}"
    return FailoverPlan(
        source=source,
        incident_id=incident_id,
        server=server_id,
        moves=moves,
        unplaced=unplaced,
        reason=reason,
    )
