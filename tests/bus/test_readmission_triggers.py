"""Every way a client comes home, with the real services on a real bus.

Reference servers, collector, evaluator, targeter, notifier, readmitter and
agents run on the test's nats-server; the test only stalls and releases A's
workers, and reads what the services publish:

- **the client's timeout and request**: an agent's own return timer fires,
  it sends a ReadmitRequest, the readmitter answers (told to wait while the
  incident is opened or waves are staging, granted when no incident is in
  progress), the notifier sends the ReadmitNotice and the client is home;
- **the server's invitation**: the waves, a proper subset at a time, those
  that asked first;
- **the connection threshold**: no wave while A's health is below it.

Health here is the worker pool alone: the reference servers run inside the
test's process, so a CPU part would follow the machine rather than the stalls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec

from schemas.events import (
    Ack,
    ClientStatus,
    FailoverPlan,
    HealthReport,
    Incident,
    ReadmitRequest,
    ReadmitWave,
    ServerControl,
)
from services.aaa import service as aaa
from services.agent import service as agent
from services.agent.memory import ClientMemory, MemoryFile
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.launch.farm import THREADS_ONLY
from services.notifier import service as notifier
from services.readmitter import service as readmitter
from services.runtime.bus import Bus
from services.runtime.config import Config
from services.targeter import service as targeter
from tests.conftest import FarmFactory
from tests.support.helpers import Recorder, operator_bus, running

THRESHOLD = 0.6
SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {
        "failover_samples": 2,
        "recovery_samples": 2,
        "connection_threshold": THRESHOLD,
        **THREADS_ONLY,
    },
    "targeter": {"max_share": 1.0, "gain": 10.0},
    "notifier": {"ack_timeout_s": 1.0},
    "agent": {"status_interval_s": 0.5},
}
# 12 clients, round robin over A, B and C: A's are these, in the plan's order
HOME_A = ["nas-01", "nas-04", "nas-07", "nas-10"]
EVERY = (Incident, FailoverPlan, ReadmitWave, ReadmitRequest, Ack, ClientStatus, HealthReport)


def tuned(config: Config, **per_client: dict[str, Any]) -> Config:
    """``config`` with some clients' settings changed (by client id)."""
    clients = [msgspec.structs.replace(c, **per_client.get(c.id, {})) for c in config.clients]
    return msgspec.structs.replace(config, clients=clients)


@asynccontextmanager
async def farm_running(config: Config) -> AsyncIterator[tuple[Bus, Recorder]]:
    """Every service of ``config`` running, and a recorder of what they publish."""
    recorder = Recorder()
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        await bus.subscribe(bus.subjects.all, recorder.on_event, types=EVERY, accept_clients=True)
        async with (
            running(aaa.run, config),
            running(agent.run, config),
            running(targeter.run, config),
            running(notifier.run, config),
            running(readmitter.run, config),
            running(evaluator.run, config),
            running(collector.run, config),
        ):
            await recorder.until(
                lambda: {c.id for c in config.clients} <= set(recorder.latest_status()),
                20,
                "every client reporting",
            )
            yield bus, recorder


async def stall(bus: Bus, workers: int) -> None:
    await bus.publish(bus.subjects.control("A"), ServerControl(server="A", stalled_workers=workers))


def where(recorder: Recorder) -> dict[str, str]:
    return {c: s.current for c, s in recorder.latest_status().items()}


def incident_states(recorder: Recorder) -> list[str]:
    return [i.state for i in recorder.of(Incident) if i.server == "A"]


def waves_of_a(recorder: Recorder) -> list[ReadmitWave]:
    return [w for w in recorder.of(ReadmitWave) if w.server == "A"]


async def overload_until_moved(config: Config, bus: Bus, recorder: Recorder) -> None:
    """Stall every worker of A until each of its clients has moved off it."""
    await stall(bus, config.server("A").reference.workers)  # type: ignore[union-attr]
    await recorder.until(
        lambda: all(where(recorder)[c] != "A" for c in HOME_A), 20, "A's clients to move"
    )


async def test_clients_that_ask_on_their_timeout_are_told_to_wait_then_come_back_first(
    farm: FarmFactory,
) -> None:
    readmission = {"sizing": "fixed", "wave_size": 1, "wave_interval_s": 2.0}
    config, _ = farm(
        {**SETTINGS, "readmitter": {**readmission, "retry_after_s": 1.0}},
        clients=12,
        client_rate=2.0,
    )
    # nas-07 asks one second after its move, nas-10 four; the others never (by their
    # timers): they come home when a wave invites them
    timers = {c: {"return_after_s": 600.0} for c in HOME_A}
    timers["nas-07"] = {"return_after_s": 1.0, "return_jitter": 0.0}
    timers["nas-10"] = {"return_after_s": 4.0, "return_jitter": 0.0}
    config = tuned(config, **timers)
    async with farm_running(config) as (bus, recorder):
        await overload_until_moved(config, bus, recorder)

        def told_to_wait(client: str) -> bool:
            return any(w.wave == 0 and client in w.deferred for w in waves_of_a(recorder))

        # the incident is opened: nas-07's request is deferred, and its agent acks that
        await recorder.until(lambda: told_to_wait("nas-07"), 10, "nas-07 told to wait")
        assert incident_states(recorder) == ["opened"]
        await stall(bus, 0)

        def closed_and_home() -> bool:
            return "closed" in incident_states(recorder) and all(
                where(recorder)[c] == "A" for c in HOME_A
            )

        await recorder.until(closed_and_home, 40, "the incident closed with A's clients home")

    requests = [r for r in recorder.of(ReadmitRequest) if r.server == "A"]
    assert {r.client for r in requests} == {"nas-07", "nas-10"}
    assert all(r.reason == "timeout" for r in requests)
    answers = [w for w in waves_of_a(recorder) if w.wave == 0]
    # every request got an answer, and none was granted outright: staged, they were told
    # to wait (while opened, or until the next wave), and put first in a wave
    assert len(answers) == len(requests)
    assert all(w.clients == [] and len(w.deferred) == 1 for w in answers)
    assert any("is opened" in w.reason for w in answers if w.deferred == ["nas-07"])
    deferred_acks = [a for a in recorder.of(Ack) if a.reason == "deferred"]
    assert "nas-07" in {a.client for a in deferred_acks}
    # the server's invitations: one client at a time, the ones that asked first
    invited = [w.clients for w in waves_of_a(recorder) if w.wave > 0 and not w.final]
    assert all(len(clients) == 1 for clients in invited), invited
    order = [c for clients in invited for c in clients]
    assert sorted(order) == sorted(HOME_A)
    assert order[0] == "nas-07"  # it asked while the incident was opened
    assert order.index("nas-10") < order.index("nas-04"), order  # it asked, nas-04 did not
    assert "asked first" in next(w.reason for w in waves_of_a(recorder) if w.wave == 1)
    assert incident_states(recorder) == ["opened", "recovering", "closed"]


async def test_no_wave_goes_while_health_is_below_the_connection_threshold(
    farm: FarmFactory,
) -> None:
    config, _ = farm(
        {**SETTINGS, "readmitter": {"wave_interval_s": 1.0, "first_wave_size": 1}},
        clients=12,
        client_rate=2.0,
    )
    workers = config.server("A").reference.workers  # type: ignore[union-attr]
    async with farm_running(config) as (bus, recorder):
        await overload_until_moved(config, bus, recorder)
        await stall(bus, 0)
        await recorder.until(lambda: bool(waves_of_a(recorder)), 20, "the first wave")
        # most of A's workers stalled again: health between the thresholds, so the incident
        # stays recovering, but no wave may go
        await stall(bus, workers * 5 // 8)

        def low() -> bool:
            reports = [r for r in recorder.of(HealthReport) if r.server == "A"]
            return bool(reports) and 0.2 <= reports[-1].health < THRESHOLD

        await recorder.until(low, 10, "A's health between the thresholds")
        low_since = time.time()
        await asyncio.sleep(3.0)  # three wave intervals
        low_until = time.time()
        await stall(bus, 0)
        await recorder.until(
            lambda: "closed" in incident_states(recorder), 40, "the incident closed"
        )

    waves = [w for w in waves_of_a(recorder) if w.wave > 0]
    assert not [w for w in waves if low_since <= w.time <= low_until]
    # each wave went on a health at or above the threshold, and readmitted everyone once
    assert all(w.health is not None and w.health >= THRESHOLD for w in waves)
    assert sorted(c for w in waves for c in w.clients) == sorted(HOME_A)
    assert all(where(recorder)[c] == "A" for c in HOME_A)
    assert incident_states(recorder) == ["opened", "recovering", "closed"]


async def test_a_client_away_when_its_server_has_no_incident_asks_and_is_granted_at_once(
    farm: FarmFactory,
) -> None:
    config, _ = farm(SETTINGS, clients=3, client_rate=2.0)
    config = tuned(config, **{"nas-01": {"return_after_s": 1.0, "return_jitter": 0.0}})
    # its agent was stopped while nas-01 was on B, and starts again remembering it; A has no
    # incident: it asks on its timer and is let back at once
    state_dir = config.path(config.agent.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    MemoryFile(state_dir / "nas-01.json").save(
        ClientMemory(client="nas-01", current="B", return_at=time.time() + 2.0)
    )
    async with farm_running(config) as (_, recorder):
        assert where(recorder)["nas-01"] == "B"
        await recorder.until(lambda: where(recorder)["nas-01"] == "A", 20, "nas-01 home")

    (request,) = [r for r in recorder.of(ReadmitRequest) if r.client == "nas-01"]
    (granted,) = [w for w in waves_of_a(recorder) if w.wave == 0]
    assert granted.clients == ["nas-01"] and granted.deferred == []
    assert "no incident in progress" in granted.reason and granted.time >= request.time
    home = [a for a in recorder.of(Ack) if a.client == "nas-01" and a.now_on == "A"]
    assert home and home[0].accepted
    assert incident_states(recorder) == []
