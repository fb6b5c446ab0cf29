"""The reference RADIUS server as a service on real UDP, on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import pytest

from schemas.events import ServerControl
from services.aaa import service as aaa
from services.aaa.pool import WorkerPool
from services.radius import packet as radius
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import access_request, reply_values, status_request
from services.runtime.bus import Bus, Keyring, Signer
from services.runtime.config import Config, ConfigError
from tests.conftest import FarmFactory
from tests.support.aaa import ACTIVE, MAX, QUEUE, TOTAL, FakeClock, threads, wait_until
from tests.support.helpers import operator_bus, running, status, wait_ready, wait_status


async def client_for(config: Config, client_id: str, server_id: str) -> RadiusClient:
    client = config.client(client_id)
    server = config.server(server_id)
    return await RadiusClient.open(
        (server.ip, server.auth_port), config.read_secret(client.secret), bind_ip=client.ip
    )


ROOT = Path(__file__).resolve().parents[2]


def test_status_threads_active_is_the_windows_mean_rounded(farm: FarmFactory) -> None:
    config, _ = farm(clients=2, workers=8)
    (server,) = aaa.build_servers(config, only=["A"])
    clock = FakeClock(10.0)
    server.pool = WorkerPool("pool-t6", workers=8, queue_max=8, window_s=1.0, clock=clock)
    server.pool.start()
    try:
        server.pool.set_stalled(8)
        wait_until(lambda: server.pool.stats().busy == 8)
        clock.now = 10.05
        assert server.figures().threads_active == 0, "8 busy for 50 ms of a second"
        clock.now = 10.5
        assert server.figures().threads_active == 4
        clock.now = 10.8125
        assert server.figures().threads_active == 7, "6.5 rounds up"
        clock.now = 11.0
        figures = server.figures()
        assert (figures.threads_active, figures.threads_max, figures.queue_len) == (8, 8, 0)
    finally:
        server.pool.stop()
        assert server.pool.join(5) == 0


# --- the service on real UDP -------------------------------------------------


async def test_unknown_servers_are_refused_before_starting(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    with pytest.raises(ConfigError, match="Z"):
        await aaa.run(config, only=["Z"])
    no_reference = msgspec.structs.replace(
        config, servers=[msgspec.structs.replace(s, reference=None) for s in config.servers]
    )
    with pytest.raises(ConfigError, match="reference"):
        await aaa.run(no_reference)


async def test_access_accept_reject_and_drops(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    server = config.server("A")
    assert server.reference is not None and server.reference.pid_file is not None
    pid_file = config.path(server.reference.pid_file)
    async with running(aaa.run, config, only=["A"]):
        await wait_ready(config, "A")
        assert pid_file.read_text().strip() == str(os.getpid())
        assert not config.path(f"run/{config.servers[1].id}.pid").exists()

        status_secret = config.read_secret(server.status_secret)
        before = await status(config, "A")

        nas1 = await client_for(config, "nas-01", "A")
        nas2 = await client_for(config, "nas-02", "A")
        try:
            accept = await nas1.send(
                access_request(nas1.secret, "alice", "wonderland"), timeout_s=2
            )
            assert accept.code == radius.ACCESS_ACCEPT
            reject = await nas2.send(access_request(nas2.secret, "alice", "guess"), timeout_s=2)
            assert reject.code == radius.ACCESS_REJECT
            unknown_user = await nas1.send(access_request(nas1.secret, "eve", "x"), timeout_s=2)
            assert unknown_user.code == radius.ACCESS_REJECT

            # a client's packet under another client's secret: dropped
            with pytest.raises(RadiusTimeout):
                await nas2.send(access_request(nas1.secret, "alice", "wonderland"), timeout_s=0.3)
        finally:
            nas1.close()
            nas2.close()

        # a source address no client has, even with a right secret: dropped
        secret1 = config.read_secret(config.client("nas-01").secret)
        stranger = await RadiusClient.open(
            (server.ip, server.auth_port), secret1, bind_ip="127.0.2.1"
        )
        try:
            with pytest.raises(RadiusTimeout):
                await stranger.send(access_request(secret1, "alice", "wonderland"), timeout_s=0.3)
            with pytest.raises(RadiusTimeout):
                await stranger.send(status_request(secret1), timeout_s=0.3)
        finally:
            stranger.close()

        # the status secret works from any source
        monitor = await RadiusClient.open(
            (server.ip, server.auth_port), status_secret, bind_ip="127.0.2.1"
        )
        try:
            values = reply_values(await monitor.send(status_request(status_secret), timeout_s=2))
        finally:
            monitor.close()
        # as FreeRADIUS counts them, every datagram is an Access-Request: the 3 answered,
        # the 3 dropped, and this Status-Server
        requests = "FreeRADIUS-Total-Access-Requests"
        assert values[requests] - before[requests] == 3 + 3 + 1
        assert values["FreeRADIUS-Total-Auth-Responses"] == 3
        assert values["FreeRADIUS-Total-Access-Accepts"] == 1
        assert values["FreeRADIUS-Total-Access-Rejects"] == 2
        assert values["FreeRADIUS-Total-Auth-Dropped-Requests"] == 3
        assert (values[ACTIVE], values[TOTAL], values[MAX], values[QUEUE]) == (0, 8, 8, 0)

        # a client may ask for the statistics under its own secret
        nas1 = await client_for(config, "nas-01", "A")
        try:
            own = await nas1.send(status_request(nas1.secret), timeout_s=2)
            assert reply_values(own)[MAX] == 8
        finally:
            nas1.close()
    assert not pid_file.exists()
    assert not threads("aaa-A-worker")


async def test_control_stalls_workers_and_the_queue_grows(farm: FarmFactory) -> None:
    config, _ = farm(clients=2, workers=4)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "test")
        subject = bus.subjects.control("A")
        async with running(aaa.run, config, only=["A"]):
            await wait_ready(config, "A")
            idle = await status(config, "A")
            assert (idle[ACTIVE], idle[TOTAL], idle[MAX], idle[QUEUE]) == (0, 4, 4, 0)

            await bus.publish(subject, ServerControl(server="A", stalled_workers=2))
            values = await wait_status(config, "A", lambda v: v[ACTIVE] == 2)
            assert (values[TOTAL], values[MAX], values[QUEUE]) == (4, 4, 0)

            await bus.publish(subject, ServerControl(server="A", stalled_workers=4))
            await wait_status(config, "A", lambda v: v[ACTIVE] == 4)

            nas1 = await client_for(config, "nas-01", "A")
            try:
                pending = [
                    asyncio.create_task(
                        nas1.send(access_request(nas1.secret, "alice", "wonderland"), timeout_s=5)
                    )
                    for _ in range(5)
                ]
                values = await wait_status(config, "A", lambda v: v[QUEUE] == 5)
                assert values[ACTIVE] == 4
                assert not any(task.done() for task in pending)

                await bus.publish(subject, ServerControl(server="A", stalled_workers=0))
                replies = await asyncio.wait_for(asyncio.gather(*pending), 5)
                assert all(r.code == radius.ACCESS_ACCEPT for r in replies)
                await wait_status(config, "A", lambda v: v[ACTIVE] == 0 and v[QUEUE] == 0)

                # a forged control is dropped; a valid one with stalled_workers=None
                # changes only the service time
                forged = Signer("k1", b"not the bus key")
                await bus.publish(
                    subject, ServerControl(server="A", stalled_workers=4), signer=forged
                )
                await bus.publish(subject, ServerControl(server="A", service_time_ms=300))
                await bus.publish(subject, ServerControl(server="B", stalled_workers=4))
                await bus.nc.flush()
                deadline = time.monotonic() + 5
                while True:
                    started = time.monotonic()
                    reply = await nas1.send(
                        access_request(nas1.secret, "alice", "wonderland"), timeout_s=2
                    )
                    assert reply.code == radius.ACCESS_ACCEPT
                    if time.monotonic() - started >= 0.3:
                        break
                    assert time.monotonic() < deadline, "service time never changed"
                # the forged stall of every worker was not applied (a worker may
                # still be finishing the last request when the reply arrives)
                await wait_status(config, "A", lambda v: v[ACTIVE] == 0)
            finally:
                nas1.close()


async def test_overload_drops_when_the_queue_is_full_and_stops_promptly(
    farm: FarmFactory,
) -> None:
    config, _ = farm(clients=2, workers=2)
    small = msgspec.structs.replace(
        config,
        servers=[
            msgspec.structs.replace(s, reference=msgspec.structs.replace(s.reference, queue_max=3))
            if s.reference is not None
            else s
            for s in config.servers
        ],
    )
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(small.bus, Keyring.from_config(small), name="test", stack=stack)
        task_started = time.monotonic()
        async with running(aaa.run, small, only=["A", "B"]):
            await wait_ready(small, "A")
            await wait_ready(small, "B")
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", stalled_workers=2)
            )
            await wait_status(small, "A", lambda v: v[ACTIVE] == 2)
            nas1 = await client_for(small, "nas-01", "A")
            try:
                pending = [
                    asyncio.create_task(
                        nas1.send(access_request(nas1.secret, "alice", "wonderland"), timeout_s=5)
                    )
                    for _ in range(5)
                ]
                values = await wait_status(
                    small,
                    "A",
                    lambda v: v["FreeRADIUS-Total-Auth-Dropped-Requests"] == 2,
                )
                assert values[QUEUE] == 3
                assert values["FreeRADIUS-Total-Auth-Responses"] == 0
                # B is not affected by A's overload
                other = await status(small, "B")
                assert (other[ACTIVE], other[QUEUE]) == (0, 0)
                task_started = time.monotonic()
            finally:
                nas1.close()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        assert time.monotonic() - task_started < 5
    assert not threads("aaa-A-worker") and not threads("aaa-B-worker")


async def test_runs_as_a_process_and_exits_cleanly_on_sigterm(farm: FarmFactory) -> None:
    config, path = farm(clients=2)
    pid_file = config.path("run/A.pid")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.aaa",
        "-c",
        str(path),
        "--only",
        "A",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(wait_ready(config, "A"), 20)
        assert pid_file.read_text().strip() == str(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not pid_file.exists()
