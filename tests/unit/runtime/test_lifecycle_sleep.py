"""Sleeping until a time or an event (``doze``, ``WakeEvent``) and a service's ``sleep`` and
``nap``: each returns on its timer, on its event or on shutdown, leaves nothing behind, and
shutdown wakes tens of thousands of sleepers at once."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest

from services.runtime.lifecycle import Runtime, WakeEvent, doze


def runtime() -> Runtime:
    config: Any = None  # neither is used by sleep and nap
    bus: Any = None
    return Runtime("test", config, bus, AsyncExitStack())


async def timed(coro: Any) -> tuple[Any, float]:
    began = time.monotonic()
    result = await coro
    return result, time.monotonic() - began


# --- doze ------------------------------------------------------------------------------


async def test_doze_returns_when_its_time_is_up() -> None:
    event = WakeEvent()
    _, took = await timed(doze(0.05, event))
    assert 0.04 <= took < 1.0
    assert not event.is_set() and not event._sleepers


@pytest.mark.parametrize("kind", [WakeEvent, asyncio.Event])
async def test_doze_returns_when_any_of_its_events_is_set(kind: type[asyncio.Event]) -> None:
    first, second = WakeEvent(), kind()
    sleeper = asyncio.create_task(timed(doze(30, first, second)))
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    second.set()
    _, took = await asyncio.wait_for(sleeper, 5)
    assert took < 1.0
    assert not first._sleepers
    # no task left waiting on either event
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_doze_without_a_time_waits_for_its_event() -> None:
    event = WakeEvent()
    sleeper = asyncio.create_task(doze(None, event))
    await asyncio.sleep(0.1)
    assert not sleeper.done()
    event.set()
    await asyncio.wait_for(sleeper, 5)


async def test_doze_on_an_event_already_set_returns_yet_lets_others_run() -> None:
    event = WakeEvent()
    event.set()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    _, took = await timed(doze(30, event))
    assert took < 1.0 and ran == ["other"]
    await task


async def test_doze_with_no_time_left_still_lets_others_run() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await doze(-1.0, WakeEvent())
    assert ran == ["other"]
    await task


async def test_a_doze_cancelled_leaves_nothing_behind() -> None:
    mine, theirs = WakeEvent(), asyncio.Event()
    sleeper = asyncio.create_task(doze(30, mine, theirs))
    await asyncio.sleep(0.01)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert not mine._sleepers
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # and the events still work for the next sleeper
    theirs.set()
    await asyncio.wait_for(doze(30, mine, theirs), 5)


async def test_a_wake_event_is_still_an_event() -> None:
    event = WakeEvent()
    waiter = asyncio.create_task(event.wait())
    sleeper = asyncio.create_task(doze(30, event))
    await asyncio.sleep(0.01)
    event.set()
    assert await asyncio.wait_for(waiter, 5) is True
    await asyncio.wait_for(sleeper, 5)
    event.clear()
    assert not event.is_set()
    _, took = await timed(doze(0.01, event))
    assert took < 1.0


# --- a service's sleep and nap -----------------------------------------------------------


async def test_sleep_is_true_when_its_time_is_up_and_false_once_stopping() -> None:
    rt = runtime()
    assert await rt.sleep(0.01) is True
    assert await rt.sleep(0) is True
    sleeper = asyncio.create_task(timed(rt.sleep(30)))
    await asyncio.sleep(0.01)
    rt.stopping.set()
    result, took = await asyncio.wait_for(sleeper, 5)
    assert result is False and took < 1.0
    # stopping: at once, every time
    result, took = await timed(rt.sleep(30))
    assert result is False and took < 0.1


@pytest.mark.parametrize("kind", [WakeEvent, asyncio.Event])
async def test_nap_is_true_when_woken_or_its_time_is_up(kind: type[asyncio.Event]) -> None:
    rt = runtime()
    wake = kind()
    assert await rt.nap(0.01, wake) is True
    napper = asyncio.create_task(timed(rt.nap(30, wake)))
    await asyncio.sleep(0.01)
    wake.set()
    result, took = await asyncio.wait_for(napper, 5)
    assert result is True and took < 1.0
    # a wake already set does not stop it from being woken: it returns at once
    result, took = await timed(rt.nap(30, wake))
    assert result is True and took < 0.1
    wake.clear()
    napper = asyncio.create_task(rt.nap(30, wake))
    await asyncio.sleep(0.01)
    rt.stopping.set()
    assert await asyncio.wait_for(napper, 5) is False
    assert await rt.nap(30, wake) is False
    assert not rt.stopping._sleepers
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_stopping_wakes_every_sleeper_at_once() -> None:
    rt = runtime()
    wakes = [WakeEvent() for _ in range(10_000)]
    sleepers = [asyncio.create_task(rt.sleep(60)) for _ in range(10_000)]
    nappers = [asyncio.create_task(rt.nap(60, wake)) for wake in wakes]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in sleepers + nappers)
    began = time.monotonic()
    rt.stopping.set()
    results = await asyncio.wait_for(asyncio.gather(*sleepers, *nappers), 30)
    assert results == [False] * 20_000
    assert time.monotonic() - began < 10
    assert not rt.stopping._sleepers and not any(wake._sleepers for wake in wakes)


async def test_many_sleepers_each_wake_on_their_own_time() -> None:
    """Thousands of sleepers on one stopping event, each ending by its own timer (as the
    loops of an agent with thousands of clients do), all end, and none is left on it."""
    rt = runtime()
    sleepers = [asyncio.create_task(rt.sleep(0.001 * (i % 100))) for i in range(20_000)]
    results = await asyncio.wait_for(asyncio.gather(*sleepers), 30)
    assert results == [True] * 20_000
    assert not rt.stopping._sleepers
