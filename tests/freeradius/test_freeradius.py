"""The collector against a real FreeRADIUS 3.2, loaded by a real radclient, over a real bus."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import psutil

from schemas.events import MetricsSample
from services.collector import service as collector
from services.runtime.bus import Bus
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.freeradius import PASSWORD, USER, FreeRadius, StartFreeRadius
from tests.support.helpers import next_matching, operator_bus, running

INTERVAL_S = 0.5
TIMEOUT_S = 0.3
FAST = {"collector": {"interval_s": INTERVAL_S, "status_timeout_s": TIMEOUT_S}}


def farm_with(farm: FarmFactory, server: FreeRadius) -> Config:
    """A farm whose only server is ``server``, as server F."""
    config, _ = farm({**FAST, "servers": [server.entry("F")]}, servers=("F",), clients=0)
    return config


async def _subscribe(bus: Bus) -> asyncio.Queue[MetricsSample]:
    got: asyncio.Queue[MetricsSample] = asyncio.Queue()

    async def handler(event: MetricsSample) -> None:
        await got.put(event)

    await bus.subscribe(bus.subjects.metrics("F"), handler, types=(MetricsSample,))
    return got


@contextlib.asynccontextmanager
async def load(server: FreeRadius, count: int = 200, parallel: int = 20) -> AsyncIterator[None]:
    """radclient sending Access-Requests for alice in a loop until the block ends."""
    stopping = asyncio.Event()
    request = f'User-Name = "{USER}", User-Password = "{PASSWORD}"\n'.encode()

    async def loop() -> None:
        while not stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *server.radclient(count, parallel),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate(request)
            assert proc.returncode == 0, f"radclient failed: {err.decode(errors='replace')}"

    task = asyncio.create_task(loop(), name="radclient load")
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def test_collector_reads_queues_rates_and_threads_of_freeradius(
    farm: FarmFactory, freeradius: StartFreeRadius
) -> None:
    server = await freeradius(max_servers=16, start_servers=4)
    config = farm_with(farm, server)
    assert server.process is not None
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus)
        async with running(collector.run, config):
            first = await next_matching(got, lambda s: s.status_ok)
            # queue lengths and packets per second come live from Status-Server
            for name in (
                "queue_len",
                "queue_len_internal",
                "queue_len_acct",
                "queue_len_proxy",
                "queue_len_detail",
                "pps_in",
                "pps_out",
            ):
                assert getattr(first, name) is not None, name
                assert first.sources[name] == "status-server", name
            # FreeRADIUS 3.2 sends no thread figures: they come from its process and radiusd.conf
            assert first.threads_max == 16 and first.sources["threads_max"] == "radiusd.conf"
            threads_now = psutil.Process(server.process.pid).num_threads()
            assert first.threads_total is not None and first.sources["threads_total"] == "process"
            assert abs(first.threads_total - threads_now) <= 2
            assert first.threads_total > 4
            assert first.process_tree_count is not None and first.process_tree_count >= 1
            assert first.sources["process_tree_count"] == "process"
            assert first.sources["memory_percent"] == "process"
            assert first.sources["cpu_percent"] == "process"
            assert first.memory_percent is not None and first.memory_percent > 0

            # from the second reading on, rates and the busy-thread estimate are there
            idle = await next_matching(got, lambda s: s.status_ok and s.seq > first.seq)
            assert idle.threads_active is not None and idle.sources["threads_active"] == "process"
            assert idle.auth_responses_per_s == 0
            assert idle.acct_requests_per_s == 0 and idle.acct_responses_per_s == 0
            # FreeRADIUS counts each Status-Server probe as an Access-Request
            assert idle.access_requests_per_s is not None
            assert idle.access_requests_per_s < 3 / INTERVAL_S
            assert not any("rates" in e or "threads_active" in e for e in idle.errors)

            async with load(server):
                busy = await next_matching(
                    got,
                    lambda s: (
                        (s.auth_responses_per_s or 0) > 50 and (s.access_requests_per_s or 0) > 50
                    ),
                )
                assert busy.status_ok
                assert busy.threads_active is not None and busy.threads_active >= 1
                assert busy.threads_max == 16
                assert busy.queue_len is not None and busy.pps_in is not None

            # once radclient has stopped, the rates fall back to the probes' own trickle
            quiet = await next_matching(
                got,
                lambda s: s.auth_responses_per_s is not None and s.auth_responses_per_s < 1,
            )
            assert quiet.access_requests_per_s is not None
            assert quiet.access_requests_per_s < 3 / INTERVAL_S


async def test_a_stopped_freeradius_is_seen_within_one_interval_and_a_restart_resets_rates(
    farm: FarmFactory, freeradius: StartFreeRadius
) -> None:
    server = await freeradius()
    config = farm_with(farm, server)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus)
        async with running(collector.run, config):
            first = await next_matching(got, lambda s: s.status_ok)
            await next_matching(
                got, lambda s: s.seq > first.seq and s.access_requests_per_s is not None
            )

            await asyncio.to_thread(server.stop)
            stopped_at = time.monotonic()
            down = await next_matching(got, lambda s: not s.status_ok, timeout_s=5)
            assert time.monotonic() - stopped_at <= INTERVAL_S + TIMEOUT_S + 0.5
            assert any(
                f"no answer from 127.0.0.1:{server.status_port} within the {TIMEOUT_S:g}s timeout"
                in e
                for e in down.errors
            ), down.errors
            assert down.queue_len is None and down.threads_active is None
            assert down.access_requests_per_s is None and down.threads_total is None
            assert any("freeradius.pid" in e for e in down.errors), down.errors

            # the same server again: its counters started over, so no rates this time
            server.start()
            await server.wait_ready()
            back = await next_matching(got, lambda s: s.status_ok)
            assert back.access_requests_per_s is None and back.auth_responses_per_s is None
            assert any("restart" in e for e in back.errors), back.errors
            assert back.queue_len is not None and back.threads_max == 16
            later = await next_matching(got, lambda s: s.status_ok and s.seq > back.seq)
            assert later.access_requests_per_s is not None
