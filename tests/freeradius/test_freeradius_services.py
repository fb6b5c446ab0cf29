"""The services a real FreeRADIUS needs, checked by the collector and scored by the evaluator.

Killing FreeRADIUS turns its mandatory checks failed within one interval and
its health to 0; its accounting log directory made unwritable lowers health
by exactly the weight configured for that dependent service, and restoring
it gives the weight back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import pytest

from schemas.events import Event, HealthReport, MetricsSample
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.runtime.bus import Bus
from tests.conftest import FarmFactory
from tests.support.freeradius import FreeRadius, StartFreeRadius
from tests.support.helpers import next_matching, operator_bus, running

INTERVAL_S = 0.5
CHECK_TIMEOUT_S = 0.3
SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": INTERVAL_S, "status_timeout_s": 0.3},
    "evaluator": {"failover_samples": 1, "recovery_samples": 1},
}
ACCT_WEIGHT = 0.4

E = TypeVar("E", bound=Event)


async def _queue(bus: Bus, subject: str, kind: type[E]) -> asyncio.Queue[E]:
    queue: asyncio.Queue[E] = asyncio.Queue()

    async def handler(event: E) -> None:
        await queue.put(event)

    await bus.subscribe(subject, handler, types=(kind,))
    return queue


def _server_entry(server: FreeRadius) -> dict[str, Any]:
    secret_file = server.directory / "client.secret"
    secret_file.write_text(server.client_secret + "\n")
    checks = [
        {
            "check": "radius",
            "name": "auth-port",
            "port": server.auth_port,
            "secret": {"file": str(secret_file)},
            "timeout_s": CHECK_TIMEOUT_S,
        },
        {
            "check": "process",
            "name": "radiusd",
            "match": {"pid_file": str(server.pid_file)},
            "timeout_s": CHECK_TIMEOUT_S,
        },
        {
            "check": "writable",
            "name": "acct-log",
            "kind": "dependent",
            "weight": ACCT_WEIGHT,
            "path": str(server.directory / "radacct"),
            "timeout_s": CHECK_TIMEOUT_S,
        },
    ]
    return server.entry("F", services=checks)


def _checks(sample: MetricsSample) -> dict[str, bool]:
    return {check.name: check.ok for check in sample.services}


async def test_killed_freeradius_fails_its_mandatory_checks_within_one_interval(
    farm: FarmFactory, freeradius: StartFreeRadius
) -> None:
    server = await freeradius()
    config, _ = farm({**SETTINGS, "servers": [_server_entry(server)]}, servers=("F",), clients=0)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        samples = await _queue(bus, bus.subjects.metrics("F"), MetricsSample)
        reports = await _queue(bus, bus.subjects.health("F"), HealthReport)
        async with running(evaluator.run, config), running(collector.run, config):
            up = await next_matching(
                samples, lambda s: all(_checks(s).values()) and len(s.services) == 3
            )
            assert {c.check for c in up.services} == {"radius", "process", "writable"}
            assert all(c.latency_s is not None for c in up.services)
            healthy = await next_matching(reports, lambda r: r.sample_id == up.id)
            assert healthy.health > 0

            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
            killed_at = time.time()
            down = await next_matching(samples, lambda s: not _checks(s)["auth-port"])
            # the next sample after the kill already says so: late by at most one
            # interval plus the checks' own timeout
            assert down.time - killed_at <= INTERVAL_S + CHECK_TIMEOUT_S + 0.3
            by_name = {c.name: c for c in down.services}
            assert by_name["auth-port"].kind == "mandatory"
            assert "no answer" in by_name["auth-port"].detail or "timed out" in (
                by_name["auth-port"].detail
            )
            radiusd = await next_matching(samples, lambda s: not _checks(s)["radiusd"])
            assert radiusd.time - killed_at <= 2 * INTERVAL_S + CHECK_TIMEOUT_S + 0.3
            zero = await next_matching(reports, lambda r: r.sample_id == down.id)
            assert zero.health == 0.0
            assert zero.limiting in ("status", "service:auth-port")


async def test_unwritable_log_directory_lowers_health_by_its_weight(
    farm: FarmFactory, freeradius: StartFreeRadius
) -> None:
    server = await freeradius()
    config, _ = farm({**SETTINGS, "servers": [_server_entry(server)]}, servers=("F",), clients=0)
    acct = server.directory / "radacct"
    moved = server.directory / "radacct.moved"
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        reports = await _queue(bus, bus.subjects.health("F"), HealthReport)
        async with running(evaluator.run, config), running(collector.run, config):
            before = await next_matching(reports, lambda r: r.parts != {} and not r.penalties)
            assert before.health == pytest.approx(min(before.parts.values()))

            # unwritable for root too: a regular file stands where the directory was
            acct.rename(moved)
            acct.write_text("not a directory\n")
            try:
                lowered = await next_matching(reports, lambda r: "acct-log" in r.penalties)
                assert lowered.penalties == {"acct-log": ACCT_WEIGHT}
                assert lowered.health == pytest.approx(
                    max(0.0, min(lowered.parts.values()) - ACCT_WEIGHT)
                )
                assert "acct-log" in lowered.reason
            finally:
                acct.unlink()
                moved.rename(acct)
            restored = await next_matching(reports, lambda r: r.parts != {} and not r.penalties)
            assert restored.health == pytest.approx(min(restored.parts.values()))
