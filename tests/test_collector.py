"""The collector: psutil readings, sample building, and MetricsSamples on the bus."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
import pytest

from schemas.events import MetricsSample, ServerControl
from services.aaa import service as aaa
from services.collector import service as collector
from services.collector.process import ProcessReading, ProcessWatch, find_process
from services.collector.sample import make_sample, status_failure, status_reading
from services.runtime.bus import Bus
from services.runtime.config import Config, ConfigError, ProcessMatch
from tests.conftest import FarmFactory
from tests.helpers import operator_bus, running, wait_ready

FAST = {"collector": {"interval_s": 0.3, "status_timeout_s": 0.2}}

# --- psutil readings ---------------------------------------------------------


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_watch_reads_this_process_through_its_pid_file(tmp_path: Path) -> None:
    (tmp_path / "me.pid").write_text(f"{os.getpid()}\n")
    watch = ProcessWatch(ProcessMatch(pid_file="me.pid"), lambda p: tmp_path / p, prime_s=0.05)
    first = watch.sample()
    assert first.errors == []
    assert first.pid == os.getpid()
    assert first.process_threads is not None
    assert first.process_threads >= threading.active_count()
    assert first.memory_percent is not None and 0 < first.memory_percent < 100
    assert first.cpu_percent is not None and first.cpu_percent >= 0
    assert first.process_count is not None and first.process_count > 1
    kept = watch.process

    # the next sample's CPU figure covers the time since the first one
    _burn(0.3)
    second = watch.sample()
    assert watch.process is kept
    assert second.cpu_percent is not None and second.cpu_percent > 20

    # more threads in the process show up in the figure
    release = threading.Event()
    extra = [threading.Thread(target=release.wait) for _ in range(5)]
    for thread in extra:
        thread.start()
    try:
        third = watch.sample()
        assert third.process_threads is not None
        assert third.process_threads >= first.process_threads + 5
    finally:
        release.set()
        for thread in extra:
            thread.join(5)


def test_watch_reports_why_nothing_was_read(tmp_path: Path) -> None:
    def resolve(p: str) -> Path:
        return tmp_path / p

    missing = ProcessWatch(ProcessMatch(pid_file="gone.pid"), resolve).sample()
    assert missing.process_threads is None and missing.cpu_percent is None
    assert missing.memory_percent is None
    assert missing.process_count is not None
    assert any("gone.pid" in e and "does not exist" in e for e in missing.errors)

    (tmp_path / "junk.pid").write_text("not a pid\n")
    junk = ProcessWatch(ProcessMatch(pid_file="junk.pid"), resolve).sample()
    assert any("holds no pid" in e for e in junk.errors)

    unmatched = ProcessWatch(None).sample()
    assert unmatched.process_threads is None
    assert unmatched.errors == ["no process match configured"]

    nobody = ProcessWatch(ProcessMatch(name="no-such-process-" + uuid.uuid4().hex[:8])).sample()
    assert nobody.process_threads is None
    assert any("no running process" in e for e in nobody.errors)


def test_watch_follows_a_process_by_command_line_until_it_ends(tmp_path: Path) -> None:
    token = "aaa-test-" + uuid.uuid4().hex
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(60)", token],
    )
    try:
        match = ProcessMatch(cmdline=token)
        assert find_process(match).pid == child.pid
        watch = ProcessWatch(match, prime_s=0.05)
        alive = watch.sample()
        assert alive.errors == [] and alive.pid == child.pid
        assert alive.process_threads is not None and alive.process_threads >= 1

        (tmp_path / "child.pid").write_text(f"{child.pid}\n")
        by_file = ProcessWatch(
            ProcessMatch(pid_file="child.pid", cmdline=token), lambda p: tmp_path / p
        )
        assert by_file.sample().pid == child.pid
        wrong_name = ProcessWatch(
            ProcessMatch(pid_file="child.pid", name="not-python"), lambda p: tmp_path / p
        ).sample()
        assert wrong_name.pid is None
        assert any("does not match" in e for e in wrong_name.errors)
    finally:
        child.kill()
        child.wait(10)
    ended = watch.sample()
    assert ended.pid is None and ended.process_threads is None
    assert ended.errors
    assert watch.process is None
    gone = by_file.sample()
    assert any("not running" in e for e in gone.errors)


# --- building samples --------------------------------------------------------


def test_status_reading_maps_statistics_and_falls_back_for_threads_max() -> None:
    full = status_reading(
        {
            "FreeRADIUS-Stats-Threads-Active": 3,
            "FreeRADIUS-Stats-Threads-Total": 8,
            "FreeRADIUS-Stats-Threads-Max": 16,
            "FreeRADIUS-Queue-Len-Auth": 4,
        },
        threads_max_fallback=8,
    )
    assert full.ok and full.errors == []
    assert full.figures == {
        "threads_active": 3,
        "threads_total": 8,
        "threads_max": 16,
        "queue_len": 4,
    }

    partial = status_reading({"FreeRADIUS-Stats-Threads-Active": 2}, threads_max_fallback=8)
    assert partial.figures["threads_max"] == 8
    assert partial.figures["queue_len"] is None
    assert len(partial.errors) == 2

    no_fallback = status_reading({}, threads_max_fallback=None)
    assert all(v is None for v in no_fallback.figures.values())
    assert len(no_fallback.errors) == 4

    process = ProcessReading(process_threads=9, memory_percent=1.5, cpu_percent=2.0, errors=[])
    sample = make_sample("A", 7, status_failure("status: no answer"), process)
    assert not sample.status_ok and sample.seq == 7
    assert sample.threads_active is None and sample.threads_max is None
    assert sample.process_threads == 9
    assert sample.errors == ["status: no answer"]


# --- the service on the bus --------------------------------------------------


async def _next(
    queue: asyncio.Queue[MetricsSample],
    check: Callable[[MetricsSample], bool],
    timeout_s: float = 10,
) -> MetricsSample:
    """The next sample that passes ``check``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no sample passed the check in time")
        sample = await asyncio.wait_for(queue.get(), remaining)
        if check(sample):
            return sample


async def _subscribe(bus: Bus, config: Config) -> asyncio.Queue[MetricsSample]:
    got: asyncio.Queue[MetricsSample] = asyncio.Queue()

    async def handler(event: MetricsSample) -> None:
        await got.put(event)

    await bus.subscribe(bus.subjects.metrics("*"), handler, types=(MetricsSample,))
    return got


async def test_collector_publishes_live_figures_and_errors(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=2, workers=4)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(aaa.run, config, only=["A"]):
            await wait_ready(config, "A")
            async with running(collector.run, config):
                a = await _next(got, lambda s: s.server == "A" and s.status_ok)
                assert (a.threads_active, a.threads_total, a.threads_max, a.queue_len) == (
                    0,
                    4,
                    4,
                    0,
                )
                assert a.process_threads is not None and a.process_threads >= 4
                assert a.memory_percent is not None and a.memory_percent > 0
                assert a.cpu_percent is not None
                assert a.process_count is not None and a.process_count > 1
                assert a.errors == []

                b = await _next(got, lambda s: s.server == "B")
                assert not b.status_ok
                assert b.threads_active is None and b.queue_len is None
                assert b.process_threads is None and b.cpu_percent is None
                assert any("no answer" in e for e in b.errors)
                assert any("B.pid" in e for e in b.errors)
                assert b.process_count is not None

                await bus.publish(
                    bus.subjects.control("A"), ServerControl(server="A", stalled_workers=3)
                )
                stalled = await _next(got, lambda s: s.server == "A" and s.threads_active == 3)
                assert stalled.status_ok and stalled.threads_max == 4

                seqs: dict[str, list[int]] = {"A": [], "B": [], "C": []}
                while min(len(v) for v in seqs.values()) < 3:
                    sample = await asyncio.wait_for(got.get(), 5)
                    seqs[sample.server].append(sample.seq)
                for server, numbers in seqs.items():
                    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), server

        # A stopped: its samples now say so
        async with running(collector.run, config, only=["A"]):
            down = await _next(got, lambda s: s.server == "A" and not s.status_ok)
            assert down.threads_active is None
            assert any("no answer" in e for e in down.errors)


async def test_a_slow_server_does_not_hold_up_the_others(farm: FarmFactory) -> None:
    config, _ = farm(
        {"collector": {"interval_s": 1.0, "status_timeout_s": 0.8}}, clients=2, workers=2
    )
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(aaa.run, config, only=["A"]):
            await wait_ready(config, "A")
            async with running(collector.run, config, only=["A", "B"]):
                # in each round, A's answer is published long before B's probe times out
                for _ in range(2):
                    a = await _next(got, lambda s: s.server == "A")
                    a_at = time.monotonic()
                    b = await _next(got, lambda s: s.server == "B")
                    assert a.status_ok and not b.status_ok
                    assert time.monotonic() - a_at > 0.4


async def test_sequence_numbers_survive_a_restart(farm: FarmFactory) -> None:
    config, _ = farm(FAST, clients=2)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "t")
        got = await _subscribe(bus, config)
        async with running(collector.run, config, only=["C"]):
            first = await _next(got, lambda s: s.server == "C")
            later = await _next(got, lambda s: s.server == "C" and s.seq > first.seq)
        async with running(collector.run, config, only=["C"]):
            again = await _next(got, lambda s: s.server == "C")
        assert again.seq > later.seq


async def test_unknown_servers_are_refused(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    with pytest.raises(ConfigError, match="Z"):
        await collector.run(config, only=["Z"])


def test_process_count_is_the_hosts() -> None:
    reading = ProcessWatch(None).sample()
    assert reading.process_count is not None
    assert abs(reading.process_count - len(psutil.pids())) < 50
