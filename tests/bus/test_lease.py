"""The lease on a real bucket: a standby never takes a lease its holder keeps writing, and
takes over one no longer written without waiting for the server to remove it."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from services.runtime.bus import Bus, Keyring
from services.runtime.lease import Lease
from tests.conftest import FarmFactory

LEASE_S = 1.0
BUCKET_TTL_S = 60.0
"""The bucket's entries live this long: far longer than the lease, so only the standby's
own timing can hand the lease over within the test."""


async def test_a_standby_takes_over_a_lease_no_longer_written_not_one_still_written(
    farm: FarmFactory,
) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="t", stack=stack)
        kv = await bus.lease_bucket(BUCKET_TTL_S)
        holder = Lease(kv, "evaluator", "host-a/1", LEASE_S)
        standby = Lease(kv, "evaluator", "host-b/1", LEASE_S)
        assert await holder.try_take()
        keeping = asyncio.ensure_future(holder.keep())
        taking = asyncio.ensure_future(standby.take())
        try:
            # written every third of lease_s, the lease stays its holder's
            done, _ = await asyncio.wait({keeping, taking}, timeout=3 * LEASE_S)
            assert not done, [task.exception() for task in done]
            assert (await kv.get("evaluator")).value == b"host-a/1"
            last_written = holder.revision

            keeping.cancel()  # the holder dies: no more writes, nothing given up
            await asyncio.wait_for(taking, 10 * LEASE_S)  # the key lives 60 s
        finally:
            for task in (keeping, taking):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        entry = await kv.get("evaluator")
        assert entry.value == b"host-b/1"
        assert last_written is not None and entry.revision == standby.revision > last_written
