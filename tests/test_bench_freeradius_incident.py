"""The FreeRADIUS incident benchmark: its figures from plain records, and one short real run
of the whole loop on FreeRADIUS (the full benchmark takes minutes: `make bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import freeradius_incident as fi
from bench.nas import Request
from tests.freeradius import require


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


@pytest.mark.freeradius
@pytest.mark.nats
@pytest.mark.timeout(120)
async def test_the_whole_loop_on_freeradius_opens_and_moves_before_a_window_is_paid(
    tmp_path: Path,
) -> None:
    require("freeradius")
    params = {"warmup_s": 2.0, "incident_s": 4.0, "recovery_s": 4.0}
    out = await fi.run_one("aaa-failover", (1.0, 4.0), params, tmp_path)
    assert out["sent"] == 1000 and out["lost"] == 0 and out["answered_late"] == 0, out
    assert out["incident_s"] is not None and out["first_move_s"] is not None, out
    assert out["paid_window"] < 100, out
