"""Targeting on a live farm: three reference servers whose alternates' headroom differs.

Server A is overloaded; B has half of its worker pool stalled, C none. The
moved clients split between B and C in proportion to their live room.

Health here is the worker pool alone: the reference servers run inside the
test's process, so its CPU part would follow the load of the machine running
the suite rather than the stalls the test makes.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

from schemas.events import FailoverPlan, HealthReport, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.launch.farm import THREADS_ONLY
from services.targeter import service as targeter
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running

CAPACITY = 1000.0
SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {
        "failover_samples": 2,
        "recovery_samples": 2,
        "failover_threshold": 0.2,
        **THREADS_ONLY,
    },
    "targeter": {"max_share": 1.0, "gain": 10.0},
}


async def test_moved_clients_split_by_the_alternates_live_headroom(farm: FarmFactory) -> None:
    config, _ = farm(SETTINGS, clients=24, client_rate=5.0, capacity_rps=CAPACITY)
    home_a = {c.id for c in config.clients if c.home == "A"}
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        plans: asyncio.Queue[FailoverPlan] = asyncio.Queue()
        healths: dict[str, HealthReport] = {}

        async def on_plan(plan: FailoverPlan) -> None:
            await plans.put(plan)

        async def on_health(report: HealthReport) -> None:
            healths[report.server] = report

        await bus.subscribe(bus.subjects.plan("A"), on_plan, types=(FailoverPlan,))
        await bus.subscribe(bus.subjects.health("*"), on_health, types=(HealthReport,))
        workers = config.server("A").reference.workers  # type: ignore[union-attr]
        async with (
            running(aaa.run, config),
            running(targeter.run, config),
            running(evaluator.run, config),
            running(collector.run, config),
        ):
            # every service is up once every server's health is reported
            await _until(lambda: {"A", "B", "C"} <= {s for s, r in healths.items() if r.health > 0})
            await bus.publish(
                bus.subjects.control("B"), ServerControl(server="B", stalled_workers=workers // 2)
            )
            await _until(
                lambda: _health(healths, "B") <= 0.5 and _health(healths, "C") > 0.9,
                describe=lambda: {k: (r.health, r.reason) for k, r in healths.items()},
            )
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", stalled_workers=workers)
            )
            plan = await asyncio.wait_for(plans.get(), 15)

    assert {m.client for m in plan.moves} == home_a
    to_b = [m for m in plan.moves if m.alternates[0] == "B"]
    to_c = [m for m in plan.moves if m.alternates[0] == "C"]
    room_b = CAPACITY * (0.5 - 0.2)
    room_c = CAPACITY * (_health(healths, "C") - 0.2)
    expected_b = len(plan.moves) * room_b / (room_b + room_c)
    assert abs(len(to_b) - expected_b) <= 1.0, (len(to_b), len(to_c), expected_b)
    assert len(to_c) > len(to_b) >= 1
    assert all("room" in m.where for m in plan.moves)


def _health(healths: dict[str, HealthReport], server: str) -> float:
    report = healths.get(server)
    return report.health if report is not None else -1.0


async def _until(condition: Any, timeout_s: float = 15.0, describe: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not met in time: {describe() if describe else ''}"
        await asyncio.sleep(0.05)
