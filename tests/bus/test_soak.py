"""Soak: clients that send in lock-step open no incident; real overloads open one each.

Three reference servers of 8 workers, 30 clients. Every ``PERIOD_S`` each client
sends an Access-Request to its home server, all at the same instant, so each
server takes a burst of 10 requests at once: every worker is busy and 2
requests wait for ``SERVICE_TIME_MS``, then the workers are idle until the next
burst. The mean load is an eighth of what a server can serve (105 of 800
requests/s). The collector samples every 0.1 s. ``PERIOD_S`` is not a multiple
of that interval, so the samples sweep across the bursts (the beat is about
2 s) instead of landing at the same point of each, by the luck of the start.
When Threads-Active was the workers busy at the instant of the Status-Server,
13 to 16 % of the samples before the first overload read 8 of 8 busy, and this
soak opened 29 incidents in each of 3 runs, on all three servers, for its 3
real overloads. Now that it is the mean over the last second, it reads 1 of 8
throughout.

Then each server in turn has every worker stalled for a few seconds, as a hung
backend would. Exactly those overloads open incidents: one each, for the server
overloaded, after its overload began.

Health is the worker pool and the requests in flight (the ``outstanding`` part,
the lowest estimate of the last second, so a burst does not count): the servers
run inside the test's process, so its CPU part would follow the load of the
machine running the suite rather than the servers' own load.

About 30 s of wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack, suppress
from typing import Any

from schemas.events import Incident, MetricsSample, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.evaluator import service as evaluator
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import access_request
from services.runtime.bus import Bus
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import Recorder, operator_bus, running

PERIOD_S = 0.095
"""The clients' common send period: close to, not a multiple of, the collector interval."""
CLIENTS = 30
"""Each sends one Access-Request per tick: 10 per server at once, for 8 workers."""
WORKERS = 8
SERVICE_TIME_MS = 10.0
QUIET_S = 6.0
"""Lock-step load alone before the first overload: about three sweeps of the beat."""
STALL_S = 3.0
"""How long every worker of an overloaded server stays stalled."""
SETTLE_S = 3.0
"""Lock-step load alone after each overload has recovered."""
OVERLOADED = ("A", "B", "C")

SETTINGS: dict[str, Any] = {
    # Everything shares the test's event loop, which a full garbage collection pauses
    # for 20-30 ms; two Status-Server timeouts in a row would be an incident (health 0).
    "collector": {"interval_s": 0.1, "status_timeout_s": 0.09},
    "evaluator": {
        "rule": "weighted",
        "weights": {
            **dict.fromkeys(("queue", "memory", "cpu", "processes"), 0.0),
            **dict.fromkeys(("latency", "clients"), 0.0),
            "threads": 1.0,
            "outstanding": 1.0,
        },
    },
}


async def lock_step(clients: list[RadiusClient], stop: asyncio.Event, lost: list[float]) -> None:
    """Every ``PERIOD_S``, every client sends a request to its home server, all at once.

    ``lost`` gets the time each unanswered request was sent.
    """

    async def one(client: RadiusClient) -> None:
        sent_at = time.time()
        try:
            await client.send(access_request(client.secret, "alice", "wonderland"), timeout_s=1.0)
        except RadiusTimeout:
            lost.append(sent_at)

    loop = asyncio.get_running_loop()
    next_at = loop.time()
    async with asyncio.TaskGroup() as group:
        while not stop.is_set():
            for client in clients:
                group.create_task(one(client))
            next_at += PERIOD_S
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


async def open_clients(config: Config, stack: AsyncExitStack) -> list[RadiusClient]:
    """Each client's socket to its home server, from the client's own address."""
    clients = []
    for client in config.clients:
        home = config.server(client.home)
        radius = await RadiusClient.open(
            (home.ip, home.auth_port), config.read_secret(client.secret), bind_ip=client.ip
        )
        stack.callback(radius.close)
        clients.append(radius)
    return clients


def opened(recorder: Recorder, server: str | None = None) -> list[Incident]:
    return [
        i
        for i in recorder.of(Incident)
        if i.state == "opened" and (server is None or i.server == server)
    ]


def describe(recorder: Recorder, overloads: dict[str, tuple[float, float]], t0: float) -> str:
    incidents = [
        f"{i.server} {i.state} at {i.time - t0:.1f}s (health {i.health:.2f})"
        for i in recorder.of(Incident)
    ]
    spans = {s: (round(a - t0, 1), round(b - t0, 1)) for s, (a, b) in overloads.items()}
    return f"overloads {spans}; incidents: {incidents}"


async def overload(bus: Bus, recorder: Recorder, server: str) -> tuple[float, float]:
    """Stall every worker of ``server`` for ``STALL_S``; return when it began and ended."""
    subject = bus.subjects.control(server)
    began = time.time()
    await bus.publish(subject, ServerControl(server=server, stalled_workers=WORKERS))
    await recorder.until(lambda: bool(opened(recorder, server)), 15, f"{server}'s incident")
    await asyncio.sleep(max(0.0, began + STALL_S - time.time()))
    ended = time.time()
    await bus.publish(subject, ServerControl(server=server, stalled_workers=0))
    await recorder.until(
        lambda: any(i.server == server and i.state == "recovering" for i in recorder.of(Incident)),
        15,
        f"{server} recovering",
    )
    return began, ended


async def test_lock_step_clients_open_no_incident_real_overloads_one_each(
    farm: FarmFactory,
) -> None:
    config, _ = farm(SETTINGS, clients=CLIENTS, workers=WORKERS, service_time_ms=SERVICE_TIME_MS)
    recorder = Recorder()
    samples: list[MetricsSample] = []
    lost: list[float] = []
    overloads: dict[str, tuple[float, float]] = {}
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        await bus.subscribe(bus.subjects.incident("*"), recorder.on_event, types=(Incident,))

        async def on_sample(sample: MetricsSample) -> None:
            samples.append(sample)

        await bus.subscribe(bus.subjects.metrics("*"), on_sample, types=(MetricsSample,))
        async with (
            running(aaa.run, config),
            running(evaluator.run, config),
            running(collector.run, config),
        ):
            clients = await open_clients(config, stack)
            stop = asyncio.Event()
            load = asyncio.create_task(lock_step(clients, stop, lost))
            try:
                t0 = time.time()
                await asyncio.sleep(QUIET_S)
                quiet_end = time.time()
                for server in OVERLOADED:
                    overloads[server] = await overload(bus, recorder, server)
                    await asyncio.sleep(SETTLE_S)
            finally:
                stop.set()
                await asyncio.wait_for(load, 10)

    quiet = [s for s in samples if t0 + 1.0 <= s.time <= quiet_end and s.status_ok]
    # the load is lock-step: some instants found every worker busy and requests waiting
    # (the queue is read at the instant) ...
    assert any(s.queue_len for s in quiet), Counter(s.queue_len for s in quiet)
    # ... far below capacity: nothing lost before the overloads, and the busy workers
    # reported, a mean over the last second, stay a small share of the pool
    assert not [sent_at for sent_at in lost if sent_at < quiet_end - PERIOD_S]
    active = Counter(s.threads_active for s in quiet)
    assert active and max(n or 0 for n in active) < WORKERS // 2, active
    # so do the requests in flight: the lowest estimate of the last second, not a burst
    in_flight = Counter(s.outstanding for s in quiet if s.outstanding is not None)
    assert in_flight and max(in_flight) < WORKERS // 2, in_flight

    what = describe(recorder, overloads, t0)
    assert len(opened(recorder)) == len(OVERLOADED), what
    for incident, server in zip(opened(recorder), OVERLOADED, strict=True):
        began, ended = overloads[server]
        assert incident.server == server, what
        assert began < incident.time < ended, what
