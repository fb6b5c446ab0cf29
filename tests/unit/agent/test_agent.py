"""The agent's client state machine alone: notices, timers, readmission."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from schemas.events import (
    Endpoint,
    FailoverNotice,
    ReadmitNotice,
)
from services.agent.client import (
    Answer,
    ClientState,
    jittered,
    new_state,
    next_wakeup,
    on_notice,
    on_time,
)

A = Endpoint(server="A", ip="10.0.0.1", auth_port=1812)
B = Endpoint(server="B", ip="10.0.0.2", auth_port=1812)
C = Endpoint(server="C", ip="10.0.0.3", auth_port=1812)
SERVERS = {e.server: e for e in (A, B, C)}
"""The servers of the client's own configuration."""


class Fixed:
    """A 'random' source that always lands at the same fraction of the range."""

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def _state(**changes: Any) -> ClientState:
    state = new_state("nas-01", A, return_after_s=30.0, jitter=0.2)
    return replace(state, **changes)


def _failover(**fields: Any) -> FailoverNotice:
    values: dict[str, Any] = {
        "incident_id": "i",
        "server": "A",
        "client": "nas-01",
        "alternates": ["B", "C"],
        "seq": 10,
        "valid_until": 1300.0,
    }
    values.update(fields)
    return FailoverNotice(**values)


def _readmit(**fields: Any) -> ReadmitNotice:
    values: dict[str, Any] = {
        "incident_id": "i",
        "server": "A",
        "client": "nas-01",
        "seq": 20,
        "valid_until": 1300.0,
    }
    values.update(fields)
    return ReadmitNotice(**values)


# --- the state machine alone ----------------------------------------------


def test_failover_switches_to_first_alternate_and_arms_return() -> None:
    notice = _failover()
    step = on_notice(_state(), notice, 1000.0, Fixed(1.0), SERVERS)
    assert step.switched and step.rejected is None and not step.reack
    assert step.ack == Answer(True, "B")
    s = step.state
    assert (s.current, s.home, s.last_seq, s.last_notice_id) == (B, A, 10, notice.id)
    assert s.return_at == pytest.approx(1000.0 + 30.0 * 1.2)
    assert s.stay_until == pytest.approx(1300.0 + 300.0 * 0.2)  # void, then jittered
    assert next_wakeup(s) == pytest.approx(1036.0)


def test_jitter_stays_within_bounds_and_spreads() -> None:
    rng = random.Random(7)
    deadlines = []
    for _ in range(500):
        step = on_notice(_state(), _failover(), 1000.0, rng, SERVERS)
        assert step.state.return_at is not None
        deadlines.append(step.state.return_at - 1000.0)
    assert min(deadlines) >= 30.0 * 0.8
    assert max(deadlines) <= 30.0 * 1.2
    assert max(deadlines) - min(deadlines) > 30.0 * 0.3
    assert jittered(10.0, 0.0, rng) == 10.0


def test_notice_for_another_client_is_rejected_unanswered() -> None:
    state = _state()
    step = on_notice(state, _failover(client="nas-02"), 1000.0, Fixed(), SERVERS)
    assert (step.rejected, step.ack, step.state) == ("wrong-client", None, state)


def test_expired_notice_is_rejected() -> None:
    state = _state()
    step = on_notice(state, _failover(valid_until=999.0), 1000.0, Fixed(), SERVERS)
    assert step.rejected == "expired"
    assert step.ack == Answer(False, "A", "expired")
    assert step.state == state
    # valid up to and including valid_until
    assert (
        on_notice(state, _failover(valid_until=1000.0), 1000.0, Fixed(), SERVERS).rejected is None
    )


def test_old_or_repeated_seq_is_rejected() -> None:
    first = on_notice(_state(), _failover(seq=10), 1000.0, Fixed(), SERVERS).state
    for seq in (10, 9):
        step = on_notice(first, _failover(seq=seq, server="B"), 1001.0, Fixed(), SERVERS)
        assert step.rejected == "old-seq"
        assert step.ack == Answer(False, "B", "old-seq")
        assert step.state == first


def test_same_notice_again_is_reacked_without_acting() -> None:
    notice = _failover()
    first = on_notice(_state(), notice, 1000.0, Fixed(0.0), SERVERS)
    again = on_notice(first.state, notice, 1005.0, Fixed(1.0), SERVERS)
    assert again.reack and again.rejected is None and not again.switched
    assert again.ack == first.ack
    assert again.state == first.state  # the return timer is not re-armed
    # even once expired, a repeat of the last notice only gets its answer again
    late = on_notice(first.state, notice, 2000.0, Fixed(), SERVERS)
    assert late.reack and late.ack == first.ack


def test_failover_for_a_server_the_client_is_not_on_is_declined() -> None:
    step = on_notice(_state(), _failover(server="B", alternates=["C"]), 1000.0, Fixed(), SERVERS)
    assert step.ack == Answer(False, "A", "not-on-server")
    assert step.rejected is None and not step.switched
    assert step.state.current == A and step.state.last_seq == 10
    assert step.state.return_at is None


def test_alternates_skip_the_current_server_or_lack() -> None:
    step = on_notice(_state(), _failover(alternates=["A", "C"]), 1000.0, Fixed(), SERVERS)
    assert step.state.current == C
    none = on_notice(_state(), _failover(alternates=["A"]), 1000.0, Fixed(), SERVERS)
    assert none.ack == Answer(False, "A", "no-alternate") and not none.switched


def test_failover_back_to_home_clears_timers() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(), SERVERS).state
    step = on_notice(
        on_b, _failover(server="B", alternates=["A"], seq=11), 1001.0, Fixed(), SERVERS
    )
    assert step.switched and step.state.current == A
    assert step.state.return_at is None and step.state.stay_until is None


def test_readmission_granted_brings_client_home() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(), SERVERS).state
    step = on_notice(on_b, _readmit(), 1010.0, Fixed(), SERVERS)
    assert step.switched and step.ack == Answer(True, "A")
    assert step.state.current == A
    assert (step.state.return_at, step.state.stay_until) == (None, None)
    assert next_wakeup(step.state) is None


def test_readmission_deferred_rearms_timer_with_jitter() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(), SERVERS).state
    notice = _readmit(granted=False, retry_after_s=10.0, valid_until=1400.0)
    step = on_notice(on_b, notice, 1010.0, Fixed(0.0), SERVERS)
    assert not step.switched and step.ack == Answer(True, "B", "deferred")
    assert step.state.return_at == pytest.approx(1010.0 + 10.0 * 0.8)
    assert step.state.stay_until == 1400.0
    at_home = on_notice(_state(), notice, 1010.0, Fixed(), SERVERS)
    assert at_home.ack == Answer(False, "A", "already-home")


def test_readmission_from_a_server_that_is_not_home_is_declined() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(), SERVERS).state
    step = on_notice(on_b, _readmit(server="C"), 1010.0, Fixed(), SERVERS)
    assert step.ack == Answer(False, "B", "not-home") and not step.switched


def test_a_notice_naming_a_server_the_client_does_not_know_is_refused_whole() -> None:
    # an alternate, or the server left, not in the client's own configuration: whoever
    # holds the client's secret still cannot send it to an address of their choosing
    for notice in (
        _failover(alternates=["X", "B"]),
        _failover(alternates=["B", "X"]),
        _failover(server="X", alternates=["B"]),
    ):
        step = on_notice(_state(), notice, 1000.0, Fixed(), SERVERS)
        assert step.rejected == "unknown-server"
        assert step.ack == Answer(False, "A", "unknown-server")
        assert step.state == _state()  # not even its sequence number is taken
    # a later notice naming known servers only still works
    step = on_notice(_state(), _failover(seq=11), 1000.0, Fixed(), SERVERS)
    assert step.switched and step.state.current == B


def test_the_address_of_an_alternate_is_the_clients_own() -> None:
    own = {**SERVERS, "B": Endpoint(server="B", ip="10.9.9.9", auth_port=11812)}
    step = on_notice(_state(), _failover(), 1000.0, Fixed(), own)
    assert step.state.current == own["B"]


def test_readmission_brings_the_client_to_its_configured_home() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(), SERVERS).state
    step = on_notice(on_b, _readmit(), 1010.0, Fixed(), SERVERS)
    assert step.state.current is on_b.home


def test_timer_asks_to_return_then_keeps_asking() -> None:
    on_b = on_notice(_state(), _failover(), 1000.0, Fixed(0.5), SERVERS).state
    assert on_b.return_at == pytest.approx(1030.0)
    assert on_time(on_b, 1029.0, Fixed()).action is None
    tick = on_time(on_b, 1030.0, Fixed(0.5))
    assert tick.action == "request-return"
    assert tick.state.current == B
    assert tick.state.return_at == pytest.approx(1060.0)


def test_clients_told_together_do_not_all_come_home_together() -> None:
    ends = [
        on_notice(
            _state(), _failover(valid_until=1020.0), 1000.0, random.Random(seed), SERVERS
        ).state.stay_until
        for seed in range(50)
    ]
    assert all(e is not None and 1020.0 <= e <= 1024.0 for e in ends)  # never before void
    assert len({round(e or 0.0, 3) for e in ends}) > 40


def test_client_goes_home_on_its_own_once_the_notice_is_void() -> None:
    on_b = on_notice(_state(), _failover(valid_until=1020.0), 1000.0, Fixed(), SERVERS).state
    # void at 1020, home at a moment up to jitter (0.2) of its 20 s validity later
    assert on_b.stay_until == pytest.approx(1022.0)
    assert on_time(on_b, 1021.5, Fixed()).action is None
    tick = on_time(on_b, 1022.5, Fixed())
    assert tick.action == "lease-over"
    assert tick.state.current == A and next_wakeup(tick.state) is None
    assert on_time(tick.state, 2000.0, Fixed()).action is None
