"""Request-path health on real FreeRADIUS 3.2.1: a slow backend that Status-Server, threads and
CPU do not show, and a stopped server, each open an incident named after what requests meet."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from schemas.events import HealthReport, Incident
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.freeradius import PASSWORD, USER, FreeRadius, StartFreeRadius
from tests.support.helpers import next_matching, operator_bus, running

SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.5, "status_timeout_s": 0.25},
    "evaluator": {"failover_samples": 2, "recovery_samples": 2},
}


def probed_farm(farm: FarmFactory, server: FreeRadius, tmp_path: Path) -> Config:
    """A farm whose only server is ``server`` (F), probed as user alice."""
    password = tmp_path / "probe-password"
    password.write_text(PASSWORD + "\n")
    secret = tmp_path / "probe-secret"
    secret.write_text(server.client_secret + "\n")
    entry = server.entry(
        "F",
        probe={
            "secret": {"file": str(secret)},
            "users": [{"name": USER, "password": {"file": str(password)}}],
            "nas_identifiers": ["probe-a", "probe-b"],
        },
    )
    config, _ = farm({**SETTINGS, "servers": [entry]}, servers=("F",), clients=0)
    return config


async def _watch(config: Config, stack: AsyncExitStack) -> tuple[Any, Any]:
    bus = await operator_bus(config, stack, "t")
    reports: asyncio.Queue[HealthReport] = asyncio.Queue()
    incidents: asyncio.Queue[Incident] = asyncio.Queue()

    async def on_report(report: HealthReport) -> None:
        await reports.put(report)

    async def on_incident(incident: Incident) -> None:
        await incidents.put(incident)

    await bus.subscribe(bus.subjects.health("F"), on_report, types=(HealthReport,))
    await bus.subscribe(bus.subjects.incident("F"), on_incident, types=(Incident,))
    return reports, incidents


async def test_a_slow_backend_on_half_the_requests_opens_an_incident_on_latency(
    farm: FarmFactory, freeradius: StartFreeRadius, tmp_path: Path
) -> None:
    # a pool large enough never to queue: Status-Server and the queues stay calm
    server = await freeradius(backend=True, max_servers=256, start_servers=4)
    config = probed_farm(farm, server, tmp_path)
    async with AsyncExitStack() as stack:
        reports, incidents = await _watch(config, stack)
        async with running(evaluator.run, config), running(collector.run, config):
            calm = await next_matching(reports, lambda r: "latency" in r.parts, 10)
            assert calm.parts["latency"] == 1.0 and calm.sources["latency"] == "probes"
            server.slow_backend(0.5, delay_s=2.0)
            opened = await next_matching(incidents, lambda i: i.state == "opened", 10)
            assert "latency" in opened.reason and "probes over 0.25s" in opened.reason, opened
            low = await next_matching(reports, lambda r: r.limiting == "latency", 5)
            assert low.parts["queue"] == 1.0, low.parts
            server.slow_backend(0.0)


async def test_a_stopped_server_opens_an_incident_that_names_its_unanswered_probes(
    farm: FarmFactory, freeradius: StartFreeRadius, tmp_path: Path
) -> None:
    server = await freeradius()
    config = probed_farm(farm, server, tmp_path)
    async with AsyncExitStack() as stack:
        reports, incidents = await _watch(config, stack)
        async with running(evaluator.run, config), running(collector.run, config):
            await next_matching(reports, lambda r: r.parts.get("latency") == 1.0, 10)
            server.pause()
            try:
                opened = await next_matching(incidents, lambda i: i.state == "opened", 10)
            finally:
                server.resume()
            assert opened.reason.startswith("Status-Server failed"), opened.reason
            assert "latency 0.00" in opened.reason and "probes over 0.25s" in opened.reason
