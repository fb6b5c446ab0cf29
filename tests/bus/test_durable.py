"""Durable consumers on a real nats-server: what waits for a service, and what comes again."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import msgspec
import pytest

from schemas.events import Incident
from services.runtime import durable
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from services.runtime.durable import consume, publish_stored
from tests.conftest import FarmFactory


def _incident(state: str = "opened", **kwargs: object) -> Incident:
    return Incident(
        server="A",
        incident_id="i-1",
        state=state,  # type: ignore[arg-type]
        health=0.1,
        opened_at=1.0,
        **kwargs,  # type: ignore[arg-type]
    )


async def _bus(config: Config, stack: AsyncExitStack, name: str = "t") -> Bus:
    bus = await Bus.connect(config.bus, Keyring.from_config(config), name=name, stack=stack)
    await bus.ensure_stream(max_age_s=600, max_bytes=1 << 24)
    return bus


async def _taking(
    config: Config, got: asyncio.Queue[Incident], *, fail_first: bool = False
) -> AsyncExitStack:
    """A consumer ``c-incident`` of incident.A that puts what it handles on ``got``."""
    stack = AsyncExitStack()
    bus = await _bus(config, stack, "consumer")
    failed: list[str] = []

    async def handler(incident: Incident) -> None:
        if fail_first and not failed:
            failed.append(incident.id)
            raise RuntimeError("the store is away")
        await got.put(incident)

    await consume(bus, bus.subjects.incident("A"), handler, types=(Incident,), durable="c-incident")
    stack.push_async_callback(bus.stop_receiving)
    return stack


async def test_decisions_published_while_the_service_is_down_wait_for_it_in_order(
    farm: FarmFactory,
) -> None:
    # a replay window of 1 s: what waits longer than that for a restart is still taken,
    # since its age is counted from the moment the stream stored it
    config, _ = farm({"bus": {"replay_window_s": 1.0}})
    got: asyncio.Queue[Incident] = asyncio.Queue()
    async with AsyncExitStack() as stack:
        publisher = await _bus(config, stack)
        subject = publisher.subjects.incident("A")
        first = await _taking(config, got)
        opened = _incident("opened")
        await publish_stored(publisher, subject, opened)
        assert (await asyncio.wait_for(got.get(), 10)).id == opened.id
        await first.aclose()  # the service stops

        waiting = [_incident("recovering"), _incident("closed")]
        for incident in waiting:
            await publish_stored(publisher, subject, incident)
        await asyncio.sleep(2.0)
        async with await _taking(config, got):
            taken = [await asyncio.wait_for(got.get(), 10) for _ in waiting]
            await asyncio.sleep(0.5)
        assert [i.id for i in taken] == [i.id for i in waiting]
        assert got.empty()  # what was acknowledged before the stop did not come again


async def test_a_decision_whose_handler_failed_comes_again(farm: FarmFactory) -> None:
    config, _ = farm()
    got: asyncio.Queue[Incident] = asyncio.Queue()
    async with AsyncExitStack() as stack:
        publisher = await _bus(config, stack)
        async with await _taking(config, got, fail_first=True):
            opened = _incident()
            await publish_stored(publisher, publisher.subjects.incident("A"), opened)
            assert (await asyncio.wait_for(got.get(), 15)).id == opened.id


async def test_a_stored_decision_published_again_later_is_stale_and_the_same_id_is_stored_once(
    farm: FarmFactory,
) -> None:
    config, _ = farm({"bus": {"replay_window_s": 1.0}})
    got: asyncio.Queue[Incident] = asyncio.Queue()
    async with AsyncExitStack() as stack:
        publisher = await _bus(config, stack)
        subject = publisher.subjects.incident("A")
        async with await _taking(config, got) as consumer_stack:
            del consumer_stack
            opened = _incident()
            await publish_stored(publisher, subject, opened)
            assert (await asyncio.wait_for(got.get(), 10)).id == opened.id
            # the same event again at once: the stream stores one id once
            await publish_stored(publisher, subject, opened)
            # an event stamped long before it reaches the stream (a recorded one sent
            # again by whoever can publish there) is stale
            old = msgspec.structs.replace(_incident("closed"), time=time.time() - 60)
            await publish_stored(publisher, subject, old)
            fresh = _incident("recovering")
            await publish_stored(publisher, subject, fresh)
            assert (await asyncio.wait_for(got.get(), 10)).id == fresh.id
            assert got.empty()
        info = await publisher.js.stream_info(publisher.subjects.stream_name())
        assert info.state.messages == 3  # opened once, the old one, the fresh one


async def test_a_consumer_with_room_for_several_handles_them_side_by_side_and_acks_each(
    farm: FarmFactory,
) -> None:
    # four handlers hold their message until all four are in hand: one at a time, the
    # first would wait for ever; then every message is acknowledged (nothing comes again)
    config, _ = farm()
    in_hand: list[str] = []
    together = asyncio.Event()
    handled: asyncio.Queue[str] = asyncio.Queue()
    async with AsyncExitStack() as stack:
        publisher = await _bus(config, stack)
        consumer_bus = await _bus(config, stack, "consumer")

        async def handler(incident: Incident) -> None:
            in_hand.append(incident.id)
            if len(in_hand) == 4:
                together.set()
            await asyncio.wait_for(together.wait(), 10)
            await handled.put(incident.id)

        await consume(
            consumer_bus,
            consumer_bus.subjects.incident("A"),
            handler,
            types=(Incident,),
            durable="c-side-by-side",
            in_flight=4,
        )
        sent = [_incident(time=time.time() + n * 1e-3) for n in range(4)]
        for incident in sent:
            await publish_stored(publisher, publisher.subjects.incident("A"), incident)
        got = {await asyncio.wait_for(handled.get(), 15) for _ in sent}
        assert got == {i.id for i in sent}
        await consumer_bus.stop_receiving()
        info = await publisher.js.consumer_info(publisher.subjects.stream_name(), "c-side-by-side")
        assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_handler_slower_than_the_ack_wait_says_it_is_at_work_and_is_not_offered_again(
    farm: FarmFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "ACK_WAIT_S", 1.0)
    monkeypatch.setattr(durable, "PROGRESS_S", 0.3)
    config, _ = farm()
    calls: list[str] = []
    async with AsyncExitStack() as stack:
        publisher = await _bus(config, stack)
        consumer_bus = await _bus(config, stack, "consumer")

        async def handler(incident: Incident) -> None:
            calls.append(incident.id)
            await asyncio.sleep(2.5)

        await consume(
            consumer_bus,
            consumer_bus.subjects.incident("A"),
            handler,
            types=(Incident,),
            durable="c-slow",
        )
        opened = _incident()
        await publish_stored(publisher, publisher.subjects.incident("A"), opened)
        await asyncio.sleep(4.0)
        assert calls == [opened.id]
        info = await publisher.js.consumer_info(publisher.subjects.stream_name(), "c-slow")
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
        await consumer_bus.stop_receiving()
