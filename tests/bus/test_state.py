"""StateStore on a real nats-server: typed values in a KV bucket, bad ones counted."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import msgspec
import pytest

from services.runtime.bus import Bus
from services.runtime.config import Config
from services.runtime.state import StateStore
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """A stored value with a check of its own."""

    name: str
    count: int = 0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


async def _bus(config: Config, stack: AsyncExitStack) -> Bus:
    return await operator_bus(config, stack, "t")


async def test_round_trip_and_missing_key(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        store = await StateStore.open(bus, "things", Item)

        assert await store.get("a") is None
        assert await store.put("a", Item(name="a", count=3))
        assert await store.get("a") == Item(name="a", count=3)
        assert await store.put("a", Item(name="a", count=4))
        assert await store.get("a") == Item(name="a", count=4)

        # stored as msgspec JSON in <PREFIX>_things
        entry = await (await bus.kv("things")).get("a")
        assert entry.value is not None
        assert msgspec.json.decode(entry.value) == {"name": "a", "count": 4}

        seqs = await StateStore.open(bus, "seqs", int)
        assert await seqs.put("seq.A", 41)
        assert await seqs.get("seq.A") == 41
        assert bus.counters.dropped["bad-state"] == 0


async def test_bad_stored_values_are_counted_and_read_as_missing(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        store = await StateStore.open(bus, "things", Item)
        kv = await bus.kv("things")
        await kv.put("junk", b"{not json")
        await kv.put("wrong", b'{"count": 1}')
        await kv.put("invalid", b'{"name": "x", "count": -1}')

        with caplog.at_level(logging.WARNING, logger="services.runtime.state"):
            assert await store.get("junk") is None
            assert await store.get("wrong") is None
            assert await store.get("invalid") is None
        assert bus.counters.dropped["bad-state"] == 3
        assert sum("'junk'" in r.getMessage() for r in caplog.records) == 1


async def test_load_all_and_delete(farm: FarmFactory) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        store = await StateStore.open(bus, "things", Item)
        assert await store.load_all() == {}

        await store.put("a", Item(name="a"))
        await store.put("b", Item(name="b", count=2))
        await (await bus.kv("things")).put("c", b"[1, 2]")
        assert await store.load_all() == {"a": Item(name="a"), "b": Item(name="b", count=2)}
        assert bus.counters.dropped["bad-state"] == 1

        await store.delete("a")
        await store.delete("never-stored")
        assert await store.get("a") is None
        assert await store.load_all() == {"b": Item(name="b", count=2)}
        await store.delete("b")
        await store.delete("c")
        assert await store.load_all() == {}


async def test_store_errors_are_logged_not_raised(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        store = await StateStore.open(bus, "things", Item)
        await bus.nc.close()
        with caplog.at_level(logging.WARNING, logger="services.runtime.state"):
            assert not await store.put("a", Item(name="a"))
            await store.delete("a")
        levels = [r.levelno for r in caplog.records if r.name == "services.runtime.state"]
        assert levels == [logging.ERROR, logging.WARNING]
