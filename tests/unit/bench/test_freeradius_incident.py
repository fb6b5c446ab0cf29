"""The FreeRADIUS incident benchmark's figures and goals from plain records."""

from __future__ import annotations

import pytest

from bench import freeradius_incident as fi
from bench.nas import Request


def request(index: int, sent_at: float, latency: float | None, **kwargs: object) -> Request:
    outcome = "lost" if latency is None else kwargs.pop("outcome", "accepted")
    return Request(
        index=index,
        target=("127.0.0.1", 1812),
        user="alice",
        due_at=sent_at,
        sent_at=sent_at,
        outcome=outcome,  # type: ignore[arg-type]
        answered_at=None if latency is None else sent_at + latency,
        **kwargs,  # type: ignore[arg-type]
    )


def test_figures_count_what_the_nas_and_the_set_up_saw() -> None:
    records = [
        request(0, 1.0, 0.01),
        request(1, 10.2, 2.01),  # paid a response window
        request(2, 10.3, None),  # lost: paid it too
        request(3, 10.4, 3.2, late=True),
        request(4, 10.5, 0.02, outcome="rejected"),
    ]
    seen = fi.Seen(incident_opened=11.0)
    for at, where in ((0.5, "H1"), (11.2, "H2"), (14.0, "H1"), (15.0, "H2"), (41.0, "H1")):
        seen.at(at, where)
    seen.at(41.5, "H1")  # no change: not a move
    out = fi.figures(records, seen, start=0.0, onset=10.0, recovered=40.0)
    assert (out["sent"], out["lost"], out["rejected"], out["answered_late"]) == (5, 1, 1, 1)
    assert out["paid_window"] == 3
    assert out["first_move_s"] == pytest.approx(1.2) and out["flaps"] == 2
    assert out["back_home_s"] == pytest.approx(1.0) and out["incident_s"] == pytest.approx(1.0)
    # never moved, never home again after the recovery: no figure, not a zero
    still = fi.figures(records, fi.Seen(where=[(0.5, "H1"), (12.0, "H2")]), 0.0, 10.0, 40.0)
    assert still["back_home_s"] is None and still["incident_s"] is None


def test_goals_compare_the_whole_loop_with_the_agent_alone() -> None:
    agent = {"lost": 0, "answered_late": 0, "paid_window": 200, "incident_s": None}
    loop = {"lost": 0, "answered_late": 0, "paid_window": 19, "incident_s": 1.2}
    goals = fi.goals({"stopped": {"agent": agent, "aaa-failover": loop}})
    assert [g["met"] for g in goals] == [True, True, True]
    slow = {**loop, "paid_window": 20, "incident_s": 1.6, "answered_late": 1}
    assert [g["met"] for g in fi.goals({"s": {"agent": agent, "aaa-failover": slow}})] == [
        False,
        False,
        False,
    ]
