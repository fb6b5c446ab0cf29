"""What the clients see: each agent's per-upstream tally, and the evaluator's fold (pure)."""

from __future__ import annotations

import pytest

from schemas.events import ClientStatus, UpstreamChange, UpstreamReport
from services.agent.tally import Tallies
from services.evaluator.clients import ClientsView


def test_a_tally_reports_each_upstream_and_the_changes_then_starts_afresh() -> None:
    tallies = Tallies()
    for latency in (0.01, 0.02, 0.03):
        tallies.answered("A", latency)
    tallies.timed_out("A")
    tallies.resent("A")
    tallies.answered("B", 0.005)
    change = UpstreamChange(server="A", before="alive", after="zombie", reason="no answer in 2s")
    tallies.changed(change)
    reports, changes = tallies.drain({"A": "zombie", "B": "alive", "C": "dead"})
    by = {r.server: r for r in reports}
    assert list(by) == ["A", "B", "C"]
    a = by["A"]
    assert (a.state, a.answers, a.timeouts, a.resent, a.changes) == ("zombie", 3, 1, 1, 1)
    assert (a.p50_s, a.p90_s, a.max_s) == (0.02, 0.03, 0.03)
    assert by["B"].answers == 1 and by["C"] == UpstreamReport(server="C", state="dead")
    assert changes == [change]
    again, none = tallies.drain({})
    assert again == [] and none == []


def status(client: str, server: str, answers: int, timeouts: int) -> ClientStatus:
    report = UpstreamReport(server=server, answers=answers, timeouts=timeouts)
    return ClientStatus(client=client, home=server, current=server, upstreams=[report])


def test_the_clients_part_is_the_share_unanswered_in_time_against_the_tolerance() -> None:
    view = ClientsView(window_s=3.0, tolerance=0.25, min_requests=10)
    view.add(status("nas-1", "A", 90, 0), now=10.0)
    calm = view.part("A", 10.5)
    assert calm is not None and calm.headroom == 1.0
    view.add(status("nas-2", "A", 5, 5), now=11.0)
    hurt = view.part("A", 11.5)
    # 5 of 100 requests late: a fifth of the tolerance gone
    assert hurt is not None and hurt.headroom == pytest.approx(0.8)
    assert hurt.detail == (
        "5 of 100 requests of 2 clients unanswered within their response window, at 1 clients"
    )
    # the calm report leaves the window; half of what is left is late
    late = view.part("A", 13.5)
    assert late is not None and late.headroom == 0.0


def test_too_few_requests_or_none_give_no_part() -> None:
    view = ClientsView(window_s=3.0, tolerance=0.25, min_requests=10)
    assert view.part("A", 1.0) is None
    view.add(status("nas-1", "A", 3, 3), now=1.0)
    assert view.part("A", 1.5) is None
    assert view.part("B", 1.5) is None


def test_reports_on_servers_it_does_not_score_are_left_out() -> None:
    view = ClientsView(window_s=3.0, tolerance=0.25, min_requests=10, servers={"A"})
    view.add(status("nas-1", "X", 0, 90), now=1.0)
    assert view.part("X", 1.5) is None
    view.add(status("nas-1", "A", 0, 90), now=1.0)
    part = view.part("A", 1.5)
    assert part is not None and part.headroom == 0.0
