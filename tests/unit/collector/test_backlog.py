"""Requests in flight from a server's Total-* counters (pure): FreeRADIUS counts a response
only ``cleanup_delay`` after sending it, and counts Status-Server as an Access-Request."""

from __future__ import annotations

import pytest

from services.collector.backlog import REQUESTS, RESPONSES, Backlog, BacklogTracker
from services.collector.process import ProcessReading
from services.collector.sample import Limit, SampleBuilder, status_reading


class Server:
    """A server model: arrivals at ``rate`` per second, each taking ``service_s``; a response
    is counted ``cleanup_s`` after it is sent; every Status-Server counts as a request."""

    def __init__(self, rate: float, cleanup_s: float) -> None:
        self.rate = rate
        self.cleanup_s = cleanup_s
        self.arrivals: list[tuple[float, float]] = []  # (arrived, done)
        self.status = 0
        self.now = 0.0

    def run(self, until: float, service_s: float, step: float = 0.01) -> None:
        while self.now < until:
            self.now = round(self.now + step, 6)
            due = int(self.now * self.rate) - len(self.arrivals)
            for _ in range(due):
                self.arrivals.append((self.now, self.now + service_s))

    def counters(self) -> dict[str, int]:
        counted = sum(1 for _, done in self.arrivals if done + self.cleanup_s <= self.now)
        return {REQUESTS: len(self.arrivals) + self.status, RESPONSES: counted}

    def in_flight(self) -> int:
        return sum(1 for _, done in self.arrivals if done > self.now)


def read(tracker: BacklogTracker, server: Server) -> Backlog:
    server.status += 1  # the collector's own Status-Server, counted by the server
    return tracker.update(server.now, server.counters(), server.status)


@pytest.mark.parametrize("cleanup_s", [0.0, 5.0])
def test_a_slow_backend_shows_as_requests_in_flight_once_responses_are_counted(
    cleanup_s: float,
) -> None:
    server = Server(rate=100, cleanup_s=cleanup_s)
    tracker = BacklogTracker(cleanup_s, baseline_s=30.0)
    seen = []
    for second in range(1, 21):
        server.run(second, service_s=0.001)
        seen.append(read(tracker, server).outstanding)
    # fast: at most the request or two that arrived in the last step are in flight
    assert all(v <= 2 for v in seen if v is not None) and seen[-1] is not None
    for second in range(21, 21 + int(cleanup_s) + 6):
        server.run(second, service_s=4.0)
        backlog = read(tracker, server)
    out = backlog.outstanding
    assert out is not None and abs(out - server.in_flight()) <= 5, (out, server.in_flight())
    assert abs(out - 400) <= 5
    # Little's law: 400 in flight at 100 a second is 4 s each
    assert backlog.latency_s is not None and 3.5 < backlog.latency_s < 4.5


def test_first_readings_give_no_figure_and_say_why() -> None:
    tracker = BacklogTracker(5.0)
    server = Server(rate=10, cleanup_s=5.0)
    server.run(1.0, service_s=0.001)
    backlog = tracker.update(server.now, server.counters(), 1)
    assert backlog.outstanding is None and backlog.note is not None and "5s" in backlog.note
    assert tracker.update(1.0, {REQUESTS: 3}, 1).note is None  # the sample names what lacks


def test_a_restart_starts_afresh_and_the_cap_bounds_the_estimate() -> None:
    tracker = BacklogTracker(0.0, baseline_s=10.0, smooth_s=0.0)
    assert tracker.update(1.0, {REQUESTS: 100, RESPONSES: 90}, 0).outstanding is None
    assert tracker.update(2.0, {REQUESTS: 200, RESPONSES: 190}, 0).outstanding == 0
    grown = tracker.update(3.0, {REQUESTS: 300, RESPONSES: 240}, 0, cap=20)
    assert grown.outstanding == 20
    # counters went down: the server restarted; no baseline yet
    assert tracker.update(4.0, {REQUESTS: 5, RESPONSES: 5}, 0).outstanding is None
    assert tracker.update(5.0, {REQUESTS: 50, RESPONSES: 50}, 0).outstanding == 0


def test_status_server_from_others_reads_as_its_rate_times_the_baseline_up_to_the_cap() -> None:
    # 2 Status-Server a second from someone else: requests that never get a response. A
    # steady stream does not drift out with the baseline: it reads as 2 x 5 s for as long
    # as it lasts, and only what the server can hold bounds it.
    tracker = BacklogTracker(0.0, baseline_s=5.0, smooth_s=0.0)
    outs = [
        tracker.update(float(t), {REQUESTS: 12 * t, RESPONSES: 10 * t}, 0).outstanding
        for t in range(1, 30)
    ]
    assert outs[5:] == [2 * 5] * len(outs[5:]), outs
    capped = BacklogTracker(0.0, baseline_s=5.0, smooth_s=0.0)
    outs = [
        capped.update(float(t), {REQUESTS: 12 * t, RESPONSES: 10 * t}, 0, cap=1).outstanding
        for t in range(1, 30)
    ]
    assert set(outs[1:]) == {1}, outs


def test_a_burst_of_lock_step_clients_does_not_count_a_backlog_that_lasts_does() -> None:
    tracker = BacklogTracker(0.0, baseline_s=10.0, smooth_s=1.0)
    requests = responses = 0
    seen = []
    for tick in range(1, 31):
        at = tick * 0.1
        requests += 10
        # every fifth reading catches a burst of 10 in flight; the others see none
        responses = requests - (10 if tick % 5 == 0 else 0)
        seen.append(tracker.update(at, {REQUESTS: requests, RESPONSES: responses}, 0).outstanding)
    assert max(v for v in seen if v is not None) == 0
    for tick in range(31, 51):  # then 40 stay in flight
        requests += 10
        seen.append(
            tracker.update(
                tick * 0.1, {REQUESTS: requests, RESPONSES: requests - 40}, 0
            ).outstanding
        )
    assert seen[-1] == 40


# --- the cap, as the collector's samples set it ------------------------------


def _reference_reply(
    busy: int, queue: int, requests: int, responses: int, dropped: int
) -> dict[str, int]:
    """A reference server of 8 workers: its busy threads and queue, and its counters."""
    return {
        "FreeRADIUS-Stats-Threads-Active": busy,
        "FreeRADIUS-Stats-Threads-Total": 8,
        "FreeRADIUS-Stats-Threads-Max": 8,
        "FreeRADIUS-Queue-Len-Auth": queue,
        REQUESTS: requests,
        RESPONSES: responses,
        "FreeRADIUS-Total-Auth-Dropped-Requests": dropped,
    }


def test_a_monitor_reading_statistics_is_not_in_flight_before_or_after_a_stall() -> None:
    """bench/incident.py's aaa-failover run, as A's counters show it to the collector.

    Besides the collector's probes (2 a second), the benchmark reads A's statistics 4
    times a second: Access-Requests that are never answered. With the cap at all 8
    threads, the estimate read 8 in flight for 8 threads 2 s into the load, with every
    thread idle (the incident opened before the stall), and 8 again after the release,
    for as long as the run watched (it never recovered). A says how many of its threads
    are busy: with nothing busy and nothing queued, nothing is in flight.
    """
    builder = SampleBuilder("A", Limit(8, "config"))
    requests = responses = dropped = held = 0
    seen: dict[str, list[int | None]] = {"calm": [], "stall": [], "after": [], "back": []}
    for step in range(1, 81):  # a reading every 0.5 s for 40 s
        at = step * 0.5
        phase = "calm" if at <= 10 else "stall" if at <= 14 else "after" if at <= 25 else "back"
        requests += 1 + 2  # the collector's probe and the monitor's two
        busy, queue = 0, 0
        if phase in ("calm", "back"):  # clients' requests, answered at once
            requests += 50
            responses += 50
            busy = 1
        elif phase == "stall":  # 7 workers stalled, the 8th slow: 30 held, the rest dropped
            requests += 50
            taken = min(50, 30 - held)
            held += taken
            dropped += 50 - taken
            busy, queue = 8, held - 8
        elif held:  # released: what was held is answered; the clients are elsewhere
            responses += held
            held = 0
            busy = 4  # the mean of the last second
        reply = _reference_reply(busy, queue, requests, responses, dropped)
        sample = builder.build(
            step, status_reading(reply, at), ProcessReading(), status_probes=step
        )
        assert sample.sources.get("threads_active") == "status-server"
        seen[phase].append(sample.outstanding)
    assert set(seen["calm"][1:]) == {1}, seen["calm"]  # what one busy thread can hold
    assert max(v or 0 for v in seen["stall"]) == 30, seen["stall"]  # the backlog at onset
    assert set(seen["after"][3:]) == {0}, seen["after"]  # recovered a second and a half on
    assert set(seen["back"]) <= {0, 1}, seen["back"]


FREERADIUS_3_2_1 = {
    "FreeRADIUS-Queue-Len-Auth": 0,
    "FreeRADIUS-Queue-Len-Internal": 0,
    "FreeRADIUS-Queue-Len-Acct": 0,
    "FreeRADIUS-Queue-Len-Proxy": 0,
    "FreeRADIUS-Queue-Len-Detail": 0,
}
"""The figures of FreeRADIUS 3.2.1 beside its counters: queues, and no thread attributes."""


def test_threads_read_from_the_process_do_not_bound_requests_in_flight() -> None:
    """FreeRADIUS 3.2.1 sends no Threads-Active; the collector counts threads that used CPU,
    and a thread waiting on a slow backend uses none: it reads 0 busy while 20 requests
    wait. The cap stays at all the threads plus the queue."""
    builder = SampleBuilder("F", Limit(32, "radiusd.conf"))
    process = ProcessReading(pid=42, process_threads=32, thread_times={1: 1.0, 2: 1.0})
    requests = responses = 0
    sample = None
    for step in range(1, 15):
        requests += 1 + 100  # the collector's probe, and the clients' requests
        responses += 90 if step in (9, 10) else 100  # the backend slows: 20 wait from then on
        reply = {**FREERADIUS_3_2_1, REQUESTS: requests, RESPONSES: responses}
        sample = builder.build(step, status_reading(reply, step * 0.5), process, status_probes=step)
    assert sample is not None
    assert sample.threads_active == 0 and sample.sources["threads_active"] == "process"
    assert sample.outstanding == 20
