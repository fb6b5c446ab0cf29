"""The reference RADIUS server: its worker pool, its packets, and the service on real UDP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import pytest
from pyrad import packet

from schemas.events import ServerControl
from services.aaa import service as aaa
from services.aaa.packets import (
    ServerFigures,
    access_reply,
    check_password,
    decode,
    status_reply,
)
from services.aaa.pool import MARKS_PER_WINDOW, BusyWindow, WorkerPool
from services.radius import packet as radius
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import Dropped, access_request, reply_values, status_request
from services.runtime.bus import Bus, Keyring, Signer
from services.runtime.config import Config, ConfigError
from tests.conftest import FarmFactory
from tests.helpers import operator_bus, running, status, wait_ready, wait_status

# --- helpers ------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` (a thread-side condition) until true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


async def client_for(config: Config, client_id: str, server_id: str) -> RadiusClient:
    client = config.client(client_id)
    server = config.server(server_id)
    return await RadiusClient.open(
        (server.ip, server.auth_port), config.read_secret(client.secret), bind_ip=client.ip
    )


ROOT = Path(__file__).resolve().parent.parent
ACTIVE = "FreeRADIUS-Stats-Threads-Active"
TOTAL = "FreeRADIUS-Stats-Threads-Total"
MAX = "FreeRADIUS-Stats-Threads-Max"
QUEUE = "FreeRADIUS-Queue-Len-Auth"


# --- the pool ----------------------------------------------------------------


def test_pool_stalls_queues_drops_and_releases() -> None:
    pool = WorkerPool("pool-t1", workers=3, queue_max=2)
    pool.start()
    try:
        assert pool.stats().alive == 3
        pool.set_stalled(3)
        wait_until(lambda: pool.stats().stalled == 3)
        assert pool.stats().busy == 3

        done = [threading.Event() for _ in range(3)]
        assert pool.submit(done[0].set)
        assert pool.submit(done[1].set)
        assert not pool.submit(done[2].set), "a full queue must refuse the job"
        assert pool.stats().queued == 2
        assert not done[0].is_set()

        pool.set_stalled(1)
        assert done[0].wait(5) and done[1].wait(5)
        wait_until(lambda: pool.stats().busy == 1 and pool.stats().stalled == 1)
        assert pool.stats().queued == 0
        assert not done[2].is_set()
    finally:
        pool.stop()
        assert pool.join(5) == 0
    assert pool.stats().alive == 0


def test_pool_service_time_and_a_failing_job() -> None:
    pool = WorkerPool("pool-t2", workers=1, queue_max=4, service_time_s=0.2)
    pool.start()
    try:
        finished = threading.Event()

        def fail() -> None:
            raise RuntimeError("boom")

        started = time.monotonic()
        assert pool.submit(fail)
        assert pool.submit(finished.set)
        assert finished.wait(5)
        assert time.monotonic() - started >= 0.4
        wait_until(lambda: pool.stats().completed == 2)
    finally:
        pool.stop()
        assert pool.join(5) == 0


def test_pool_stop_releases_stalled_workers_and_cuts_service_time() -> None:
    pool = WorkerPool("pool-t3", workers=2, queue_max=8, service_time_s=30)
    pool.start()
    pool.set_stalled(1)
    wait_until(lambda: pool.stats().stalled == 1)
    ran = threading.Event()
    assert pool.submit(ran.set)
    assert pool.submit(ran.set)
    wait_until(lambda: pool.stats().busy == 2)
    started = time.monotonic()
    assert pool.stop() == 1
    assert pool.join(5) == 0
    assert time.monotonic() - started < 2


class FakeClock:
    """A clock the test moves; the pool's worker threads read it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_pool_busy_mean_a_burst_that_fills_every_worker_reads_as_its_share() -> None:
    clock = FakeClock(100.0)
    pool = WorkerPool("pool-t4", workers=8, queue_max=16, window_s=1.0, clock=clock)
    pool.start()
    release = threading.Event()

    def hold() -> None:
        release.wait(5)

    try:
        clock.now = 101.0
        for _ in range(8):
            assert pool.submit(hold)
        wait_until(lambda: pool.stats().busy == 8)
        assert pool.stats().busy_mean == 0.0
        clock.now = 101.010
        release.set()
        wait_until(lambda: pool.stats().busy == 0)
        clock.now = 101.5
        stats = pool.stats()
        assert stats.busy == 0
        assert stats.busy_mean == pytest.approx(0.01 * 8)
        clock.now = 102.0
        assert pool.stats().busy_mean == pytest.approx(0.01 * 8)
        clock.now = 102.005
        assert pool.stats().busy_mean == pytest.approx(0.005 * 8)
        clock.now = 102.5
        assert pool.stats().busy_mean == pytest.approx(0.0)
    finally:
        release.set()
        pool.stop()
        assert pool.join(5) == 0


def test_pool_busy_mean_a_stall_of_every_worker_reads_all_busy_once_the_window_passed() -> None:
    clock = FakeClock(50.0)
    pool = WorkerPool("pool-t5", workers=4, queue_max=4, window_s=1.0, clock=clock)
    pool.start()
    try:
        pool.set_stalled(4)
        wait_until(lambda: pool.stats().stalled == 4)
        clock.now = 50.5
        assert pool.stats().busy_mean == pytest.approx(2.0)
        clock.now = 51.0
        assert pool.stats().busy_mean == pytest.approx(4.0)
        clock.now = 60.0
        assert pool.stats().busy_mean == pytest.approx(4.0)
        pool.set_stalled(0)
        wait_until(lambda: pool.stats().busy == 0)
        clock.now = 60.25
        assert pool.stats().busy_mean == pytest.approx(3.0)
        clock.now = 61.0
        assert pool.stats().busy_mean == pytest.approx(0.0)
    finally:
        pool.stop()
        assert pool.join(5) == 0


def test_busy_window_keeps_a_bounded_memory_of_many_changes() -> None:
    """A million changes in one window: at most MARKS_PER_WINDOW marks, a mean within bound."""
    window = BusyWindow(1.0, 0.0)
    for i in range(500_000):
        start = 1.0 + i * 2e-6
        window.add(8, start)
        window.add(-8, start + 1e-6)
    # every worker busy half of [1.0, 2.0]
    assert len(window._marks) <= MARKS_PER_WINDOW + 1
    assert window.mean(2.0) == pytest.approx(4.0, abs=8 / MARKS_PER_WINDOW)
    with pytest.raises(ValueError):
        BusyWindow(0.0, 0.0)


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


# --- packets -----------------------------------------------------------------


def _decoded(secret: bytes, user: str, password: str, decode_secret: bytes) -> packet.AuthPacket:
    raw = access_request(secret, user, password).RequestPacket()
    return decode(raw, decode_secret)


def test_packets_authenticate_and_answer() -> None:
    secret = b"s3cret"
    users = {"alice": "wonderland"}
    request = _decoded(secret, "alice", "wonderland", secret)
    assert check_password(request, users)
    assert not check_password(_decoded(secret, "alice", "nope", secret), users)
    assert not check_password(_decoded(secret, "bob", "wonderland", secret), users)

    sent = access_request(secret, "alice", "wonderland")
    raw = sent.RequestPacket()
    reply_raw = access_reply(decode(raw, secret), accepted=False)
    reply = sent.CreateReply(packet=reply_raw)
    assert reply.code == radius.ACCESS_REJECT
    assert sent.VerifyReply(reply, reply_raw, enforce_ma=True)

    with pytest.raises(Dropped) as info:
        _decoded(secret, "alice", "wonderland", b"other")
    assert info.value.reason == "bad-authenticator"

    bare = packet.AuthPacket(secret=secret, dict=radius.dictionary())
    bare["User-Name"] = "alice"
    with pytest.raises(Dropped) as info:
        decode(bare.RequestPacket(), secret)
    assert info.value.reason == "no-message-authenticator"

    with pytest.raises(Dropped) as info:
        decode(b"\x01\x02\x00\x30" + b"\x00" * 16, secret)
    assert info.value.reason == "malformed"


def test_status_reply_carries_statistics_only_when_asked() -> None:
    secret = b"status"
    figures = ServerFigures(
        threads_active=3,
        threads_total=8,
        threads_max=8,
        queue_len=5,
        requests=10,
        accepts=7,
        rejects=2,
        dropped=1,
    )
    asked = status_request(secret)
    raw = asked.RequestPacket()
    reply = asked.CreateReply(packet=status_reply(decode(raw, secret), figures))
    assert asked.VerifyReply(reply, enforce_ma=True)
    values = reply_values(reply)
    assert (values[ACTIVE], values[TOTAL], values[MAX], values[QUEUE]) == (3, 8, 8, 5)
    assert values["FreeRADIUS-Total-Access-Accepts"] == 7

    plain = packet.AuthPacket(code=radius.STATUS_SERVER, secret=secret, dict=radius.dictionary())
    plain.add_message_authenticator()
    raw = plain.RequestPacket()
    reply = plain.CreateReply(packet=status_reply(decode(raw, secret), figures))
    assert reply.code == radius.ACCESS_ACCEPT
    assert ACTIVE not in reply_values(reply)


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
