"""Adaptive wave sizing: what each wave cost sizes the next, as a pure function."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.readmitter.sizing import (
    Measuring,
    Size,
    WaveCost,
    loads,
    next_size,
    observed,
)
from services.runtime.config import ReadmitterConfig

THRESHOLD = 0.6
ADAPTIVE = ReadmitterConfig(first_wave_size=2, growth=4.0, max_wave_size=50, margin=0.1)


def _cost(wave: int, clients: int, load: float, before: float, *after: float) -> WaveCost:
    cost = WaveCost(wave=wave, clients=clients, load=load, health_before=before)
    for health in after:
        cost = observed(cost, health)
    return cost


def _size(
    costs: list[WaveCost],
    health: float = 0.9,
    away: list[float] | None = None,
    settings: ReadmitterConfig = ADAPTIVE,
) -> Size | Measuring:
    return next_size(
        costs,
        settings=settings,
        health=health,
        connection_threshold=THRESHOLD,
        away_loads=away if away is not None else [1.0] * 100,
    )


def test_fixed_sizing_is_the_wave_size_whatever_the_cost() -> None:
    fixed = ReadmitterConfig(sizing="fixed", wave_size=5)
    assert _size([], settings=fixed) == Size(clients=5, reason="fixed waves of 5")
    dipped = _cost(1, 5, 5.0, 0.9, 0.3, 0.3)
    assert _size([dipped], settings=fixed).clients == 5  # type: ignore[union-attr]


def test_the_first_wave_is_small() -> None:
    first = _size([])
    assert first == Size(clients=2, reason="first wave: small")


def test_the_next_wave_waits_until_the_last_ones_cost_is_measured() -> None:
    settings = ReadmitterConfig(settle_reports=3)
    waiting = _size([_cost(1, 2, 2.0, 0.9, 0.88)], settings=settings)
    assert isinstance(waiting, Measuring) and "1 of 3 health reports" in waiting.reason


def test_a_wave_that_cost_nothing_measurable_grows_the_next_by_growth() -> None:
    free = _cost(1, 2, 2.0, 0.9, 0.89, 0.9)
    grown = _size([free])
    assert isinstance(grown, Size) and grown.clients == 8
    assert "no measurable health" in grown.reason
    # never beyond max_wave_size
    capped = _size([_cost(3, 40, 40.0, 0.9, 0.9, 0.9)])
    assert isinstance(capped, Size) and capped.clients == 50


def test_a_measured_cost_sizes_the_next_wave_to_keep_health_above_threshold_plus_margin() -> None:
    # 4 req/s took health from 0.95 to 0.91: 0.01 per req/s; at 0.91 the room above
    # 0.6 + 0.1 is 0.21, so 21 req/s more: 10 clients of 2 req/s
    measured = _cost(2, 4, 4.0, 0.95, 0.91, 0.91)
    sized = _size([measured], health=0.91, away=[2.0] * 30)
    assert isinstance(sized, Size) and sized.clients == 10
    assert "fits 21.0 request/s" in sized.reason
    # heavy clients first: fewer fit
    sized = _size([measured], health=0.91, away=[10.0, 10.0, 2.0, 2.0, 10.0, 10.0])
    assert isinstance(sized, Size) and sized.clients == 2
    # no more than growth times the last wave
    cheap = _cost(2, 2, 20.0, 0.95, 0.92, 0.92)
    sized = _size([cheap], health=0.92, away=[0.1] * 100)
    assert isinstance(sized, Size) and sized.clients == 8 and "at most 8 now" in sized.reason


def test_a_wave_that_dipped_below_threshold_plus_margin_halves_the_next() -> None:
    # no measurable cost (it started as low): halved
    dipped = _cost(3, 8, 8.0, 0.67, 0.7, 0.62)
    halved = _size([dipped], health=0.8)
    assert isinstance(halved, Size) and halved.clients == 4
    assert halved.reason == "wave 3 took health down to 0.66, below 0.70: halved to 4"
    # a measured cost: the fewer of half the last wave and what fits
    dipped = _cost(3, 8, 8.0, 0.9, 0.7, 0.62)  # 0.03 per req/s; 0.1 of room: 3
    sized = _size([dipped], health=0.8)
    assert isinstance(sized, Size) and sized.clients == 3
    assert "below 0.70" in sized.reason and "fits 3.3 request/s: 3 clients" in sized.reason
    sized = _size([dipped], health=0.95)  # 8 fit: half the last wave
    assert isinstance(sized, Size) and sized.clients == 4 and "halved to 4" in sized.reason
    # one low report alone is not a dip: the level is
    noisy = _cost(3, 8, 8.0, 0.9, 0.62, 0.9, 0.9)
    assert "below" not in _size([noisy], health=0.8).reason  # type: ignore[union-attr]
    one = _size([_cost(4, 1, 1.0, 0.67, 0.62, 0.66)], health=0.8)  # level 0.64
    assert isinstance(one, Size) and one.clients == 1


def test_the_level_after_a_wave_is_the_mean_of_its_latest_reports() -> None:
    # the first report after a wave reads short: its clients' load has not shown yet
    cost = _cost(1, 4, 4.0, 0.95, 0.95, 0.9, 0.85, 0.85, 0.85)
    assert cost.reports == 5 and cost.health_after == 0.85
    assert cost.per_load() == pytest.approx(0.025)


def test_within_the_margin_a_wave_takes_half_the_room_left_above_the_threshold() -> None:
    measured = _cost(2, 8, 4.0, 0.85, 0.65, 0.65)  # 0.05 per req/s
    sized = _size([measured], health=0.68, away=[0.25] * 10)
    # 0.08 above 0.6: half is 0.04, 0.8 req/s: 3 clients (under half the last wave)
    assert isinstance(sized, Size) and sized.clients == 3
    assert "within the margin: half" in sized.reason


def test_with_no_room_above_the_margin_a_wave_still_brings_one_client() -> None:
    measured = _cost(2, 4, 4.0, 0.95, 0.8, 0.8)
    sized = _size([measured], health=0.7)
    assert isinstance(sized, Size) and sized.clients == 1


def test_an_earlier_measured_cost_is_kept_when_the_last_wave_measured_nothing() -> None:
    measured = _cost(1, 2, 2.0, 0.95, 0.85, 0.85)  # 0.05 per req/s
    noisy = _cost(2, 1, 1.0, 0.85, 0.85, 0.86)
    sized = _size([measured, noisy], health=0.85, away=[1.0] * 10)
    # 0.15 of room at 0.05 per req/s: 3 clients (not 4x the last wave of 1)
    assert isinstance(sized, Size) and sized.clients == 3


def test_the_last_clients_go_together_when_all_of_them_keep_health_above_the_threshold() -> None:
    measured = _cost(3, 8, 20.0, 0.975, 0.9, 0.9)  # 0.00375 per req/s
    # 30 clients of 2.5 req/s left: 0.9 - 0.28 = 0.62, above 0.6 (not 0.7): all of them
    last = _size([measured], health=0.9, away=[2.5] * 30)
    assert isinstance(last, Size) and last.clients == 30
    assert "leaves health at 0.62, at or above the threshold 0.60: 30 clients" in last.reason
    # never more than growth allows at once
    last = _size([measured], health=0.9, away=[0.5] * 40)
    assert isinstance(last, Size) and last.clients == 32 and "at most 32 now" in last.reason
    # 34 would leave 0.58: the margin rule holds, 0.2 of room fits 21 clients
    some = _size([measured], health=0.9, away=[2.5] * 34)
    assert isinstance(some, Size) and some.clients == 21


def test_rates_of_unknown_clients_count_as_the_mean_of_those_known() -> None:
    assert loads(["a", "b", "c"], {"a": 2.0, "b": 4.0}) == [2.0, 4.0, 3.0]
    assert loads(["a", "b"], {}) == [1.0, 1.0]
    assert loads(["a", "b"], {"a": 0.0, "b": 5.0}) == [5.0, 5.0]


@given(
    costs=st.lists(
        st.builds(
            _cost,
            st.integers(1, 20),
            st.integers(1, 60),
            st.floats(0.0, 100.0),
            st.floats(0.0, 1.0),
            st.floats(0.0, 1.0),
            st.floats(0.0, 1.0),
        ),
        max_size=5,
    ),
    health=st.floats(THRESHOLD, 1.0),
    away=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=80),
)
def test_a_sized_wave_is_at_least_one_client_and_within_growth_and_the_cap(
    costs: list[WaveCost], health: float, away: list[float]
) -> None:
    size = _size(costs, health=health, away=away)
    if not costs:
        assert size == Size(clients=2, reason="first wave: small")
        return
    assert isinstance(size, Size)  # two reports each: measured
    assert 1 <= size.clients <= min(50, max(1, int(costs[-1].clients * 4.0)))
