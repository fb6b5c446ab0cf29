"""The evaluator on a real nats-server: reports, incidents, closing, and restarts."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import msgspec
import pytest

from schemas.events import HealthReport, ReadmitWave, ServiceCheck
from services.evaluator.incidents import ServerState
from services.runtime.config import WritableCheck
from services.runtime.state import StateStore
from tests.conftest import FarmFactory
from tests.support.observer import HIGH, LOW, evaluator, observer


async def test_incident_opens_recovers_and_closes(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack, evaluator(config):
        obs = await stack.enter_async_context(observer(config, stack))
        await obs.wait_ready()

        first = await obs.report_of(await obs.sample(LOW))
        assert first.server == "A"
        assert first.health == 0.0
        assert first.limiting == "threads"
        assert first.parts == {"threads": 0.0}
        assert first.penalties == {}
        assert first.reason.startswith("min of 1 part: threads 0.00 limits")
        assert first.state == "healthy" and first.incident_id is None
        assert (first.failover_threshold, first.connection_threshold) == (0.2, 0.6)

        second = await obs.report_of(await obs.sample(LOW))
        assert second.state == "overloaded"
        assert second.incident_id is not None
        opened = await obs.incident()
        assert opened.state == "opened"
        assert opened.server == "A"
        assert opened.incident_id == second.incident_id
        assert opened.health == 0.0
        assert "threads" in opened.reason
        assert opened.relapses == 0
        incident_id = opened.incident_id

        # Still overloaded: reports every sample, no new incident.
        for busy in (LOW, HIGH, HIGH):
            report = await obs.report_of(await obs.sample(busy))
            assert report.state == "overloaded" and report.incident_id == incident_id
        report = await obs.report_of(await obs.sample(HIGH))
        assert report.state == "recovering"
        assert report.health == 0.875
        recovering = await obs.incident()
        assert recovering.state == "recovering"
        assert recovering.incident_id == incident_id
        assert recovering.opened_at == opened.opened_at

        readmit = obs.bus.subjects.readmit("A")
        # Neither a non-final wave nor one of another incident closes it.
        await obs.bus.publish(readmit, ReadmitWave(incident_id=incident_id, server="A", wave=1))
        await obs.bus.publish(
            readmit, ReadmitWave(incident_id="other", server="A", wave=2, final=True)
        )
        await obs.bus.publish(
            readmit,
            ReadmitWave(incident_id=incident_id, server="A", wave=2, final=True, health=0.9),
        )
        closed = await obs.incident()
        assert closed.state == "closed"
        assert closed.incident_id == incident_id
        assert closed.health == 0.9

        after = await obs.report_of(await obs.sample(LOW))
        assert after.state == "healthy" and after.incident_id is None
        assert obs.incidents.empty()


async def test_unknown_servers_and_other_servers_are_kept_apart(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack, evaluator(config):
        obs = await stack.enter_async_context(observer(config, stack))
        await obs.wait_ready()
        await obs.sample(LOW, server="Z")
        await obs.sample(LOW, server="B")
        b_report = await obs.report_of(await obs.sample(LOW, server="B"))
        assert b_report.server == "B" and b_report.state == "overloaded"
        a_report = await obs.report_of(await obs.sample(LOW, server="A"))
        assert a_report.state == "healthy"
        opened = await obs.incident()
        assert opened.server == "B"
        seen = {r.server for r in [*obs.skipped, *_drain(obs.reports)]}
        assert "B" in seen and "Z" not in seen


async def test_mandatory_service_down_opens_an_incident(farm: FarmFactory) -> None:
    config, _ = farm({"evaluator": {"failover_samples": 1}})
    async with AsyncExitStack() as stack, evaluator(config):
        obs = await stack.enter_async_context(observer(config, stack))
        await obs.wait_ready()
        down = [ServiceCheck(name="ldap", kind="mandatory", ok=False, detail="refused")]
        report = await obs.report_of(await obs.sample(HIGH, services=down))
        assert report.health == 0.0
        assert report.limiting == "service:ldap"
        opened = await obs.incident()
        assert opened.state == "opened" and "ldap" in opened.reason


async def test_failed_dependent_service_lowers_health_by_its_weight(farm: FarmFactory) -> None:
    config, _ = farm()
    acct_log = WritableCheck(name="acct-log", kind="dependent", path="/var/log/acct", weight=0.25)
    servers = [
        msgspec.structs.replace(s, services=[acct_log]) if s.id == "A" else s
        for s in config.servers
    ]
    config = msgspec.structs.replace(config, servers=servers)
    async with AsyncExitStack() as stack, evaluator(config):
        obs = await stack.enter_async_context(observer(config, stack))
        await obs.wait_ready()
        clean = await obs.report_of(await obs.sample(HIGH))
        assert clean.health == 0.875 and clean.penalties == {}

        failed = [ServiceCheck(name="acct-log", kind="dependent", ok=False, detail="read-only")]
        report = await obs.report_of(await obs.sample(HIGH, services=failed))
        assert report.penalties == {"acct-log": 0.25}
        assert report.parts == clean.parts
        assert report.health == pytest.approx(0.875 - 0.25)
        # The penalty (0.25) takes off more than the threads part (0.125) does.
        assert report.limiting == "penalty:acct-log"
        assert "dependent acct-log down (-0.25: read-only) limits" in report.reason

        unknown = [ServiceCheck(name="spool", kind="dependent", ok=False)]
        report = await obs.report_of(await obs.sample(HIGH, server="B", services=unknown))
        assert report.penalties == {"spool": 0.3}
        assert report.health == pytest.approx(0.875 - 0.3)
        assert report.limiting == "penalty:spool"
        assert "not configured" in report.reason


async def test_restarted_evaluator_keeps_the_incident(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        obs = await stack.enter_async_context(observer(config, stack))
        async with evaluator(config):
            await obs.wait_ready()
            await obs.sample(LOW)
            await obs.sample(LOW)
            opened = await obs.incident()
            assert opened.state == "opened"

        async with evaluator(config):
            await obs.wait_ready()
            report = await obs.report_of(await obs.sample(HIGH))
            assert report.state == "overloaded"
            assert report.incident_id == opened.incident_id
            for _ in range(2):
                await obs.sample(HIGH)
            recovering = await obs.incident()
            assert recovering.state == "recovering"
            assert recovering.incident_id == opened.incident_id
            assert recovering.opened_at == opened.opened_at

        async with evaluator(config):
            await obs.wait_ready()
            await obs.sample(LOW)
            await obs.sample(LOW)
            relapse = await obs.incident()
            assert relapse.state == "opened"
            assert relapse.incident_id == opened.incident_id
            assert relapse.relapses == 1


async def test_a_change_published_but_not_stored_is_taken_up_from_the_stream(
    farm: FarmFactory,
) -> None:
    # The evaluator publishes a change, then stores its state: one stopped in between
    # left the state of before the change in KV, and finds the change on the stream.
    config, _ = farm()
    async with AsyncExitStack() as stack:
        obs = await stack.enter_async_context(observer(config, stack))
        async with evaluator(config):
            await obs.wait_ready()
            await obs.sample(LOW)
            await obs.sample(LOW)
            opened = await obs.incident()
        store = await StateStore.open(obs.bus, "evaluator", ServerState)
        await store.put("A", ServerState(server="A", changed_at=opened.time - 1))

        async with evaluator(config):
            await obs.wait_ready()
            report = await obs.report_of(await obs.sample(HIGH))
            assert report.state == "overloaded"
            assert report.incident_id == opened.incident_id
        stored = await store.get("A")
        assert stored is not None and stored.incident_id == opened.incident_id
        assert obs.incidents.empty()  # taken up, not opened or announced again


def _drain(queue: asyncio.Queue[HealthReport]) -> list[HealthReport]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
