"""Subscriptions handled as the connection is read (Bus.subscribe_now, BusClient's direct
dispatch) on a real nats-server: the same checks and drops as Bus.subscribe, events in
order one after another, a handler's rest awaited before the next, nats-py's slow-consumer
limits, and a drain that waits for what is queued."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import nats.aio.client
import nats.errors
import pytest

from schemas.events import HealthReport, MetricsSample
from schemas.signing import Rejected, sign_headers
from schemas.subjects import Subjects
from services.runtime.bus import Bus, BusClient, Keyring, Rest
from tests.conftest import FarmFactory


def _sample(server: str = "A", seq: int = 1, **kwargs: object) -> MetricsSample:
    return MetricsSample(server=server, seq=seq, status_ok=True, **kwargs)  # type: ignore[arg-type]


async def _bus(config: Any, stack: AsyncExitStack, name: str = "t") -> Bus:
    return await Bus.connect(config.bus, Keyring.from_config(config), name=name, stack=stack)


async def _until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_checks_and_drops_are_those_of_subscribe(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        got: list[MetricsSample] = []
        refused: list[int] = []

        def handler(event: MetricsSample) -> Rest | None:
            if event.seq == 13:
                refused.append(event.seq)
                raise Rejected("unlucky", "seq 13")
            if event.seq == 14:
                raise RuntimeError("a handler that fails")
            got.append(event)
            return None

        subject = bus.subjects.metrics("A")
        sub = await bus.subscribe_now(
            subject, handler, types=(MetricsSample,), guards=[lambda e: e.seq != 7]
        )
        assert isinstance(bus.nc, BusClient) and sub._id in bus.nc._direct
        good = _sample(queue_len=3)
        await bus.publish(subject, good)
        payload, headers = bus.encode(subject, _sample(seq=2))
        nc = bus.nc
        await nc.publish(subject, payload)  # unsigned
        await nc.publish(subject, payload.replace(b'"A"', b'"B"'), headers=headers)  # tampered
        await nc.publish(subject, payload, headers=sign_headers("k9", b"x", subject, payload))
        await nc.publish(subject, payload, headers=headers)
        await nc.publish(subject, payload, headers=headers)  # replayed
        # signed for another subject (the signature binds it)
        other, other_headers = bus.encode(bus.subjects.metrics("B"), _sample("B"))
        await nc.publish(subject, other, headers=other_headers)
        await bus.publish(
            subject,
            HealthReport(
                server="A",
                sample_id="x",
                health=1.0,
                failover_threshold=0.2,
                connection_threshold=0.6,
            ),
        )
        # twice each (what a key may sign and what a subject names are found once):
        # signed by a key that may not sign samples, and a sample of B on A's subject
        evaluator_key = bus.keyring.signer_for(bus.subjects.health("A"))
        assert evaluator_key is not None and evaluator_key.key_id.startswith("evaluator")
        wrong = _sample("B", seq=3)
        for _ in range(2):
            sample = _sample(seq=3)
            payload = bus.encode(subject, sample)[0]
            signed = sign_headers(evaluator_key.key_id, evaluator_key.key, subject, payload)
            await nc.publish(subject, payload, headers=signed)
            payload, headers = bus.encode(subject, wrong)
            await nc.publish(subject, payload, headers=headers)
            wrong = _sample("B", seq=4)
        for seq in (7, 13, 14, 15):
            await bus.publish(subject, _sample(seq=seq))
        await _until(lambda: bool(got) and got[-1].seq == 15)
        assert [e.seq for e in got] == [1, 2, 15]
        assert got[0] == good
        assert refused == [13]
        assert dict(bus.counters.dropped) == {
            "unsigned": 1,
            "bad-signature": 2,
            "unknown-key": 1,
            "replayed": 1,
            "unexpected-type": 1,
            "unlucky": 1,
            "key-not-allowed": 2,
            "wrong-subject": 2,
        }
        assert bus.counters.received == 16
        assert bus.counters.accepted == 6  # 1, 2, 7, 13, 14, 15
        assert bus.counters.handler_errors == 1
        assert bus.counters.handled["MetricsSample"] == 3


async def test_a_rest_is_awaited_before_the_next_event_and_reading_goes_on(
    farm: FarmFactory,
) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        order: list[str] = []
        release = asyncio.Event()

        async def wait_for_release(seq: int) -> None:
            order.append(f"rest {seq} starts")
            # a reply read from the same connection: the reading task is not held up
            await bus.nc.flush(timeout=5)
            await release.wait()
            order.append(f"rest {seq} done")

        def handler(event: MetricsSample) -> Rest | None:
            order.append(f"handled {event.seq}")
            if event.seq in (2, 5):
                return lambda: wait_for_release(event.seq)
            return None

        subject = bus.subjects.metrics("A")
        sub = await bus.subscribe_now(subject, handler, types=(MetricsSample,))
        for seq in range(1, 8):
            await bus.publish(subject, _sample(seq=seq))
        await bus.nc.flush()
        await _until(lambda: "rest 2 starts" in order and sub.pending_msgs == 5)
        await bus.nc.flush()  # the connection is read while the rest waits
        assert order == ["handled 1", "handled 2", "rest 2 starts"]
        release.set()
        await _until(lambda: "handled 7" in order)
        assert order == [
            "handled 1",
            "handled 2",
            "rest 2 starts",
            "rest 2 done",
            "handled 3",
            "handled 4",
            "handled 5",
            "rest 5 starts",
            "rest 5 done",
            "handled 6",
            "handled 7",
        ]
        # nothing queued or in hand: the next is handled as it is read again
        await _until(lambda: sub.pending_msgs == 0 and bus.nc._direct[sub._id].busy == 0)
        await bus.publish(subject, _sample(seq=8))
        await _until(lambda: order[-1] == "handled 8")
        assert bus.counters.handled["MetricsSample"] == 8


async def test_slow_consumer_limits_and_drain(farm: FarmFactory) -> None:
    config, _ = farm()
    errors: list[Exception] = []
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        nc = bus.nc
        assert isinstance(nc, BusClient)
        original_error_cb = nc._error_cb

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            await original_error_cb(exc)

        nc._error_cb = on_error
        got: list[bytes] = []
        release = asyncio.Event()

        def receive(subject: str, headers: dict[str, str] | None, data: bytes) -> Rest | None:
            got.append(data)
            if data == b"0":
                return _waiter(release)
            return None

        subject = bus.subjects.metrics("A")
        sub = await nc.subscribe_direct(subject, receive, pending_msgs_limit=3)
        for i in range(10):
            await nc.publish(subject, str(i).encode())
        await nc.flush()
        await _until(lambda: got == [b"0"] and len(errors) + sub.pending_msgs == 9)
        # the first is in hand (its rest waits); nats-py's queue takes 3 (the rest too, until
        # the subscription's task takes it from there) and the others are dropped as a
        # slow consumer's
        assert all(isinstance(e, nats.errors.SlowConsumerError) for e in errors)
        assert sub.pending_msgs in (2, 3) and len(errors) in (6, 7)
        queued = sub.pending_msgs
        draining = asyncio.ensure_future(sub.drain())
        await asyncio.sleep(0.1)
        assert not draining.done()  # a drain waits for what is queued and in hand
        release.set()
        await asyncio.wait_for(draining, 5)
        assert got == [str(i).encode() for i in range(1 + queued)]
        assert sub._id not in nc._direct


def _waiter(event: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def wait() -> None:
        await event.wait()

    return wait


async def test_a_receiver_that_raises_does_not_stop_the_reading(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        nc = bus.nc
        assert isinstance(nc, BusClient)
        seen: list[bytes] = []
        reported: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            reported.append(exc)

        nc._error_cb = on_error

        def receive(subject: str, headers: dict[str, str] | None, data: bytes) -> Rest | None:
            seen.append(data)
            if data == b"boom":
                raise ValueError("boom")
            return None

        subject = bus.subjects.metrics("A")
        await nc.subscribe_direct(subject, receive)
        for data in (b"a", b"boom", b"b"):
            await nc.publish(subject, data)
        await _until(lambda: seen == [b"a", b"boom", b"b"])
        assert [str(e) for e in reported] == ["boom"]
        await nc.flush(timeout=5)


async def test_a_bus_on_a_plain_client_has_no_direct_subscriptions() -> None:
    bus = Bus(nats.aio.client.Client(), Subjects("x"), Keyring(None))
    with pytest.raises(TypeError):
        await bus.subscribe_now("x.metrics.A", lambda e: None, types=(MetricsSample,))
