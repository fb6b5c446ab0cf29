"""Replay's pure parts: which recorded inputs a sandbox gets, its window and its pacing."""

from __future__ import annotations

import pytest

from services.runtime.config import ConfigError
from services.tools.recording import RecordingError, WindowSpec, parse_time
from services.tools.replay import (
    INPUT_KINDS,
    choose_kinds,
    parse_speed,
    schedule,
    select,
)
from services.tools.tail import Seen


def test_window_and_pacing_helpers() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == parse_time("2026-01-02T03:04:05")
    assert parse_time("2026-01-02T04:04:05+01:00") == parse_time("2026-01-02T03:04:05Z")
    assert parse_time("-90s", now=1000.0) == 910.0
    assert parse_time("-2m", now=1000.0) == 880.0
    assert parse_time("1700000000.5") == 1700000000.5
    with pytest.raises(RecordingError, match="expected ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(RecordingError, match="--incident"):
        WindowSpec()
    assert parse_speed("10x") == 10.0 and parse_speed("2.5") == 2.5
    for bad in ("0x", "-1", "fast"):
        with pytest.raises(ConfigError):
            parse_speed(bad)
    assert schedule([100.0, 101.0, 103.0], 2.0) == [0.0, 0.5, 1.5]
    assert schedule([100.0, 101.0], None) == [0.0, 0.0]
    assert choose_kinds(None) == INPUT_KINDS
    assert "plan" in choose_kinds(["all"])
    with pytest.raises(ConfigError, match="unknown kinds"):
        choose_kinds(["metrics", "bogus"])


def test_replay_selects_inputs_and_cuts_client_reactions_after_the_first_plan() -> None:
    def seen(subject: str, at: float, verified: bool = True) -> Seen:
        return Seen(subject, b"{}", {}, None, verified, received=at)

    window = [
        seen("aaa.metrics.A", 1.0),
        seen("aaa.status.n1", 1.5),
        seen("aaa.health.A", 1.6),
        seen("aaa.metrics.A", 2.0, verified=False),
        seen("aaa.plan.A", 2.1),
        seen("aaa.ack.n1", 2.2),
        seen("aaa.status.n1", 2.5),
        seen("aaa.request.A", 2.6),
        seen("aaa.metrics.A", 3.0),
    ]
    cut = select(window, "aaa", INPUT_KINDS, cut_reactions=True)
    assert [(s.subject, s.received) for s in cut.send] == [
        ("aaa.metrics.A", 1.0),
        ("aaa.status.n1", 1.5),
        ("aaa.request.A", 2.6),
        ("aaa.metrics.A", 3.0),
    ]
    assert (cut.other_kinds, cut.rejected, cut.reactions) == (2, 1, 2)
    whole = select(window, "aaa", INPUT_KINDS, cut_reactions=False)
    assert len(whole.send) == 6 and whole.reactions == 0
    no_plan = select([window[1], window[6]], "aaa", INPUT_KINDS, cut_reactions=True)
    assert len(no_plan.send) == 2
