"""The upstream pool of a proxied client, alone: every state transition, on a given clock."""

from __future__ import annotations

import pytest

from schemas.events import Endpoint
from services.agent.upstreams import Transition, UpstreamPool

A = Endpoint(server="A", ip="10.0.0.1", auth_port=1812)
B = Endpoint(server="B", ip="10.0.0.2", auth_port=1812)
C = Endpoint(server="C", ip="10.0.0.3", auth_port=1812)

WINDOW = 2.0
INTERVAL = 1.0


def pool(answers_to_alive: int = 3) -> UpstreamPool:
    return UpstreamPool(
        [A, B, C],
        response_window_s=WINDOW,
        check_interval_s=INTERVAL,
        answers_to_alive=answers_to_alive,
    )


def zombie(p: UpstreamPool, server: str, at: float = 100.0) -> Transition | None:
    """Leave a request to ``server`` sent at ``at`` unanswered through the window."""
    return p.unanswered(server, at, at + WINDOW)


def test_all_alive_the_preferred_is_in_use() -> None:
    p = pool()
    assert p.preferred == "A" and p.in_use() == A
    assert p.states() == {"A": "alive", "B": "alive", "C": "alive"}
    assert [u.endpoint for u in p.candidates()] == [A, B, C]
    assert p.order == [A, B, C]
    assert p.next_probe_at() is None and p.probes_due(1e9) == []


def test_a_pool_needs_upstreams_and_sane_settings() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UpstreamPool([], response_window_s=1, check_interval_s=1, answers_to_alive=1)
    with pytest.raises(ValueError, match="twice"):
        UpstreamPool([A, A], response_window_s=1, check_interval_s=1, answers_to_alive=1)
    with pytest.raises(ValueError, match="positive"):
        UpstreamPool([A], response_window_s=0, check_interval_s=1, answers_to_alive=1)
    with pytest.raises(ValueError, match="answers_to_alive"):
        UpstreamPool([A], response_window_s=1, check_interval_s=1, answers_to_alive=0)


def test_unanswered_through_the_window_makes_a_zombie() -> None:
    p = pool()
    change = zombie(p, "A", at=100.0)
    assert change == Transition("A", "alive", "zombie", "no answer in 2s")
    assert p.state("A") == "zombie"
    assert p.upstream("A").since == 102.0
    # the next alive one in order is used; a zombie is not
    assert p.in_use() == B
    assert p.retry_target("A") == B


def test_not_a_zombie_before_the_window_is_over() -> None:
    p = pool()
    assert p.unanswered("A", 100.0, 100.0 + WINDOW / 2) is None
    assert p.state("A") == "alive"
    # a timer that fires a hair early still counts as the window being over
    assert p.unanswered("A", 100.0, 100.0 + WINDOW - 0.0005) is not None


def test_not_a_zombie_when_an_answer_came_after_the_request_was_sent() -> None:
    p = pool()
    p.answered("A", 101.0)  # answered another request after this one went out
    assert zombie(p, "A", at=100.0) is None
    assert p.state("A") == "alive"
    # an answer from before the request was sent does not count
    earlier = pool()
    earlier.answered("A", 99.0)
    assert zombie(earlier, "A", at=100.0) is not None


def test_a_zombie_or_unknown_server_is_not_marked_again() -> None:
    p = pool()
    zombie(p, "A")
    assert zombie(p, "A", at=200.0) is None
    assert p.unanswered("X", 0.0, 10.0) is None
    assert p.probed("X", True, 10.0) is None
    p.answered("X", 1.0)  # ignored


def test_next_alive_wraps_round_after_the_preferred() -> None:
    p = pool()
    p.prefer(B)
    assert p.in_use() == B
    assert [u.endpoint.server for u in p.candidates()] == ["B", "C", "A"]
    zombie(p, "B")
    assert p.in_use() == C
    zombie(p, "C")
    assert p.in_use() == A  # wrapped round to the home
    assert p.retry_target("C") == A


def test_with_none_alive_the_preferred_is_used_and_there_is_no_retry() -> None:
    p = pool()
    for server in "ABC":
        zombie(p, server)
    assert p.in_use() == A
    assert p.retry_target("A") is None


def test_the_preferred_one_comes_back_into_use_once_alive() -> None:
    p = pool(answers_to_alive=1)
    zombie(p, "A", at=100.0)
    assert p.in_use() == B
    assert p.probes_due(103.0) == [A]
    assert p.probed("A", True, 103.1) == Transition("A", "zombie", "alive", "1 probes answered")
    assert p.in_use() == A


def test_zombie_is_probed_every_interval_and_alive_after_enough_answers() -> None:
    p = pool(answers_to_alive=3)
    zombie(p, "A", at=100.0)  # zombie at 102
    assert p.next_probe_at() == 103.0
    assert p.probes_due(102.5) == []
    assert p.probes_due(103.0) == [A]
    # not again while that probe is out
    assert p.upstream("A").probing and p.next_probe_at() is None
    assert p.probes_due(104.5) == []
    assert p.probed("A", True, 103.1) is None
    assert p.upstream("A").answers == 1
    assert p.next_probe_at() == 104.0
    assert p.probes_due(104.0) == [A]
    assert p.probed("A", True, 104.1) is None
    assert p.probes_due(105.0) == [A]
    change = p.probed("A", True, 105.1)
    assert change == Transition("A", "zombie", "alive", "3 probes answered")
    assert p.state("A") == "alive" and p.in_use() == A
    assert p.upstream("A").last_answer == 105.1
    assert p.next_probe_at() is None and p.probes_due(200.0) == []


def test_a_missed_probe_makes_a_zombie_dead_and_restarts_the_count() -> None:
    p = pool(answers_to_alive=2)
    zombie(p, "A", at=100.0)
    assert p.probes_due(103.0) == [A]
    assert p.probed("A", True, 103.1) is None
    assert p.probes_due(104.0) == [A]
    assert p.probed("A", False, 104.5) == Transition("A", "zombie", "dead", "probe unanswered")
    assert p.state("A") == "dead" and p.upstream("A").answers == 0
    # a dead one is probed on the same cadence
    assert p.next_probe_at() == 105.0
    assert p.probes_due(105.0) == [A]
    assert p.probed("A", False, 105.5) is None  # still dead, nothing new
    assert p.probes_due(106.0) == [A]
    assert p.probed("A", True, 106.1) is None
    assert p.probes_due(107.0) == [A]
    assert p.probed("A", True, 107.1) == Transition("A", "dead", "alive", "2 probes answered")


def test_a_dead_upstream_is_gone_only_once_silent_for_a_window() -> None:
    p = pool()
    zombie(p, "A", at=100.0)
    assert not p.gone("A", 102.5)  # a zombie may still answer
    p.probes_due(103.0)
    p.probed("A", False, 103.5)
    assert p.state("A") == "dead" and p.gone("A", 103.5)
    # a dead one that answers requests (its Status-Server waits behind them) is not gone
    p.answered("A", 104.0)
    assert not p.gone("A", 104.0 + WINDOW)
    assert p.gone("A", 104.1 + WINDOW)
    assert not p.gone("B", 200.0) and not p.gone("unknown", 200.0)


def test_answers_to_requests_do_not_revive_a_zombie() -> None:
    p = pool(answers_to_alive=1)
    zombie(p, "A")
    p.answered("A", 103.0)  # a late answer to a request sent before
    assert p.state("A") == "zombie" and p.in_use() == B


def test_a_probe_of_an_alive_upstream_changes_nothing() -> None:
    p = pool()
    assert p.probed("A", False, 1.0) is None
    assert p.state("A") == "alive"


def test_notices_choose_the_preferred_one_even_a_zombie_or_unknown() -> None:
    p = pool()
    zombie(p, "B")
    p.prefer(B)
    assert p.preferred == "B" and p.in_use() == C  # B is a zombie: the next alive one
    D = Endpoint(server="D", ip="10.0.0.4", auth_port=1645)
    p.prefer(D)
    assert p.order == [A, B, C, D] and p.in_use() == D
    zombie(p, "D")
    assert p.in_use() == A  # after D, wrapping round
    moved = Endpoint(server="A", ip="10.0.0.9", auth_port=1812)
    p.prefer(moved)
    assert p.in_use() == moved and p.order[0] == moved
