"""The collector's readings: psutil, Status-Server statistics and sample building."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

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
from services.runtime.config import ProcessMatch

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


def test_process_count_is_the_hosts() -> None:
    reading = ProcessWatch(None).sample()
    assert reading.process_count is not None
    assert abs(reading.process_count - len(psutil.pids())) < 50
