"""Subscription middleware (pure): chains run in order, guards drop by raising Rejected,
``only`` lets by without a drop, ``timed`` observes what was handled."""

from __future__ import annotations

import pytest

from schemas.errors import Rejected
from schemas.events import Ack, MetricsSample
from services.runtime.middleware import (
    Next,
    chain,
    guard,
    known_client,
    known_server,
    taking,
    timed,
)


def _sample(server: str = "A") -> MetricsSample:
    return MetricsSample(server=server, seq=1, status_ok=True)


async def test_middleware_runs_first_outermost_then_the_handler() -> None:
    seen: list[str] = []

    def mark(name: str):  # type: ignore[no-untyped-def]
        async def middleware(event: object, call_next: Next) -> None:
            seen.append(f"{name} in")
            await call_next(event)
            seen.append(f"{name} out")

        return middleware

    async def handler(event: object) -> None:
        seen.append("handler")

    await chain([mark("a"), mark("b")], handler)(_sample())
    assert seen == ["a in", "b in", "handler", "b out", "a out"]


async def test_known_server_and_client_drop_the_others_with_their_reason() -> None:
    handled: list[object] = []

    async def handler(event: object) -> None:
        handled.append(event)

    servers = chain([known_server({"A", "B"})], handler)
    await servers(_sample("B"))
    with pytest.raises(Rejected) as info:
        await servers(_sample("Z"))
    assert info.value.reason == "unknown-server"
    assert info.value.detail == "MetricsSample of unknown server 'Z'"

    clients = chain([known_client({"nas-01"})], handler)
    ack = Ack(notice_id="n", client="nas-02", server="A", accepted=True)
    with pytest.raises(Rejected) as info:
        await clients(ack)
    assert (info.value.reason, info.value.detail) == (
        "unknown-client",
        "Ack of unknown client 'nas-02'",
    )
    assert [getattr(e, "server", None) for e in handled] == ["B"]


async def test_a_guard_stops_the_chain_before_later_middleware() -> None:
    calls: list[str] = []

    async def handler(event: object) -> None:
        calls.append("handler")

    odd = guard("odd", lambda e: e.seq % 2 == 0, lambda e: f"seq {e.seq}")
    call = chain([odd, timed(lambda kind, s: calls.append(kind))], handler)
    with pytest.raises(Rejected, match="odd: seq 1"):
        await call(_sample())
    assert calls == []


async def test_taking_lets_other_events_by_unhandled() -> None:
    handled: list[int] = []

    async def handler(event: MetricsSample) -> None:
        handled.append(event.seq)

    call = chain([taking(lambda e: e.seq > 1)], handler)
    await call(_sample())
    await call(MetricsSample(server="A", seq=2, status_ok=True))
    assert handled == [2]


async def test_timed_observes_handled_events_only() -> None:
    observed: list[tuple[str, float]] = []

    async def handler(event: MetricsSample) -> None:
        if event.server == "X":
            raise RuntimeError("boom")

    call = chain([timed(lambda kind, s: observed.append((kind, s)))], handler)
    await call(_sample())
    with pytest.raises(RuntimeError):
        await call(_sample("X"))
    assert [kind for kind, _ in observed] == ["MetricsSample"]
    assert observed[0][1] >= 0
