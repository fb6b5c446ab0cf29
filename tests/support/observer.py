"""A test's view of the evaluator on the bus: the ``Observer`` that publishes samples of given busy
threads (``LOW``, ``MID``, ``HIGH`` in the farm) and collects the reports and incidents, and
``observer``, one running beside the evaluator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from schemas.events import Event, HealthReport, Incident, MetricsSample
from services.evaluator.service import run
from services.runtime.bus import Bus
from services.runtime.config import Config
from tests.support.helpers import operator_bus, running

TIMEOUT = 5.0
# threads_max is 8 in the farm: 8 busy is health 0, 5 busy is between the
# thresholds (0.375), 1 busy is healthy (0.875).
LOW, MID, HIGH = 8, 5, 1


class Observer:
    """A test's view of the bus: publishes samples, collects reports and incidents."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.reports: asyncio.Queue[HealthReport] = asyncio.Queue()
        self.incidents: asyncio.Queue[Incident] = asyncio.Queue()
        self.seq = 0
        self.skipped: list[HealthReport] = []

    async def start(self) -> None:
        async def on_report(event: HealthReport) -> None:
            await self.reports.put(event)

        async def on_incident(event: Incident) -> None:
            await self.incidents.put(event)

        await self.bus.subscribe(self.bus.subjects.health("*"), on_report, types=(HealthReport,))
        await self.bus.subscribe(self.bus.subjects.incident("*"), on_incident, types=(Incident,))

    async def sample(self, busy: int, server: str = "A", **fields: Any) -> MetricsSample:
        self.seq += 1
        sample = MetricsSample(
            server=server, seq=self.seq, status_ok=True, threads_active=busy, **fields
        )
        await self.bus.publish(self.bus.subjects.metrics(server), sample)
        return sample

    async def report_of(self, sample: Event) -> HealthReport:
        """The report of ``sample``, skipping reports of readiness probes."""
        while True:
            report = await asyncio.wait_for(self.reports.get(), TIMEOUT)
            if report.sample_id == sample.id:
                return report
            self.skipped.append(report)

    async def incident(self) -> Incident:
        return await asyncio.wait_for(self.incidents.get(), TIMEOUT)

    async def wait_ready(self) -> None:
        """Probe with between-threshold samples (they move no machine) until one is scored."""
        for _ in range(40):
            probe = await self.sample(MID)
            try:
                await asyncio.wait_for(self._report_of(probe.id), 0.25)
                return
            except TimeoutError:
                continue
        raise AssertionError("the evaluator never answered")

    async def _report_of(self, sample_id: str) -> None:
        while (await self.reports.get()).sample_id != sample_id:
            pass


def evaluator(config: Config) -> AbstractAsyncContextManager[object]:
    return running(run, config)


@asynccontextmanager
async def observer(config: Config, stack: AsyncExitStack) -> AsyncIterator[Observer]:
    bus = await operator_bus(config, stack, "test")
    obs = Observer(bus)
    await obs.start()
    yield obs
