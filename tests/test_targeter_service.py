"""The targeter on a real nats-server: a plan per opened incident, skipping servers in one."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, AsyncExitStack

from schemas.events import FailoverPlan, Incident, IncidentState
from services.runtime.bus import Bus
from services.runtime.config import Config
from services.targeter.service import run
from tests.conftest import FarmFactory
from tests.helpers import operator_bus, running

TIMEOUT = 5.0
# farm(clients=6) on servers A, B, C: nas-01 and nas-04 are homed on A with
# alternates [B, C]; nas-02, nas-05 on B; nas-03, nas-06 on C.


class Observer:
    """Publishes incidents and collects the plans that answer them."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.plans: asyncio.Queue[FailoverPlan] = asyncio.Queue()
        self.n = 0

    async def start(self) -> None:
        async def on_plan(event: FailoverPlan) -> None:
            await self.plans.put(event)

        await self.bus.subscribe(self.bus.subjects.plan("*"), on_plan, types=(FailoverPlan,))

    async def incident(self, server: str, state: IncidentState, incident_id: str = "") -> str:
        self.n += 1
        incident_id = incident_id or f"inc-{server}-{self.n}"
        event = Incident(
            incident_id=incident_id, server=server, state=state, health=0.0, opened_at=0.0
        )
        await self.bus.publish(self.bus.subjects.incident(server), event)
        return incident_id

    async def plan(self) -> FailoverPlan:
        return await asyncio.wait_for(self.plans.get(), TIMEOUT)

    async def wait_ready(self) -> None:
        """Open and close an incident of C until the targeter answers with a plan."""
        for _ in range(40):
            await self.incident("C", "opened", "probe")
            try:
                plan = await asyncio.wait_for(self.plans.get(), 0.25)
            except TimeoutError:
                continue
            assert plan.server == "C"
            await self.incident("C", "closed", "probe")
            return
        raise AssertionError("the targeter never answered")

    async def plan_for(self, server: str, incident_id: str) -> FailoverPlan:
        """The next plan that is not a readiness probe's."""
        while True:
            plan = await self.plan()
            if plan.incident_id != "probe":
                assert (plan.server, plan.incident_id) == (server, incident_id)
                return plan


def targeter(config: Config) -> AbstractAsyncContextManager[object]:
    return running(run, config)


async def observer(config: Config, stack: AsyncExitStack) -> Observer:
    bus = await operator_bus(config, stack, "test")
    obs = Observer(bus)
    await obs.start()
    return obs


def moves(plan: FailoverPlan) -> list[tuple[str, list[str]]]:
    return [(m.client, m.alternates) for m in plan.moves]


async def test_opened_incident_gets_a_plan_with_the_servers_clients(farm: FarmFactory) -> None:
    config, _ = farm(clients=6)
    async with AsyncExitStack() as stack, targeter(config):
        obs = await observer(config, stack)
        await obs.wait_ready()
        await obs.incident("Z", "opened")
        incident_id = await obs.incident("A", "opened")
        plan = await obs.plan_for("A", incident_id)
        assert moves(plan) == [("nas-01", ["B", "C"]), ("nas-04", ["B", "C"])]
        assert plan.unplaced == []
        assert plan.moves[0].why.startswith("policy all")
        # recovering and closed make no plan; the next plan answers the next opening
        await obs.incident("A", "recovering", incident_id)
        await obs.incident("A", "closed", incident_id)
        again = await obs.incident("A", "opened")
        assert (await obs.plan_for("A", again)).incident_id == again
        assert obs.plans.empty()


async def test_plan_skips_servers_in_incident_until_they_close(farm: FarmFactory) -> None:
    config, _ = farm(clients=6)
    async with AsyncExitStack() as stack, targeter(config):
        obs = await observer(config, stack)
        await obs.wait_ready()
        b_incident = await obs.incident("B", "opened")
        b_plan = await obs.plan_for("B", b_incident)
        assert moves(b_plan) == [("nas-02", ["A", "C"]), ("nas-05", ["A", "C"])]

        a_incident = await obs.incident("A", "opened")
        a_plan = await obs.plan_for("A", a_incident)
        assert moves(a_plan) == [("nas-01", ["C"]), ("nas-04", ["C"])]
        assert "B" in a_plan.reason

        await obs.incident("B", "recovering", b_incident)
        await obs.incident("A", "opened", a_incident)
        relapse = await obs.plan_for("A", a_incident)
        assert moves(relapse) == [("nas-01", ["C"]), ("nas-04", ["C"])]

        await obs.incident("B", "closed", b_incident)
        await obs.incident("A", "opened", a_incident)
        after = await obs.plan_for("A", a_incident)
        assert moves(after) == [("nas-01", ["B", "C"]), ("nas-04", ["B", "C"])]


async def test_restarted_targeter_remembers_servers_in_incident(farm: FarmFactory) -> None:
    config, _ = farm(clients=6)
    async with AsyncExitStack() as stack:
        obs = await observer(config, stack)
        async with targeter(config):
            await obs.wait_ready()
            b_incident = await obs.incident("B", "opened")
            await obs.plan_for("B", b_incident)
        async with targeter(config):
            await obs.wait_ready()
            a_incident = await obs.incident("A", "opened")
            plan = await obs.plan_for("A", a_incident)
            assert moves(plan) == [("nas-01", ["C"]), ("nas-04", ["C"])]
