"""The evaluator's sample handler run as the bus reads the sample (``Evaluator.sample_now``):
the report published at once, the state's lock held until an incident is announced, and a
sample that comes while a wave holds the state waits for it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from schemas import codec
from schemas.events import Event, HealthReport, Incident, MetricsSample
from schemas.subjects import Subjects
from services.evaluator.service import Evaluator, ReportIds, StateLock
from services.launch.farm import write_farm
from services.runtime.bus import Bus, BusClient, Keyring
from services.runtime.config import Config
from services.runtime.lifecycle import Runtime

LOW, HIGH = 8, 1  # threads busy of 8: health 0 and 0.875


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg, _ = write_farm(tmp_path / "farm", bus_url=None, clients=0)
    return cfg


class Announced(Evaluator):
    """An evaluator whose incidents are recorded instead of sent to the stream."""

    announced: list[Incident]
    release: asyncio.Event

    async def _announce(self, incident: Incident) -> None:
        self.announced.append(incident)
        await self.release.wait()


def _evaluator(config: Config) -> Announced:
    nc = BusClient()
    nc._status = NatsClient.CONNECTED
    nc._flush_queue = asyncio.Queue(maxsize=1024)
    nc._flusher_task = asyncio.get_running_loop().create_future()
    nc._max_payload = 1024 * 1024
    bus = Bus(nc, Subjects(config.bus.prefix), Keyring.from_config(config, "evaluator"))
    rt = Runtime("evaluator", config, bus, AsyncExitStack())
    ev = Announced(rt, None, {s.id: s for s in config.servers})  # type: ignore[arg-type]
    ev.announced = []
    ev.release = asyncio.Event()
    return ev


def _sent(ev: Evaluator) -> list[Event]:
    """The events the evaluator's client has queued, decoded (HPUB commands)."""
    nc = ev.rt.bus.nc
    out = []
    for command in nc._pending:
        head, _, rest = command.partition(b"\r\n")
        hdr_len = int(head.split()[-2])
        out.append(codec.decode(rest[hdr_len:-2]))
    return out


def _sample(seq: int, busy: int) -> MetricsSample:
    return MetricsSample(server="A", seq=seq, status_ok=True, threads_active=busy)


async def test_a_sample_is_reported_at_once_and_an_incident_holds_the_state(
    config: Config,
) -> None:
    ev = _evaluator(config)
    assert ev.sample_now(_sample(1, HIGH)) is None
    (report,) = _sent(ev)
    assert isinstance(report, HealthReport)
    assert (report.server, report.health, report.state) == ("A", 0.875, "healthy")
    assert not ev._lock.locked()

    assert ev.sample_now(_sample(2, LOW)) is None  # low once: no incident yet
    rest = ev.sample_now(_sample(3, LOW))
    assert rest is not None  # the incident opens: announced after, with the state held
    assert ev._lock.locked()
    reports = _sent(ev)
    assert [r.state for r in reports if isinstance(r, HealthReport)][-1] == "overloaded"
    finishing = asyncio.ensure_future(rest())
    await asyncio.sleep(0)
    assert [i.state for i in ev.announced] == ["opened"] and ev._lock.locked()
    ev.release.set()
    await asyncio.wait_for(finishing, 5)
    assert not ev._lock.locked()


async def test_a_sample_waits_while_a_wave_holds_the_state(config: Config) -> None:
    ev = _evaluator(config)
    async with ev._lock:  # as on_wave holds it while it announces a closed incident
        rest = ev.sample_now(_sample(1, HIGH))
        assert rest is not None and _sent(ev) == []
        waiting = asyncio.ensure_future(rest())
        await asyncio.sleep(0.01)
        assert not waiting.done() and _sent(ev) == []
    await asyncio.wait_for(waiting, 5)
    (report,) = _sent(ev)
    assert isinstance(report, HealthReport) and report.health == 0.875
    assert not ev._lock.locked()


async def test_the_state_lock_is_taken_at_once_only_when_free() -> None:
    lock = StateLock()
    assert lock.take_now() and lock.locked()
    assert not lock.take_now()
    waiter = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    lock.release()
    assert not lock.take_now()  # one waits for it: it goes to the one that waits
    await asyncio.wait_for(waiter, 5)
    lock.release()
    assert lock.take_now()


async def test_report_ids_are_fresh_random_hex_as_new_ids_are(config: Config) -> None:
    ids = ReportIds()
    made = [ids(_sample(i, HIGH)) for i in range(3 * ReportIds.BATCH + 5)]
    assert len(set(made)) == len(made)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in made)
    ev = _evaluator(config)
    assert isinstance(ev.core.report_id, ReportIds)
    ev.sample_now(_sample(1, HIGH))
    ev.sample_now(_sample(2, HIGH))
    first, second = _sent(ev)
    assert first.id != second.id and len(first.id) == 32
