"""Every targeting policy through the running targeter, on a live farm.

Four reference servers: A, overloaded by the test, and the alternates B (site
east), C (west) and D (north, whose room fits one client only). Ten clients,
all homed on A, each with a group, a site and a priority (``CLIENTS``), each
bringing 3 rps. The collector samples the servers, the evaluator opens A's
incident, the targeter plans; the test reads the FailoverPlans of A off the
bus.

Each step sheds ``gain`` = 0.35 of the load still on A (health 0: deficit 1;
the cap, ``max_share`` 1, never binds), so policy "all" would move the four
clients of lowest priority, nas-01 to nas-04, in step 1. The farm is laid out
so that each policy picks another set or order than that, and than the other
policies do.

Health here is the worker pool alone (as in test_targeting_farm.py). With 4
workers, the only health below the failover threshold 0.2 is 0: the plans'
shares do not depend on when, as A's pool fills, the evaluator sampled it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec

from schemas.events import FailoverPlan, HealthReport, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.launch.farm import THREADS_ONLY
from services.runtime.config import Config
from services.targeter import service as targeter
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running

SERVERS = ("A", "B", "C", "D")
SITES = {"A": "east", "B": "east", "C": "west", "D": "north"}
CAPACITY = {"A": 1000.0, "B": 1000.0, "C": 1000.0, "D": 5.0}
"""Room is capacity * (health - 0.2): 800 rps on B and C, 4 on D (one client of 3 rps)."""
RATE = 3.0
WORKERS = 4
CLIENTS: dict[str, tuple[str, str, int]] = {
    # id: (group, site, priority)
    "nas-01": ("bronze", "south", 1),
    "nas-02": ("bronze", "east", 2),
    "nas-03": ("bronze", "north", 3),
    "nas-04": ("silver", "west", 4),
    "nas-05": ("silver", "north", 5),
    "nas-06": ("gold", "east", 6),
    "nas-07": ("gold", "south", 7),
    "nas-08": ("gold", "west", 8),
    "nas-09": ("gold", "south", 9),
    "nas-10": ("gold", "east", 10),
}
BY_PRIORITY = ["nas-01", "nas-02", "nas-03", "nas-04"]
"""What policy "all" would move in step 1: the lowest priorities, up to 0.35 of the load."""

SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {
        "failover_samples": 2,
        "recovery_samples": 2,
        "failover_threshold": 0.2,
        **THREADS_ONLY,
    },
}
TARGETER: dict[str, Any] = {"max_share": 1.0, "gain": 0.35, "step_interval_s": 0.2}


def _policy_farm(farm: FarmFactory, targeting: dict[str, Any]) -> Config:
    """The farm of the module docstring, with ``targeting`` in ``[targeter]``."""
    config, _ = farm(
        {**SETTINGS, "targeter": {**TARGETER, **targeting}},
        servers=SERVERS,
        clients=len(CLIENTS),
        client_rate=RATE,
        workers=WORKERS,
    )
    servers = [
        msgspec.structs.replace(s, site=SITES[s.id], capacity_rps=CAPACITY[s.id])
        for s in config.servers
    ]
    clients = []
    for client in config.clients:
        group, site, priority = CLIENTS[client.id]
        clients.append(
            msgspec.structs.replace(
                client,
                home="A",
                alternates=["B", "C", "D"],
                group=group,
                site=site,
                priority=priority,
            )
        )
    return msgspec.structs.replace(config, servers=servers, clients=clients)


async def _steps(farm: FarmFactory, targeting: dict[str, Any], steps: int) -> list[FailoverPlan]:
    """Overload A on a live farm under ``targeting``; A's plans of steps 1 to ``steps``."""
    config = _policy_farm(farm, targeting)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        heard: list[FailoverPlan] = []
        healths: dict[str, float] = {}

        async def on_plan(plan: FailoverPlan) -> None:
            heard.append(plan)

        async def on_health(report: HealthReport) -> None:
            healths[report.server] = report.health

        await bus.subscribe(bus.subjects.plan("A"), on_plan, types=(FailoverPlan,))
        await bus.subscribe(bus.subjects.health("*"), on_health, types=(HealthReport,))
        async with (
            running(aaa.run, config),
            running(targeter.run, config),
            running(evaluator.run, config),
            running(collector.run, config),
        ):
            # every service is up once every server's health is reported
            await _until(lambda: all(healths.get(s, 0.0) > 0.9 for s in SERVERS), healths)
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", stalled_workers=WORKERS)
            )
            await _until(lambda: set(range(1, steps + 1)) <= {p.step for p in heard}, heard)
    assert all(p.parts == 1 for p in heard)
    by_step = {p.step: p for p in reversed(heard)}  # the first plan of each step
    plans = [by_step[step] for step in range(1, steps + 1)]
    assert len({p.incident_id for p in plans}) == 1
    # health 0 throughout: every step sheds 0.35 of the load still on A
    assert all((p.health, p.share) == (0.0, TARGETER["gain"]) for p in plans), plans
    assert all(p.unplaced == [] for p in plans)
    return plans


def moved(plan: FailoverPlan) -> list[str]:
    """The clients ``plan`` moves, in the order it took them."""
    return [m.client for m in plan.moves]


def placed(plan: FailoverPlan) -> dict[str, str]:
    """Each moved client's first alternate."""
    return {m.client: m.alternates[0] for m in plan.moves}


async def test_list_moves_only_the_listed_clients_in_list_order(farm: FarmFactory) -> None:
    listed = ["nas-09", "nas-03", "nas-06", "nas-01", "nas-07"]
    plans = await _steps(farm, {"policy": ["list"], "clients": listed}, steps=3)
    # step 1: the first four listed make 0.35 of the load, in list order, not by priority
    assert moved(plans[0]) == ["nas-09", "nas-03", "nas-06", "nas-01"] != BY_PRIORITY
    # step 2: the last listed one; step 3: nobody, though A is still at health 0 and five
    # clients, not listed, are still on it
    assert moved(plans[1]) == ["nas-07"]
    assert moved(plans[2]) == []
    assert "0 of 5 listed" in plans[2].reason
    assert all("listed at" in m.why for p in plans for m in p.moves)


async def test_group_takes_whole_groups_in_the_listed_order(farm: FarmFactory) -> None:
    plans = await _steps(farm, {"policy": ["group"], "groups": ["silver", "bronze"]}, steps=2)
    # step 1: silver (2 clients, 6 rps) is short of 0.35 of 30 rps, so bronze comes too, whole
    # (all 3, 15 rps in all), where a per-client cut would stop at 4 clients
    assert moved(plans[0]) == ["nas-04", "nas-05", "nas-01", "nas-02", "nas-03"]
    # step 2: gold, not listed, comes next; whole, though 2 of its 5 clients make the share
    assert moved(plans[1]) == ["nas-06", "nas-07", "nas-08", "nas-09", "nas-10"]
    for plan in plans:
        for move in plan.moves:
            assert f"group {CLIENTS[move.client][0]}" in move.why


async def test_topology_nearest_moves_clients_with_room_in_their_site_first_and_there(
    farm: FarmFactory,
) -> None:
    plans = await _steps(farm, {"policy": ["topology"], "topology": "nearest"}, steps=1)
    step = plans[0]
    # nas-01 (priority 1) is in site south, which has no alternate: it waits; the first four
    # with an alternate of their own site move, by priority
    assert moved(step) == ["nas-02", "nas-03", "nas-04", "nas-05"]
    where = placed(step)
    # each to the alternate of its own site: east B, north D, west C
    assert (where["nas-02"], where["nas-03"], where["nas-04"]) == ("B", "D", "C")
    # D's room took nas-03 and has none left for nas-05, of the same site: it goes elsewhere
    assert where["nas-05"] in {"B", "C"}
    for move in step.moves:
        in_site = f"in the client's site {CLIENTS[move.client][1]}" in move.where
        assert in_site == (move.client != "nas-05"), move


async def test_topology_site_takes_whole_sites_in_the_listed_order(farm: FarmFactory) -> None:
    plans = await _steps(
        farm, {"policy": ["topology"], "topology": "site", "sites": ["west", "south"]}, steps=2
    )
    # step 1: west (2 clients) is short of the share, so south comes too, whole
    assert moved(plans[0]) == ["nas-04", "nas-08", "nas-01", "nas-07", "nas-09"]
    # step 2: of the sites not listed, east before north (by name), and east whole
    assert moved(plans[1]) == ["nas-02", "nas-06", "nas-10"]
    for plan in plans:
        for move in plan.moves:
            assert f"site {CLIENTS[move.client][1]} (site rank" in move.why


async def test_group_then_topology_moves_whole_groups_near_clients_first(
    farm: FarmFactory,
) -> None:
    plans = await _steps(
        farm,
        {"policy": ["group", "topology"], "groups": ["gold"], "topology": "nearest"},
        steps=1,
    )
    step = plans[0]
    # gold first and whole; inside it, those with an alternate of their own site first
    # (east, west, east), then those of site south, which has none; each by priority
    assert moved(step) == ["nas-06", "nas-08", "nas-10", "nas-07", "nas-09"]
    where = placed(step)
    assert (where["nas-06"], where["nas-08"], where["nas-10"]) == ("B", "C", "B")


async def _until(condition: Callable[[], bool], state: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not met in {timeout_s} s: {state}"
        await asyncio.sleep(0.05)
