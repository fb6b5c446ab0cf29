"""The incident state machine: hysteresis, relapses, closing, and its KV encoding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.evaluator.incidents import (
    ServerState,
    Transition,
    close,
    step,
)
from services.runtime.config import EvaluatorConfig

CFG = EvaluatorConfig(
    failover_threshold=0.2, connection_threshold=0.6, failover_samples=2, recovery_samples=3
)
LOW, MID, HIGH = 0.1, 0.4, 0.9


class Machine:
    """A state driven through a sequence of healths, remembering the transitions."""

    def __init__(self, cfg: EvaluatorConfig = CFG) -> None:
        self.cfg = cfg
        self.state = ServerState(server="A")
        self.ids = (f"inc-{n}" for n in itertools.count(1))
        self.now = 1000.0
        self.transitions: list[Transition] = []

    def feed(self, healths: Iterable[float]) -> list[Transition]:
        made: list[Transition] = []
        for health in healths:
            self.now += 1
            self.state, transition = step(
                self.state, health, self.now, self.cfg, lambda: next(self.ids)
            )
            if transition is not None:
                made.append(transition)
        self.transitions += made
        return made

    def close(self, incident_id: str) -> Transition | None:
        self.now += 1
        self.state, transition = close(self.state, incident_id, 0.95, self.now)
        return transition


def test_opens_only_after_consecutive_lows() -> None:
    m = Machine()
    assert m.feed([LOW]) == []
    assert m.state.phase == "healthy" and m.state.lows == 1
    [opened] = m.feed([LOW])
    assert opened.state == "opened"
    assert opened.incident_id == "inc-1"
    assert opened.relapses == 0
    assert opened.opened_at == m.now
    assert m.state.phase == "overloaded"
    assert m.state.incident_id == "inc-1"


def test_a_sample_between_thresholds_resets_the_count() -> None:
    m = Machine()
    assert m.feed([LOW, MID, LOW, HIGH, LOW]) == []
    assert m.state.phase == "healthy"
    assert len(m.feed([LOW])) == 1


def test_exactly_at_the_failover_threshold_is_not_low() -> None:
    m = Machine()
    assert m.feed([0.2] * 10) == []
    assert m.state.phase == "healthy"
    assert len(m.feed([0.19999, 0.19999])) == 1


def test_exactly_at_the_connection_threshold_counts_as_recovered() -> None:
    m = Machine()
    m.feed([LOW, LOW])
    assert m.feed([0.59999] * 10) == []
    assert m.state.phase == "overloaded"
    [recovering] = m.feed([0.6, 0.6, 0.6])
    assert recovering.state == "recovering"
    assert recovering.incident_id == "inc-1"
    assert m.state.phase == "recovering"


def test_recovery_needs_consecutive_highs() -> None:
    m = Machine()
    m.feed([LOW, LOW])
    assert m.feed([HIGH, HIGH, MID, HIGH, HIGH, LOW, HIGH, HIGH]) == []
    assert m.state.phase == "overloaded"
    assert [t.state for t in m.feed([HIGH])] == ["recovering"]


def test_relapse_keeps_the_incident_id_and_counts() -> None:
    m = Machine()
    m.feed([LOW, LOW, HIGH, HIGH, HIGH])
    assert m.state.phase == "recovering"
    assert m.feed([LOW, MID, LOW]) == []
    [relapse] = m.feed([LOW])
    assert relapse.state == "opened"
    assert relapse.incident_id == "inc-1"
    assert relapse.relapses == 1
    assert relapse.opened_at == m.transitions[0].opened_at
    m.feed([HIGH, HIGH, HIGH, LOW, LOW])
    assert m.transitions[-1].relapses == 2
    assert {t.incident_id for t in m.transitions} == {"inc-1"}


def test_close_ends_a_recovering_incident_and_the_next_one_is_new() -> None:
    m = Machine()
    m.feed([LOW, LOW, HIGH, HIGH, HIGH])
    closed = m.close("inc-1")
    assert closed is not None
    assert closed.state == "closed" and closed.incident_id == "inc-1"
    assert m.state.phase == "healthy"
    assert m.state.incident_id is None and m.state.relapses == 0
    [opened] = m.feed([LOW, LOW])
    assert opened.incident_id == "inc-2" and opened.relapses == 0


def test_close_is_ignored_unless_recovering_and_same_incident() -> None:
    m = Machine()
    assert m.close("inc-1") is None
    m.feed([LOW, LOW])
    assert m.close("inc-1") is None
    assert m.state.phase == "overloaded"
    m.feed([HIGH, HIGH, HIGH])
    assert m.close("other") is None
    assert m.state.phase == "recovering"


def test_single_sample_thresholds() -> None:
    cfg = EvaluatorConfig(failover_samples=1, recovery_samples=1)
    m = Machine(cfg)
    assert [t.state for t in m.feed([0.0, 1.0, 0.0])] == ["opened", "recovering", "opened"]


def test_state_round_trips_through_kv_encoding() -> None:
    m = Machine()
    m.feed([LOW, LOW, HIGH])
    assert msgspec.json.decode(msgspec.json.encode(m.state), type=ServerState) == m.state


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b'{"server": "A", "phase": "overloaded"}',
        b'{"server": "A", "phase": "exploded"}',
        b'{"server": "A", "lows": -1}',
        b"not json",
    ],
)
def test_bad_stored_state_is_refused(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        msgspec.json.decode(data, type=ServerState)


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60))
def test_invariants_over_any_sequence(healths: list[float]) -> None:
    m = Machine()
    m.feed(healths)
    # One incident id per machine (nothing closes it here), opened first.
    assert len({t.incident_id for t in m.transitions}) <= 1
    if m.transitions:
        assert m.transitions[0].state == "opened"
    for before, after in itertools.pairwise(m.transitions):
        assert before.state != after.state
        assert after.relapses >= before.relapses
    # A run that reaches its trigger always moves the machine on.
    assert m.state.lows < CFG.failover_samples or m.state.phase == "overloaded"
    assert m.state.highs < CFG.recovery_samples or m.state.phase != "overloaded"
    assert (m.state.phase == "healthy") == (m.state.incident_id is None)
