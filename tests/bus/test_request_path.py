"""Request-path health on a live farm: the collector's probes see a slow server that
Status-Server, threads and CPU do not, and the incident says so."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from schemas.events import HealthReport, Incident, MetricsSample, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.evaluator import service as evaluator
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running

SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {"failover_samples": 2, "recovery_samples": 2},
}


async def test_a_slow_server_opens_an_incident_decided_by_latency(farm: FarmFactory) -> None:
    config, _ = farm(SETTINGS, servers=("A", "B"), clients=0, probes=True, workers=64)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        samples: asyncio.Queue[MetricsSample] = asyncio.Queue()
        reports: asyncio.Queue[HealthReport] = asyncio.Queue()
        incidents: asyncio.Queue[Incident] = asyncio.Queue()

        async def on_sample(sample: MetricsSample) -> None:
            await samples.put(sample)

        async def on_report(report: HealthReport) -> None:
            await reports.put(report)

        async def on_incident(incident: Incident) -> None:
            await incidents.put(incident)

        await bus.subscribe(bus.subjects.metrics("A"), on_sample, types=(MetricsSample,))
        await bus.subscribe(bus.subjects.health("A"), on_report, types=(HealthReport,))
        await bus.subscribe(bus.subjects.incident("A"), on_incident, types=(Incident,))
        async with (
            running(aaa.run, config),
            running(evaluator.run, config),
            running(collector.run, config),
        ):
            # healthy: the probes are answered well within the objective
            calm = await _next(samples, lambda s: bool(s.probes))
            assert calm.probes_slow == 0 and calm.sources["probes"] == "probes"
            assert calm.probe_latency_p90_s is not None and calm.probe_latency_p90_s < 0.25
            healthy = await _next(reports, lambda r: "latency" in r.parts)
            assert healthy.parts["latency"] == 1.0 and healthy.sources["latency"] == "probes"

            # every request now takes a second; the pool is large, nothing queues yet
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", service_time_ms=1000.0)
            )
            opened = await _next(incidents, lambda i: i.state == "opened", timeout_s=10)
            assert "latency 0.00" in opened.reason, opened.reason
            low = await _next(reports, lambda r: r.limiting == "latency")
            assert low.parts["threads"] > 0.5 and low.parts["queue"] > 0.9, low.parts
            slow = await _next(samples, lambda s: bool(s.probes_slow))
            assert slow.status_ok


async def _next(queue: asyncio.Queue[Any], match: Any, timeout_s: float = 10.0) -> Any:
    async def first() -> Any:
        while True:
            item = await queue.get()
            if match(item):
                return item

    return await asyncio.wait_for(first(), timeout_s)
