"""The EAP benchmark's figures and goals from plain records."""

from __future__ import annotations

import pytest

from bench import eap
from bench.eap import Conversation
from tests.support.eap import parse


def test_a_conversation_is_ok_only_accepted_with_matching_keys() -> None:
    challenge = "RADIUS message: code=11 (Access-Challenge)"
    matched = "Received RADIUS packet matched with a pending request"

    def run(*codes: str, end: str = "SUCCESS", code: int = 0) -> str:
        lines = []
        for reply in codes:
            lines += ["Received RADIUS message", reply, matched]
        return "\n".join([*lines, end])

    rejected = run(challenge, "RADIUS message: code=3 (Access-Reject)", end="FAILURE")
    assert eap.outcome_of(parse(rejected, code=252)) == "rejected"
    assert eap.outcome_of(parse(run(challenge, end="FAILURE"), code=252)) == "lost"
    # accepted, but no keys shown: not ok
    accepted = run(challenge, "RADIUS message: code=2 (Access-Accept)")
    assert eap.outcome_of(parse(accepted)) == "bad-keys"


def test_figures_count_failures_around_moves_and_the_stop() -> None:
    records = [
        Conversation(0.0, 1.0, "ok"),
        Conversation(1.5, 2.5, "ok"),  # across the move at 2.0
        Conversation(1.8, 3.0, "rejected"),  # across it too
        Conversation(2.2, 12.2, "lost"),  # begun after it
    ]
    moves = eap.move_figures(records, [2.0], [2])
    assert (moves["conversations"], moves["failed"], moves["rejected"], moves["lost"]) == (
        4,
        2,
        1,
        1,
    )
    assert moves["failed_per_move"] == 2 and moves["across_a_move"] == 2
    assert moves["draining_acked"] == 2
    assert eap.move_figures(records, [], [])["failed_per_move"] is None
    stop = eap.stop_figures(records, stopped=2.0)
    assert (stop["under_way_at_stop"], stop["failed_under_way"]) == (2, 1)
    assert stop["failed_begun_after"] == 1
    rate = eap.throughput_figures(records)
    assert rate["span_s"] == pytest.approx(12.2) and rate["per_s"] == pytest.approx(2 / 12.2)
    assert eap.throughput_figures([])["per_s"] == 0.0


def test_goals_want_no_failure_by_a_move_and_fewer_than_the_pool() -> None:
    throughput = {"straight": {"per_s": 50.0}, "agent": {"per_s": 45.0}}
    moves = {"failed": 0, "moves": 9}
    stopped = {
        "agent": {"failed": 16, "rejected": 0, "failed_begun_after": 0},
        "freeradius-pool": {"failed": 23, "rejected": 23, "failed_begun_after": 7},
    }
    assert [g["met"] for g in eap.goals(throughput, moves, stopped)] == [True] * 4
    worse = {**stopped, "agent": {"failed": 30, "rejected": 1, "failed_begun_after": 0}}
    slow = {**throughput, "agent": {"per_s": 30.0}}
    assert [g["met"] for g in eap.goals(slow, {"failed": 1, "moves": 9}, worse)] == [False] * 4
