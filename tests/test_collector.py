"""The collector: psutil readings, sample building, and MetricsSamples on the bus."""

from __future__ import annotations

import asyncio
import logging
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
from services.collector.sample import (
    Counters,
    Limit,
    SampleBuilder,
    ThreadTimes,
    busy_threads,
    rates,
    status_failure,
    status_reading,
    threads_limit,
)
from services.runtime.bus import Bus
from services.runtime.config import Config, ConfigError, ProcessMatch
from tests.conftest import FarmFactory
from tests.freeradius import StartFreeRadius
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
    assert first.thread_times is not None
    assert threading.get_native_id() in first.thread_times
    assert abs(len(first.thread_times) - first.process_threads) <= 2
    assert first.process_tree_count is not None and first.process_tree_count >= 1
    kept = watch.process

    # the next sample's CPU figure covers the time since the first one, and the
    # CPU time of the burning thread grew
    _burn(0.3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        second = watch.sample()
    finally:
        child.kill()
        child.wait(10)
    assert watch.process is kept
    assert second.cpu_percent is not None and second.cpu_percent > 20
    assert second.thread_times is not None
    me = threading.get_native_id()
    assert second.thread_times[me] > first.thread_times[me]
    assert second.process_tree_count is not None
    assert second.process_tree_count >= first.process_tree_count + 1

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
    assert missing.errors == [
        f"process: pid file {tmp_path / 'gone.pid'} does not exist (a server run in the "
        "foreground writes none, as FreeRADIUS does under Debian's systemd unit "
        "(freeradius -f): match by name instead): no thread, memory or CPU figures"
    ]

    (tmp_path / "junk.pid").write_text("not a pid\n")
    junk = ProcessWatch(ProcessMatch(pid_file="junk.pid"), resolve).sample()
    assert junk.errors == [
        f"process: pid file {tmp_path / 'junk.pid'} holds no pid: no thread, memory or CPU figures"
    ]

    unmatched = ProcessWatch(None).sample()
    assert unmatched.process_threads is None
    assert unmatched.errors == [
        "process: none configured for this server: no thread, memory or CPU figures"
    ]

    name = "no-such-process-" + uuid.uuid4().hex[:8]
    nobody = ProcessWatch(ProcessMatch(name=name, cmdline="--flag")).sample()
    assert nobody.process_threads is None
    assert nobody.errors == [
        f"process: no running process named {name!r}, with '--flag' in its command line: "
        "no thread, memory or CPU figures"
    ]


def test_a_process_not_found_is_one_warning_per_change_of_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.collector.process")
    pid_file = tmp_path / "server.pid"
    watch = ProcessWatch(
        ProcessMatch(pid_file="server.pid"), lambda p: tmp_path / p, prime_s=0.01, label="A"
    )

    def logged() -> list[tuple[int, str]]:
        got = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return got

    for _ in range(3):
        assert watch.sample().pid is None
    assert logged() == [
        (
            logging.WARNING,
            f"A: process: pid file {pid_file} does not exist (a server run in the foreground "
            "writes none, as FreeRADIUS does under Debian's systemd unit (freeradius -f): "
            "match by name instead): no thread, memory or CPU figures",
        )
    ]

    # found: said once at info level, then nothing while it stays found
    pid_file.write_text(f"{os.getpid()}\n")
    for _ in range(3):
        assert watch.sample().pid == os.getpid()
    [(level, message)] = logged()
    assert level == logging.INFO
    assert message.startswith(f"A: watching process {os.getpid()} (")
    assert message.endswith("found by pid file server.pid")

    # lost again: one warning again; a different problem is a new warning
    pid_file.unlink()
    for _ in range(2):
        watch.sample()
    pid_file.write_text("junk\n")
    for _ in range(2):
        watch.sample()
    assert [(level, "does not exist" in m, "holds no pid" in m) for level, m in logged()] == [
        (logging.WARNING, True, False),
        (logging.WARNING, False, True),
    ]

    # nothing configured: one warning, not one per sample
    unset = ProcessWatch(None)
    for _ in range(3):
        unset.sample()
    assert logged() == [
        (
            logging.WARNING,
            "process: none configured for this server: no thread, memory or CPU figures",
        )
    ]


async def test_a_freeradius_run_with_f_is_found_by_name_not_by_pid_file(
    freeradius: StartFreeRadius,
) -> None:
    """FreeRADIUS in the foreground (as Debian's systemd unit runs it) writes no pid file;
    the harness writes one for the other tests, so it is removed here."""
    server = await freeradius()
    assert server.process is not None
    server.pid_file.unlink()
    by_file = ProcessWatch(ProcessMatch(pid_file=str(server.pid_file))).sample()
    assert by_file.pid is None
    assert any("does not exist" in e and "match by name instead" in e for e in by_file.errors)

    # name = "freeradius" finds it (the directory only tells it from other tests' servers)
    watch = ProcessWatch(
        ProcessMatch(name="freeradius", cmdline=f"freeradius -f -d {server.directory}"),
        prime_s=0.05,
    )
    reading = watch.sample()
    assert reading.errors == []
    assert reading.pid == server.process.pid
    assert reading.process_threads is not None and reading.process_threads >= 1
    assert reading.memory_percent is not None and reading.memory_percent > 0


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

FREERADIUS_REPLY = {
    "FreeRADIUS-Total-Access-Requests": 100,
    "FreeRADIUS-Total-Auth-Responses": 90,
    "FreeRADIUS-Total-Accounting-Requests": 10,
    "FreeRADIUS-Total-Accounting-Responses": 10,
    "FreeRADIUS-Stats-Start-Time": 1_700_000_000,
    "FreeRADIUS-Queue-Len-Internal": 0,
    "FreeRADIUS-Queue-Len-Proxy": 1,
    "FreeRADIUS-Queue-Len-Auth": 7,
    "FreeRADIUS-Queue-Len-Acct": 2,
    "FreeRADIUS-Queue-Len-Detail": 3,
    "FreeRADIUS-Queue-PPS-In": 40,
    "FreeRADIUS-Queue-PPS-Out": 38,
}
"""What FreeRADIUS 3.2.1 answers: no thread attributes."""

REFERENCE_REPLY = {
    "FreeRADIUS-Stats-Threads-Active": 3,
    "FreeRADIUS-Stats-Threads-Total": 8,
    "FreeRADIUS-Stats-Threads-Max": 16,
    "FreeRADIUS-Queue-Len-Auth": 4,
    "FreeRADIUS-Total-Access-Requests": 50,
}
"""What the reference server answers."""


def _with(reply: dict[str, int], **changes: int) -> dict[str, int]:
    out = dict(reply)
    for name, value in changes.items():
        out["FreeRADIUS-" + name.replace("_", "-")] = value
    return out


def _process(pid: int = 42, times: dict[int, float] | None = None) -> ProcessReading:
    return ProcessReading(
        pid=pid,
        process_threads=5,
        memory_percent=1.5,
        cpu_percent=20.0,
        process_count=300,
        thread_times={1: 1.0, 2: 0.5, 3: 0.0} if times is None else times,
        process_tree_count=2,
    )


def test_status_reading_maps_every_statistic() -> None:
    reading = status_reading(FREERADIUS_REPLY, at=10.0)
    assert reading.ok and reading.errors == []
    assert reading.figures == {
        "queue_len": 7,
        "queue_len_internal": 0,
        "queue_len_acct": 2,
        "queue_len_proxy": 1,
        "queue_len_detail": 3,
        "pps_in": 40,
        "pps_out": 38,
    }
    assert reading.missing == [
        "FreeRADIUS-Stats-Threads-Active",
        "FreeRADIUS-Stats-Threads-Total",
        "FreeRADIUS-Stats-Threads-Max",
    ]
    assert reading.counters == Counters(
        10.0,
        {
            "FreeRADIUS-Total-Access-Requests": 100,
            "FreeRADIUS-Total-Auth-Responses": 90,
            "FreeRADIUS-Total-Accounting-Requests": 10,
            "FreeRADIUS-Total-Accounting-Responses": 10,
        },
        started=1_700_000_000,
    )
    bad = status_reading({"FreeRADIUS-Queue-Len-Auth": "x", "FreeRADIUS-Queue-PPS-In": -1}, 0.0)
    assert "queue_len" not in bad.figures and "pps_in" not in bad.figures
    assert bad.errors == [
        "status reply has a bad FreeRADIUS-Queue-Len-Auth: 'x'",
        "status reply has a bad FreeRADIUS-Queue-PPS-In: -1",
    ]


def test_rates_are_counter_growth_over_the_elapsed_time() -> None:
    first = Counters(10.0, {"FreeRADIUS-Total-Access-Requests": 100}, started=5)
    assert rates(None, first) == ({}, ["rates: first reading of the counters, no rates yet"])
    assert rates(first, None) == ({}, [])

    second = Counters(
        12.0,
        {"FreeRADIUS-Total-Access-Requests": 160, "FreeRADIUS-Total-Auth-Responses": 4},
        started=5,
    )
    found, notes = rates(first, second)
    assert found == {"access_requests_per_s": 30.0}
    assert notes == ["rates: FreeRADIUS-Total-Auth-Responses was not in the previous reading"]

    # a counter that went down: the server restarted; that rate is left out
    restarted = Counters(13.0, {"FreeRADIUS-Total-Access-Requests": 3}, started=5)
    found, notes = rates(second, restarted)
    assert found == {}
    assert len(notes) == 1 and "went down from 160 to 3" in notes[0]

    # a new start time: no rates at all, even where counters grew
    new_start = Counters(14.0, {"FreeRADIUS-Total-Access-Requests": 500}, started=6)
    found, notes = rates(second, new_start)
    assert found == {} and "restarted" in notes[0]

    assert rates(second, Counters(12.0, second.values, 5))[0] == {}


def test_busy_threads_are_those_whose_cpu_time_grew() -> None:
    before = ThreadTimes(42, {1: 1.0, 2: 0.5, 3: 0.0})
    now = ThreadTimes(42, {1: 1.2, 2: 0.5, 3: 0.01, 4: 0.0, 5: 0.02})
    assert busy_threads(before, now) == (3, None)
    count, note = busy_threads(None, now)
    assert count is None and note is not None and "first reading" in note
    count, note = busy_threads(ThreadTimes(41, before.times), now)
    assert count is None and note is not None and "process 42" in note
    assert busy_threads(before, None) == (None, None)


def test_threads_max_fallback_order() -> None:
    conf = "thread pool {\n  max_servers = 16\n}\n"
    assert threads_limit(8, "/x/radiusd.conf", conf) == Limit(8, "config")
    assert threads_limit(None, "/x/radiusd.conf", conf) == Limit(16, "radiusd.conf")
    assert threads_limit(None, None) == Limit()
    unreadable = threads_limit(None, "/x/radiusd.conf", None, "Permission denied")
    assert unreadable.value is None
    assert unreadable.error == "threads_max: cannot read /x/radiusd.conf: Permission denied"
    unset = threads_limit(None, "/x/radiusd.conf", "thread pool {\n}\n")
    assert unset.value is None and unset.error is not None and "max_servers" in unset.error
    broken = threads_limit(None, "/x/radiusd.conf", "thread pool {\n")
    assert broken.error is not None and "not closed" in broken.error


def test_a_freeradius_sample_takes_its_threads_from_the_process() -> None:
    builder = SampleBuilder("F", Limit(16, "radiusd.conf"))
    first = builder.build(1, status_reading(FREERADIUS_REPLY, 10.0), _process(), source="c")
    assert first.status_ok and first.source == "c" and first.seq == 1
    assert (first.queue_len, first.queue_len_internal, first.queue_len_acct) == (7, 0, 2)
    assert (first.queue_len_proxy, first.queue_len_detail) == (1, 3)
    assert (first.pps_in, first.pps_out) == (40, 38)
    assert first.threads_total == 5 and first.threads_max == 16
    assert first.threads_active is None and first.access_requests_per_s is None
    assert first.process_tree_count == 2 and first.process_count == 300
    assert first.sources == {
        "queue_len": "status-server",
        "queue_len_internal": "status-server",
        "queue_len_acct": "status-server",
        "queue_len_proxy": "status-server",
        "queue_len_detail": "status-server",
        "pps_in": "status-server",
        "pps_out": "status-server",
        "threads_total": "process",
        "threads_max": "radiusd.conf",
        "process_threads": "process",
        "process_tree_count": "process",
        "memory_percent": "process",
        "cpu_percent": "process",
        "process_count": "host",
    }
    assert first.errors == [
        "threads_active: first reading of the threads of process 42, no estimate yet",
        "rates: first reading of the counters, no rates yet",
        "outstanding: first level of the counters, no baseline yet",
    ]

    later = _with(
        FREERADIUS_REPLY,
        Total_Access_Requests=300,
        Total_Auth_Responses=290,
        Total_Accounting_Requests=10,
        Total_Accounting_Responses=10,
    )
    second = builder.build(2, status_reading(later, 12.0), _process(times={1: 1.5, 2: 0.5, 3: 0.1}))
    assert second.errors == []
    assert second.threads_active == 2 and second.sources["threads_active"] == "process"
    assert second.access_requests_per_s == 100.0 and second.auth_responses_per_s == 100.0
    assert second.acct_requests_per_s == 0.0 and second.acct_responses_per_s == 0.0
    assert second.sources["auth_responses_per_s"] == "status-server"

    # the server restarted: counters went down, so no rates this once
    third = builder.build(
        3, status_reading(_with(later, Total_Access_Requests=2), 13.0), _process()
    )
    assert third.access_requests_per_s is None
    assert third.auth_responses_per_s == 0.0
    assert any("went down" in e for e in third.errors)
    fourth = builder.build(
        4, status_reading(_with(later, Total_Access_Requests=12), 14.0), _process()
    )
    assert fourth.access_requests_per_s == 10.0


def test_a_reference_sample_takes_its_threads_from_status_server() -> None:
    builder = SampleBuilder("A", Limit(4, "config"))
    builder.build(1, status_reading(REFERENCE_REPLY, 1.0), _process())
    sample = builder.build(
        2, status_reading(_with(REFERENCE_REPLY, Total_Access_Requests=60), 2.0), _process()
    )
    assert (sample.threads_active, sample.threads_total, sample.threads_max) == (3, 8, 16)
    assert (sample.queue_len, sample.access_requests_per_s) == (4, 10.0)
    for name in ("threads_active", "threads_total", "threads_max", "queue_len"):
        assert sample.sources[name] == "status-server"
    assert sample.process_threads == 5 and sample.sources["process_threads"] == "process"
    assert sample.queue_len_acct is None and sample.auth_responses_per_s is None
    assert len(sample.errors) == 1
    assert sample.errors[0].startswith("status reply lacks FreeRADIUS-Queue-Len-Internal")
    assert "Threads" not in sample.errors[0]

    # without Threads-Max in the reply, the configured one stands in
    no_max = dict(REFERENCE_REPLY)
    del no_max["FreeRADIUS-Stats-Threads-Max"]
    fallback = builder.build(3, status_reading(no_max, 3.0), _process())
    assert fallback.threads_max == 4 and fallback.sources["threads_max"] == "config"


def test_without_any_threads_max_the_sample_says_why() -> None:
    sample = SampleBuilder("F").build(1, status_reading(FREERADIUS_REPLY, 1.0), _process())
    assert sample.threads_max is None and "threads_max" not in sample.sources
    assert any("neither threads_max nor radiusd_conf" in e for e in sample.errors)
    unreadable = Limit(error="threads_max: cannot read /x: Permission denied")
    sample = SampleBuilder("F", unreadable).build(
        1, status_reading(FREERADIUS_REPLY, 1.0), _process()
    )
    assert "threads_max: cannot read /x: Permission denied" in sample.errors


def test_a_failed_probe_keeps_the_process_figures_only() -> None:
    builder = SampleBuilder("A", Limit(4, "config"))
    process = ProcessReading(process_threads=9, memory_percent=1.5, cpu_percent=2.0, errors=[])
    sample = builder.build(7, status_failure("status: no answer"), process)
    assert not sample.status_ok and sample.seq == 7
    assert sample.threads_active is None and sample.threads_max is None
    assert sample.queue_len is None and sample.access_requests_per_s is None
    assert sample.process_threads == 9
    assert sample.sources == {
        "process_threads": "process",
        "memory_percent": "process",
        "cpu_percent": "process",
    }
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
                for name in ("threads_active", "threads_total", "threads_max", "queue_len"):
                    assert a.sources[name] == "status-server", name
                assert a.sources["memory_percent"] == "process"
                assert a.sources["process_count"] == "host"
                assert a.process_tree_count is not None and a.process_tree_count >= 1
                # the reference server sends every figure the collector reads
                assert not [e for e in a.errors if e.startswith("status reply lacks")]
                assert (a.queue_len_acct, a.queue_len_internal) == (0, 0)
                assert a.pps_in is not None and a.pps_out is not None
                a2 = await _next(got, lambda s: s.server == "A" and s.seq > a.seq and s.status_ok)
                assert a2.errors == []
                assert a2.auth_responses_per_s is not None
                assert a2.access_requests_per_s is not None and a2.access_requests_per_s >= 0
                assert a2.sources["access_requests_per_s"] == "status-server"

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
