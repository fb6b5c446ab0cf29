"""The incident state machine: hysteresis, relapses, closing, and its KV encoding."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import Incident
from services.evaluator.incidents import (
    ServerState,
    Transition,
    close,
    resume,
    step,
)
from services.runtime.config import ConfigError, EvaluatorConfig, parse_config

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
        b'{"server": "A", "lows": 1, "predicted": 2}',
        b'{"server": "A", "recent": [[1.0]]}',
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


# --- a state brought up to the stream ---------------------------------------------------


def announced(server: str, transition: Transition, now: float) -> Incident:
    """The Incident the evaluator publishes for ``transition`` at ``now``."""
    return Incident(
        time=now,
        incident_id=transition.incident_id,
        server=server,
        state=transition.state,
        health=transition.health,
        opened_at=transition.opened_at,
        relapses=transition.relapses,
    )


@given(st.lists(st.one_of(st.floats(min_value=0.0, max_value=1.0), st.just("close")), max_size=60))
def test_a_state_stored_before_its_last_change_is_brought_up_to_it(
    inputs: list[float | str],
) -> None:
    # the evaluator published each change, then stopped before it stored the state: the
    # state it stored last, resumed with the change, is the machine's (its run counters
    # aside); a state that holds the change is left as it is
    m = Machine()
    for item in inputs:
        before = m.state
        if item == "close":
            transition = m.close(m.state.incident_id or "none")
        else:
            [transition] = m.feed([item]) or [None]
        if transition is None:
            continue
        incident = announced("A", transition, m.now)
        counters = {"lows": 0, "highs": 0, "predicted": 0}
        assert resume(before, incident) == msgspec.structs.replace(m.state, **counters)
        assert resume(m.state, incident) is m.state


def test_a_change_of_another_server_or_an_older_one_changes_nothing() -> None:
    m = Machine()
    [opened] = m.feed([LOW, LOW])
    stale = announced("A", opened, m.now - 5)
    assert resume(m.state, stale) is m.state
    other = announced("B", opened, m.now + 5)
    assert resume(ServerState(server="A"), other).phase == "healthy"


# --- predictive onset -----------------------------------------------------------------

PREDICT = msgspec.structs.replace(
    CFG, predict_horizon_s=2.5, predict_samples=5, predict_min_drop=0.1
)


def opened_at(cfg: EvaluatorConfig, healths: list[float]) -> tuple[int, str] | None:
    """The index of the sample that opened an incident (one a second), and why; None if none."""
    m = Machine(cfg)
    for i, health in enumerate(healths):
        made = m.feed([health])
        if made and made[0].state == "opened":
            return i, made[0].reason
    return None


# 0.9 falling 0.1 a second to 0.0: below 0.2 from 0.1 (index 8).
FALL = [round(0.9 - 0.1 * i, 2) for i in range(10)]


def test_a_steady_fall_opens_three_samples_earlier_with_prediction() -> None:
    assert opened_at(CFG, FALL) == (9, "health 0.00 below 0.20 for 2 samples")
    # At 0.4 (index 5) the line through the last five crosses 0.2 in 2 s, within 2.5 s;
    # at 0.5 it would take 3 s. 0.4 and 0.3 are the two lows.
    assert opened_at(PREDICT, FALL) == (
        6,
        "health 0.30 falling 0.10/s, crosses 0.20 in 1.0s (2 of 2 samples predicted)",
    )


def test_prediction_needs_a_full_window_and_a_horizon() -> None:
    # Off (horizon 0): as without; no points are kept, so stored states stay as before.
    m = Machine(msgspec.structs.replace(PREDICT, predict_horizon_s=0.0))
    m.feed(FALL[:9])
    assert m.transitions == [] and m.state.recent == ()
    # A horizon of 0.5 s predicts only at 0.2 (on the threshold, not below it): one
    # predicted low, then the real one at 0.1.
    assert opened_at(msgspec.structs.replace(PREDICT, predict_horizon_s=0.5), FALL) == (
        8,
        "health 0.10 below 0.20 for 2 samples, 1 of them predicted",
    )
    # Ten samples to fit on: the window is full only at the last one.
    late = opened_at(msgspec.structs.replace(PREDICT, predict_samples=10), FALL)
    assert late is not None and late[0] == 9


def test_a_noisy_flat_line_at_a_high_value_never_opens() -> None:
    rng = random.Random(7)
    noisy = [rng.uniform(0.7, 0.9) for _ in range(5000)]
    eager = EvaluatorConfig(predict_horizon_s=3600.0, predict_samples=3, predict_min_drop=0.0)
    assert opened_at(eager, noisy) is None
    assert opened_at(PREDICT, noisy) is None


@given(st.lists(st.floats(min_value=0.6, max_value=1.0), max_size=80))
def test_nothing_at_or_above_the_connection_threshold_is_predicted(healths: list[float]) -> None:
    eager = EvaluatorConfig(predict_horizon_s=3600.0, predict_samples=3, predict_min_drop=0.0)
    m = Machine(eager)
    assert m.feed(healths) == []
    assert m.state.lows == 0


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60))
def test_prediction_never_opens_later_than_the_thresholds_alone(healths: list[float]) -> None:
    plain, predicted = opened_at(CFG, healths), opened_at(PREDICT, healths)
    if plain is not None:
        assert predicted is not None and predicted[0] <= plain[0]
    m = Machine(PREDICT)
    m.feed(healths)
    assert (
        m.state.predicted <= m.state.lows < PREDICT.failover_samples or m.state.phase != "healthy"
    )
    assert len(m.state.recent) <= PREDICT.predict_samples


def test_a_sharp_step_down_opens_as_without_prediction() -> None:
    step_down = [0.9] * 10 + [0.05] * 3
    assert opened_at(PREDICT, step_down) == opened_at(CFG, step_down)
    assert opened_at(CFG, step_down) == (11, "health 0.05 below 0.20 for 2 samples")


@pytest.mark.parametrize("level", [0.25, 0.375, 0.5, 0.55])
def test_a_step_down_that_holds_between_the_thresholds_never_opens(level: float) -> None:
    # As on an alternate that takes a failed-over server's clients: the line through
    # the step falls steeply, but health stops falling after it.
    eager = msgspec.structs.replace(PREDICT, predict_horizon_s=3600.0, predict_min_drop=0.0)
    assert opened_at(eager, [0.97] * 10 + [level] * 30) is None


def test_one_low_sample_then_a_rise_does_not_open() -> None:
    # The line through 0.9, 0.9, 0.9, 0.1, 0.5 falls and crosses 0.2 within 1 s,
    # but health rose since the previous sample: not falling now, not low.
    dip = [0.9, 0.9, 0.9, 0.1, 0.5, 0.5, 0.5]
    assert opened_at(PREDICT, dip) is None
    assert opened_at(CFG, dip) is None


def test_a_fall_between_the_thresholds_does_not_relapse_a_recovering_incident() -> None:
    m = Machine(PREDICT)
    m.feed([LOW, LOW, HIGH, HIGH, HIGH])
    assert m.state.phase == "recovering"
    assert m.feed([0.55, 0.45, 0.35, 0.25]) == []  # waves bring load back; thresholds alone
    [relapse] = m.feed([LOW, LOW])
    assert relapse.relapses == 1
    assert relapse.reason == "health 0.10 below 0.20 for 2 samples"


def test_the_points_survive_a_restart() -> None:
    straight = Machine(PREDICT)
    straight.feed(FALL[:5])
    assert [h for _, h in straight.state.recent] == FALL[:5]
    # The evaluator stores the state as JSON in KV and reads it back after a restart.
    restarted = Machine(PREDICT)
    restarted.now = straight.now
    restarted.state = msgspec.json.decode(msgspec.json.encode(straight.state), type=ServerState)
    assert restarted.state == straight.state
    assert straight.feed(FALL[5:]) == restarted.feed(FALL[5:])
    assert restarted.transitions[0].incident_id == "inc-1"
    assert restarted.transitions[0].opened_at == 1007.0  # index 6, as without the restart


def test_a_state_stored_before_prediction_still_loads() -> None:
    old = b'{"server": "A", "phase": "healthy", "lows": 1, "health": 0.1, "changed_at": 5.0}'
    state = msgspec.json.decode(old, type=ServerState)
    assert (state.lows, state.predicted, state.recent) == (1, 0, ())
    state, transition = step(state, 0.1, 10.0, PREDICT, lambda: "inc-1")
    assert transition is not None and transition.state == "opened"


def test_the_window_keeps_the_last_points_and_drops_any_from_the_future() -> None:
    state = ServerState(server="A", recent=((1.0, 0.9), (2.0, 0.8), (50.0, 0.7)))
    state, _ = step(state, 0.6, 3.0, PREDICT)
    assert state.recent == ((1.0, 0.9), (2.0, 0.8), (3.0, 0.6))
    for t in range(4, 10):
        state, _ = step(state, 0.9, float(t), PREDICT)
    assert [t for t, _ in state.recent] == [5.0, 6.0, 7.0, 8.0, 9.0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("predict_horizon_s = -1.0", r"predict_horizon_s must be 0 \(off\) or a positive number"),
        ("predict_horizon_s = inf", r"predict_horizon_s must be 0 \(off\) or a positive number"),
        ("predict_horizon_s = nan", r"predict_horizon_s must be 0 \(off\) or a positive number"),
        ("predict_samples = 2", "predict_samples must be at least 3"),
        ("predict_min_drop = 1.5", r"predict_min_drop must be in \[0, 1\]"),
        ("predict_min_drop = -0.1", r"predict_min_drop must be in \[0, 1\]"),
        (
            "predict_samples = 5.5",
            "Expected `int`, got `float` - at `\\$.evaluator.predict_samples`",
        ),
    ],
)
def test_bad_prediction_settings_are_refused_with_one_line(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(f"[bus]\n[evaluator]\n{setting}\n")
    assert "\n" not in str(caught.value)
    assert "evaluator" in str(caught.value)


def test_the_defaults_leave_prediction_off() -> None:
    cfg = EvaluatorConfig()
    assert (cfg.predict_horizon_s, cfg.predict_samples, cfg.predict_min_drop) == (0.0, 5, 0.1)
    assert opened_at(cfg, FALL) == opened_at(CFG, FALL)
