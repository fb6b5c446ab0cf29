"""A subscription's guards (services/runtime/middleware.py), alone: in order, each going on,
letting an event by, or dropping it with its reason."""

from __future__ import annotations

import pytest

from schemas.errors import Rejected
from schemas.events import Ack, MetricsSample
from services.runtime.middleware import Guard, admits, guard, known_client, known_server, taking


def _sample(server: str = "A", seq: int = 1) -> MetricsSample:
    return MetricsSample(server=server, seq=seq, status_ok=True)


def test_guards_run_in_order_and_the_first_that_stops_ends_it() -> None:
    seen: list[str] = []

    def mark(name: str, go_on: bool) -> Guard:
        def check(event: object) -> bool:
            seen.append(name)
            return go_on

        return check

    assert admits([mark("a", True), mark("b", True)], _sample())
    assert seen == ["a", "b"]
    seen.clear()
    assert not admits([mark("a", False), mark("b", True)], _sample())
    assert seen == ["a"]
    assert admits([], _sample())


def test_known_server_and_client_drop_the_others_with_their_reason() -> None:
    servers = [known_server({"A", "B"})]
    assert admits(servers, _sample("B"))
    with pytest.raises(Rejected) as info:
        admits(servers, _sample("Z"))
    assert info.value.reason == "unknown-server"
    assert info.value.detail == "MetricsSample of unknown server 'Z'"

    ack = Ack(notice_id="n", client="nas-02", server="A", accepted=True)
    with pytest.raises(Rejected) as info:
        admits([known_client({"nas-01"})], ack)
    assert (info.value.reason, info.value.detail) == (
        "unknown-client",
        "Ack of unknown client 'nas-02'",
    )


def test_a_guard_that_drops_stops_the_later_ones() -> None:
    later: list[object] = []
    odd = guard("odd", lambda e: e.seq % 2 == 0, lambda e: f"seq {e.seq}")
    with pytest.raises(Rejected, match="odd: seq 1"):
        admits([odd, lambda e: later.append(e) or True], _sample())
    assert later == []
    assert admits([odd], _sample(seq=2))


def test_taking_lets_other_events_by_without_a_drop() -> None:
    wanted = [taking(lambda e: e.seq > 1)]
    assert not admits(wanted, _sample(seq=1))
    assert admits(wanted, _sample(seq=2))
