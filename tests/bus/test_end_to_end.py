"""A whole incident across separate service processes on a real nats-server.

Server A's worker pool is stalled; the collector sees it, the evaluator opens
an incident, the targeter plans, the notifier tells A's clients (verified by
the agent under each client's own secret), they move and ack; when A recovers
the readmitter brings them back in waves spaced as configured, and every
client ends on its home server.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from schemas.events import Ack, ClientStatus, FailoverPlan, Incident, ReadmitWave, ServerControl
from services.launch.supervisor import Supervisor
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import Recorder

WAVE_INTERVAL_S = 1.0

SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {"failover_samples": 2, "recovery_samples": 2},
    "targeter": {"max_share": 1.0, "gain": 10.0},
    "notifier": {"ack_timeout_s": 1.0, "retries": 3},
    "readmitter": {"first_wave_size": 1, "wave_interval_s": WAVE_INTERVAL_S},
}


async def test_overload_failover_and_staged_readmission(farm: FarmFactory, tmp_path: Path) -> None:
    config, path = farm(SETTINGS, clients=6, client_rate=5.0)
    home_a = [c.id for c in config.clients if c.home == "A"]
    assert len(home_a) == 2
    supervisor = Supervisor(config, path, grace_s=10.0)
    recorder = Recorder()
    try:
        await asyncio.to_thread(supervisor.start)
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="test", stack=stack
            )
            await bus.subscribe(
                bus.subjects.all,
                recorder.on_event,
                types=(Incident, FailoverPlan, Ack, ReadmitWave, ClientStatus),
                accept_clients=True,
            )
            await _run_incident(config, bus, recorder, home_a)
    finally:
        statuses = await asyncio.to_thread(supervisor.stop)
    assert all(status == 0 for status in statuses.values()), statuses


async def _run_incident(config: Config, bus: Bus, recorder: Recorder, home_a: list[str]) -> None:
    await recorder.until(
        lambda: len(recorder.latest_status()) == len(config.clients), 20, "every client reporting"
    )
    workers = config.server("A").reference.workers  # type: ignore[union-attr]
    await bus.publish(
        bus.subjects.control("A"), ServerControl(server="A", stalled_workers=workers - 1)
    )

    def moved() -> bool:
        latest = recorder.latest_status()
        return all(latest[c].current != "A" for c in home_a)

    await recorder.until(moved, 20, "A's clients to move")
    opened = [i for i in recorder.of(Incident) if i.server == "A" and i.state == "opened"]
    assert len(opened) == 1
    (plan,) = [p for p in recorder.of(FailoverPlan) if p.server == "A"]
    assert sorted(m.client for m in plan.moves) == sorted(home_a)
    acks = [a for a in recorder.of(Ack) if a.server == "A" and a.accepted]
    assert sorted(a.client for a in acks) == sorted(home_a)
    assert all(a.now_on in ("B", "C") for a in acks)
    # no client of another server was touched
    latest = recorder.latest_status()
    assert all(s.current == s.home for s in latest.values() if s.home != "A")

    await bus.publish(bus.subjects.control("A"), ServerControl(server="A", stalled_workers=0))

    def closed_and_home() -> bool:
        latest = recorder.latest_status()
        closed = any(i.state == "closed" for i in recorder.of(Incident) if i.server == "A")
        return closed and all(s.current == s.home for s in latest.values())

    await recorder.until(closed_and_home, 30, "incident closed with every client home")
    waves = [w for w in recorder.of(ReadmitWave) if w.server == "A" and w.wave > 0]
    assert len(waves) >= 2
    readmitted = [c for w in waves for c in w.clients]
    assert sorted(readmitted) == sorted(home_a)
    # the waves that readmit are spaced; the final one, empty, follows once they are home
    *readmitting, final = waves
    gaps = [b.time - a.time for a, b in itertools.pairwise(readmitting)]
    assert all(gap >= WAVE_INTERVAL_S * 0.95 for gap in gaps), gaps
    assert final.final and final.clients == []
    assert not any(w.final for w in readmitting)
    states = [i.state for i in recorder.of(Incident) if i.server == "A"]
    assert states == ["opened", "recovering", "closed"]
