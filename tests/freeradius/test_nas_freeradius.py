"""bench/nas.py against a real FreeRADIUS: a steady rate, and late answers once it resumes."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import pytest

from bench.nas import Nas, Target, summarize
from tests.support.freeradius import IP, StartFreeRadius


async def test_a_steady_rate_against_freeradius(freeradius: StartFreeRadius) -> None:
    server = await freeradius()
    rate = 100
    async with Nas() as nas:
        records = await nas.run(
            Target(IP, server.auth_port, server.client_secret.encode()), rate=rate, count=150
        )
    summary = summarize(records)
    assert (summary.accepted, summary.rejected, summary.lost, summary.answered_late) == (
        150,
        0,
        0,
        0,
    )
    assert summary.rate == pytest.approx(rate, rel=0.05)
    # evenly spread, no bursts: due 1/rate apart, none sent before it is due, and sent
    # 1/rate apart in the main (only a stall of this process's loop bunches them)
    due_gaps = [b.due_at - a.due_at for a, b in itertools.pairwise(records)]
    assert due_gaps == pytest.approx([1 / rate] * len(due_gaps))
    assert all(r.sent_at >= r.due_at for r in records)
    gaps = [b.sent_at - a.sent_at for a, b in itertools.pairwise(records)]
    assert statistics.median(gaps) == pytest.approx(1 / rate, abs=0.002)
    assert summary.send_lag_s["max"] < 0.1


async def test_late_answers_from_a_resumed_freeradius(freeradius: StartFreeRadius) -> None:
    server = await freeradius()
    timeout = 0.4
    server.pause()
    async with Nas(timeout_s=timeout, retries=3) as nas:
        run = asyncio.create_task(
            nas.run(Target(IP, server.auth_port, server.client_secret.encode()), rate=50, count=10)
        )
        await asyncio.sleep(0.2 + timeout * 2)
        resumed = time.monotonic()
        server.resume()
        records = await asyncio.wait_for(run, 5)
    assert all(r.outcome == "accepted" for r in records)
    assert all(r.late and r.transmissions >= 2 for r in records)
    assert all(r.answered_at is not None and r.answered_at >= resumed for r in records)
