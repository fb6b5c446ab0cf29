"""The reference RADIUS server alone: its worker pool and its packets."""

from __future__ import annotations

import threading
import time

import pytest
from pyrad import packet

from services.aaa.packets import (
    ServerFigures,
    access_reply,
    check_password,
    decode,
    status_reply,
)
from services.aaa.pool import MARKS_PER_WINDOW, BusyWindow, WorkerPool
from services.radius import packet as radius
from services.radius.packet import Dropped, access_request, reply_values, status_request
from tests.support.aaa import ACTIVE, MAX, QUEUE, TOTAL, FakeClock, wait_until

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
