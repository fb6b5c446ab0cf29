"""The targeter on a real nats-server: plans, steps, incidents elsewhere, and its registry."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from schemas.events import ClientStatus, FailoverPlan, HealthReport, Incident, IncidentState
from schemas.signing import client_key_id
from services.runtime.bus import Bus, Signer
from services.runtime.config import Config
from services.runtime.state import StateStore
from services.targeter.registry import ClientRecord
from services.targeter.service import run
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running

TIMEOUT = 5.0
# farm(clients=6) on servers A, B, C: nas-01 and nas-04 are homed on A with
# alternates [B, C]; nas-02, nas-05 on B; nas-03, nas-06 on C.
FAST: dict[str, Any] = {"targeter": {"max_share": 1.0, "gain": 10.0, "step_interval_s": 0.0}}


def targeter(config: Config) -> AbstractAsyncContextManager[object]:
    return running(run, config)


class Farm:
    """Publishes incidents, health and client status; collects the plans that answer."""

    def __init__(self, bus: Bus, config: Config) -> None:
        self.bus = bus
        self.config = config
        self.plans: asyncio.Queue[FailoverPlan] = asyncio.Queue()
        self.n = 0

    async def start(self) -> None:
        async def on_plan(event: FailoverPlan) -> None:
            await self.plans.put(event)

        await self.bus.subscribe(self.bus.subjects.plan("*"), on_plan, types=(FailoverPlan,))

    async def health(self, server: str, health: float, limiting: str = "threads") -> None:
        report = HealthReport(
            server=server,
            sample_id="s",
            health=health,
            limiting=limiting,
            failover_threshold=0.2,
            connection_threshold=0.6,
        )
        await self.bus.publish(self.bus.subjects.health(server), report)

    async def incident(self, server: str, state: IncidentState, incident_id: str = "") -> str:
        self.n += 1
        incident_id = incident_id or f"inc-{server}-{self.n}"
        event = Incident(
            incident_id=incident_id, server=server, state=state, health=0.0, opened_at=0.0
        )
        await self.bus.publish(self.bus.subjects.incident(server), event)
        return incident_id

    async def status(self, client: str, current: str) -> None:
        cfg = self.config.client(client)
        signer = Signer(client_key_id(client), self.config.read_secret(cfg.secret))
        event = ClientStatus(client=client, home=cfg.home, current=current, rate=4.0)
        await self.bus.publish(self.bus.subjects.status(client), event, signer=signer)

    async def plan_for(self, server: str, incident_id: str) -> FailoverPlan:
        """The next plan of ``server`` in ``incident_id`` (readiness probes are skipped)."""
        while True:
            plan = await asyncio.wait_for(self.plans.get(), TIMEOUT)
            if plan.incident_id == incident_id:
                assert plan.server == server
                return plan

    async def wait_ready(self) -> None:
        """Open and close a probe incident of C until the targeter answers with a plan."""
        for _ in range(40):
            await self.incident("C", "opened", "probe")
            try:
                plan = await asyncio.wait_for(self.plans.get(), 0.25)
            except TimeoutError:
                continue
            assert plan.incident_id == "probe"
            await self.incident("C", "closed", "probe")
            return
        raise AssertionError("the targeter never answered")


async def farm_bus(config: Config, stack: AsyncExitStack) -> Farm:
    f = Farm(await operator_bus(config, stack), config)
    await f.start()
    return f


def moves(plan: FailoverPlan) -> list[tuple[str, str]]:
    return [(m.client, m.alternates[0]) for m in plan.moves]


async def test_opened_incident_moves_the_servers_clients_to_alternates_with_room(
    farm: FarmFactory,
) -> None:
    config, _ = farm(FAST, clients=6)
    async with AsyncExitStack() as stack, targeter(config):
        f = await farm_bus(config, stack)
        await f.wait_ready()
        await f.health("B", 0.9)
        await f.health("C", 0.9)
        await f.health("A", 0.05)
        await f.incident("Z", "opened")  # unknown server: dropped
        incident_id = await f.incident("A", "opened")
        plan = await f.plan_for("A", incident_id)
        assert sorted(m.client for m in plan.moves) == ["nas-01", "nas-04"]
        assert {alt for _, alt in moves(plan)} <= {"B", "C"}
        assert plan.unplaced == []
        assert plan.step == 1 and plan.deficit is not None and plan.deficit > 0.7
        assert all(m.why and "room" in m.where for m in plan.moves)

        # recovering and closed make no plan; the next opening gets one
        await f.incident("A", "recovering", incident_id)
        await f.incident("A", "closed", incident_id)
        again = await f.incident("A", "opened")
        assert (await f.plan_for("A", again)).incident_id == again


async def test_servers_in_an_incident_or_without_room_get_no_clients(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=6)
    async with AsyncExitStack() as stack, targeter(config):
        f = await farm_bus(config, stack)
        await f.wait_ready()
        await f.health("C", 0.9)
        await f.health("B", 0.05)
        b_incident = await f.incident("B", "opened")
        await f.plan_for("B", b_incident)

        await f.health("A", 0.05)
        a_incident = await f.incident("A", "opened")
        plan = await f.plan_for("A", a_incident)
        assert moves(plan) == [("nas-01", "C"), ("nas-04", "C")]

        # with C full too, nobody moves: the overload is not moved elsewhere
        await f.health("C", 0.2)
        await f.incident("A", "closed", a_incident)
        full = await f.incident("A", "opened")
        none = await f.plan_for("A", full)
        assert none.moves == [] and sorted(none.unplaced) == ["nas-01", "nas-04"]
        assert "room" in none.reason


async def test_health_that_keeps_falling_sheds_more_in_later_steps(farm: FarmFactory) -> None:
    config, _ = farm(
        {"targeter": {"max_share": 0.5, "gain": 1.0, "step_interval_s": 0.0}}, clients=12
    )
    on_a = sorted(c.id for c in config.clients if c.home == "A")
    assert len(on_a) == 4
    async with AsyncExitStack() as stack, targeter(config):
        f = await farm_bus(config, stack)
        await f.wait_ready()
        await f.health("B", 1.0)
        await f.health("C", 1.0)
        await f.health("A", 0.1)
        incident_id = await f.incident("A", "opened")
        first = await f.plan_for("A", incident_id)
        assert first.step == 1 and first.cap == 2 and len(first.moves) <= 2
        await f.health("A", 0.0)
        second = await f.plan_for("A", incident_id)
        assert second.step == 2
        assert not {m.client for m in first.moves} & {m.client for m in second.moves}
        # a mandatory service down sheds every client still there
        await f.health("A", 0.0, limiting="service:ldap")
        moved = {m.client for p in (first, second) for m in p.moves}
        if moved != set(on_a):
            third = await f.plan_for("A", incident_id)
            moved |= {m.client for m in third.moves}
        assert moved == set(on_a)


async def test_registry_follows_the_clients_and_survives_a_restart(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=6)
    async with AsyncExitStack() as stack:
        f = await farm_bus(config, stack)
        async with targeter(config):
            await f.wait_ready()
            await f.status("nas-01", "B")  # nas-01 (home A) announces it is on B now
            registry = await StateStore.open(f.bus, "registry", ClientRecord)
            for _ in range(100):
                record = await registry.get("nas-01")
                if record is not None and record.current == "B":
                    break
                await asyncio.sleep(0.02)
            assert record is not None and record.current == "B" and record.measured_rate == 4.0
        async with targeter(config):
            await f.wait_ready()
            await f.health("A", 0.9)
            await f.health("C", 0.9)
            await f.health("B", 0.05)
            incident_id = await f.incident("B", "opened")
            plan = await f.plan_for("B", incident_id)
            # the restarted targeter knows nas-01 is on B and moves it with B's own
            assert sorted(m.client for m in plan.moves) == ["nas-01", "nas-02", "nas-05"]


async def test_a_move_that_never_took_effect_is_planned_again(farm: FarmFactory) -> None:
    """Seen in chaos runs: the notifier killed as the incident opens, its plan gone, and the
    targeter, having marked the clients planned, never planned them again. Now clients
    still reported on the server replan_after_s after the plan are planned again."""
    config, _ = farm(
        {"targeter": {**FAST["targeter"], "step_interval_s": 0.2, "replan_after_s": 0.5}},
        clients=6,
    )
    async with AsyncExitStack() as stack, targeter(config):
        f = await farm_bus(config, stack)
        await f.wait_ready()
        await f.health("B", 0.9)
        await f.health("C", 0.9)
        await f.health("A", 0.05)
        incident_id = await f.incident("A", "opened")
        first = await f.plan_for("A", incident_id)
        assert sorted(m.client for m in first.moves) == ["nas-01", "nas-04"]
        # nobody told them: they keep saying they are on A, and health stays as it was
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * TIMEOUT
        again = None
        while again is None and loop.time() < deadline:
            for client in ("nas-01", "nas-04"):
                await f.status(client, "A")
            await f.health("A", 0.05)
            try:
                plan = await asyncio.wait_for(f.plans.get(), 0.3)
            except TimeoutError:
                continue
            if plan.incident_id == incident_id:
                again = plan
        assert again is not None, "the unmoved clients were never planned again"
        assert again.step == 2
        assert sorted(m.client for m in again.moves) == ["nas-01", "nas-04"]
