"""The collector on a real nats-server: MetricsSamples with live figures and errors, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress

import pytest

from schemas.events import MetricsSample, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.radius.client import RadiusClient, RadiusTimeout, query_status
from services.radius.packet import access_request
from services.runtime.bus import Bus
from services.runtime.config import Config, ConfigError
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running, wait_ready

FAST = {"collector": {"interval_s": 0.3, "status_timeout_s": 0.2}}


# --- the service on the bus --------------------------------------------------


async def _next(
    queue: asyncio.Queue[MetricsSample],
    check: Callable[[MetricsSample], bool],
    timeout_s: float = 10,
) -> MetricsSample:
    """The next sample that passes ``check``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no sample passed the check in time")
        sample = await asyncio.wait_for(queue.get(), remaining)
        if check(sample):
            return sample


async def _subscribe(bus: Bus, config: Config) -> asyncio.Queue[MetricsSample]:
    got: asyncio.Queue[MetricsSample] = asyncio.Queue()

    async def handler(event: MetricsSample) -> None:
        await got.put(event)

    await bus.subscribe(bus.subjects.metrics("*"), handler, types=(MetricsSample,))
    return got


async def test_collector_publishes_live_figures_and_errors(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=2, workers=4)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(aaa.run, config, only=["A"]):
            await wait_ready(config, "A")
            async with running(collector.run, config):
                a = await _next(got, lambda s: s.server == "A" and s.status_ok)
                assert (a.threads_active, a.threads_total, a.threads_max, a.queue_len) == (
                    0,
                    4,
                    4,
                    0,
                )
                assert a.process_threads is not None and a.process_threads >= 4
                assert a.memory_percent is not None and a.memory_percent > 0
                assert a.cpu_percent is not None
                assert a.process_count is not None and a.process_count > 1
                for name in ("threads_active", "threads_total", "threads_max", "queue_len"):
                    assert a.sources[name] == "status-server", name
                assert a.sources["memory_percent"] == "process"
                assert a.sources["process_count"] == "host"
                assert a.process_tree_count is not None and a.process_tree_count >= 1
                # the reference server sends every figure the collector reads
                assert not [e for e in a.errors if e.startswith("status reply lacks")]
                assert (a.queue_len_acct, a.queue_len_internal) == (0, 0)
                assert a.pps_in is not None and a.pps_out is not None
                a2 = await _next(got, lambda s: s.server == "A" and s.seq > a.seq and s.status_ok)
                assert a2.errors == []
                assert a2.auth_responses_per_s is not None
                assert a2.access_requests_per_s is not None and a2.access_requests_per_s >= 0
                assert a2.sources["access_requests_per_s"] == "status-server"

                b = await _next(got, lambda s: s.server == "B")
                assert not b.status_ok
                assert b.threads_active is None and b.queue_len is None
                assert b.process_threads is None and b.cpu_percent is None
                assert any("no answer" in e for e in b.errors)
                assert any("B.pid" in e for e in b.errors)
                assert b.process_count is not None

                await bus.publish(
                    bus.subjects.control("A"), ServerControl(server="A", stalled_workers=3)
                )
                stalled = await _next(got, lambda s: s.server == "A" and s.threads_active == 3)
                assert stalled.status_ok and stalled.threads_max == 4

                seqs: dict[str, list[int]] = {"A": [], "B": [], "C": []}
                while min(len(v) for v in seqs.values()) < 3:
                    sample = await asyncio.wait_for(got.get(), 5)
                    seqs[sample.server].append(sample.seq)
                for server, numbers in seqs.items():
                    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), server

        # A stopped: its samples now say so
        async with running(collector.run, config, only=["A"]):
            down = await _next(got, lambda s: s.server == "A" and not s.status_ok)
            assert down.threads_active is None
            assert any("no answer" in e for e in down.errors)


async def test_a_slow_server_does_not_hold_up_the_others(farm: FarmFactory) -> None:
    config, _ = farm(
        {"collector": {"interval_s": 1.0, "status_timeout_s": 0.8}}, clients=2, workers=2
    )
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(aaa.run, config, only=["A"]):
            await wait_ready(config, "A")
            async with running(collector.run, config, only=["A", "B"]):
                # in each round, A's answer is published long before B's probe times out
                for _ in range(2):
                    a = await _next(got, lambda s: s.server == "A")
                    a_at = time.monotonic()
                    b = await _next(got, lambda s: s.server == "B")
                    assert a.status_ok and not b.status_ok
                    assert time.monotonic() - a_at > 0.4


async def test_sequence_numbers_survive_a_restart(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=2)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(collector.run, config, only=["C"]):
            first = await _next(got, lambda s: s.server == "C")
            later = await _next(got, lambda s: s.server == "C" and s.seq > first.seq)
        async with running(collector.run, config, only=["C"]):
            again = await _next(got, lambda s: s.server == "C")
        assert again.seq > later.seq


async def test_unknown_servers_are_refused(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    with pytest.raises(ConfigError, match="Z"):
        await collector.run(config, only=["Z"])


async def test_a_monitor_reading_statistics_is_not_read_as_requests_in_flight(
    farm: FarmFactory,
) -> None:
    """Someone else reads A's statistics 4 times a second, as bench/incident.py does: A counts
    each as an Access-Request never answered, as FreeRADIUS does. The samples read nothing in
    flight before A's stall, the requests it holds during it, and nothing once it is released
    (with the cap at all of A's threads they read 4 of 4 in flight from the first seconds on,
    idle or not, and never came down)."""
    config, _ = farm(FAST, servers=("A",), clients=1, workers=4)
    server, client = config.server("A"), config.clients[0]
    stop = asyncio.Event()

    async def monitor() -> None:
        secret = config.read_secret(server.status_secret)
        while not stop.is_set():
            with suppress(RadiusTimeout):
                await query_status((server.ip, server.auth_port), secret, timeout_s=0.2)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        secret = config.read_secret(client.secret)
        nas = await RadiusClient.open((server.ip, server.auth_port), secret, bind_ip=client.ip)
        stack.callback(nas.close)
        async with running(aaa.run, config, only=["A"]), asyncio.TaskGroup() as group:
            await wait_ready(config, "A")
            group.create_task(monitor())
            try:
                async with running(collector.run, config, only=["A"]):
                    first = await _next(got, lambda s: s.outstanding is not None)
                    # 3 s of the monitor alone: 12 requests never answered, nothing in flight
                    calm = [first]
                    while calm[-1].seq < first.seq + 10:
                        calm.append(await _next(got, lambda s: True))
                    outstanding = [s.outstanding for s in calm]
                    assert outstanding == [0] * len(calm), outstanding

                    control = bus.subjects.control("A")
                    await bus.publish(control, ServerControl(server="A", stalled_workers=4))
                    await _next(got, lambda s: s.threads_active == 4)
                    held = [
                        group.create_task(
                            nas.send(access_request(secret, "alice", "wonderland"), timeout_s=10)
                        )
                        for _ in range(6)
                    ]
                    stalled = await _next(got, lambda s: (s.outstanding or 0) >= 6)
                    assert stalled.queue_len == 6, stalled

                    await bus.publish(control, ServerControl(server="A", stalled_workers=0))
                    await asyncio.wait_for(asyncio.gather(*held), 5)
                    released = await _next(got, lambda s: s.outstanding == 0, timeout_s=3)
                    after = [released]
                    while after[-1].seq < released.seq + 4:
                        after.append(await _next(got, lambda s: True))
                    outstanding = [s.outstanding for s in after]
                    assert outstanding == [0] * len(after), outstanding
            finally:
                stop.set()
