"""Requests in flight from a server's Total-* counters (pure): FreeRADIUS counts a response
only ``cleanup_delay`` after sending it, and counts Status-Server as an Access-Request."""

from __future__ import annotations

import pytest

from services.collector.backlog import REQUESTS, RESPONSES, Backlog, BacklogTracker


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


def test_status_server_from_others_drifts_out_with_the_baseline() -> None:
    tracker = BacklogTracker(0.0, baseline_s=5.0)
    outs = []
    for t in range(1, 30):
        # 2 Status-Server a second from someone else: requests that never get a response
        outs.append(tracker.update(float(t), {REQUESTS: 12 * t, RESPONSES: 10 * t}, 0).outstanding)
    assert max(v for v in outs if v is not None) <= 2 * 5


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
