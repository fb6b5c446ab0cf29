"""bench/nas.py: its summary over plain records, and its matching of replies against a scripted
server on local UDP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pyrad import packet

from bench.nas import Nas, Request, Target, summarize
from services.radius.packet import ACCESS_ACCEPT, ACCESS_REJECT, dictionary
from tests.support.freeradius import IP

SECRET = b"nas-test-secret"


def record(
    index: int,
    sent_at: float,
    outcome: str = "accepted",
    latency_s: float | None = 0.01,
    *,
    transmissions: int = 1,
    lag_s: float = 0.0,
) -> Request:
    answered = None if outcome == "lost" or latency_s is None else sent_at + latency_s
    return Request(
        index=index,
        target=(IP, 1812),
        user="alice",
        due_at=sent_at - lag_s,
        sent_at=sent_at,
        outcome=outcome,  # type: ignore[arg-type]
        answered_at=answered,
        code=None,
        transmissions=transmissions,
        late=answered is not None and transmissions > 1,
    )


def test_summary_counts_outcomes_late_answers_and_retransmissions() -> None:
    records = [
        record(0, 10.00, latency_s=0.01),
        record(1, 10.01, latency_s=0.03),
        record(2, 10.02, latency_s=0.02),
        record(3, 10.03, latency_s=3.5, transmissions=2),
        record(4, 10.04, "rejected", latency_s=2.0),
        record(5, 10.05, "lost", transmissions=3),
    ]
    summary = summarize(records)
    assert (summary.sent, summary.accepted, summary.rejected, summary.lost) == (6, 4, 1, 1)
    assert summary.answered_late == 1
    assert summary.retransmissions == 1 + 2
    # nearest rank over the five answered: 0.01 0.02 0.03 2.0 3.5
    assert summary.latency_s == pytest.approx({"p50": 0.03, "p90": 3.5, "p99": 3.5, "max": 3.5})
    assert summary.span_s == pytest.approx(0.05)
    assert summary.rate == pytest.approx(100.0)
    assert summary.as_dict()["lost"] == 1


def test_summary_of_send_lag_and_of_nothing() -> None:
    records = [record(i, float(i), lag_s=lag) for i, lag in enumerate([0.0, 0.002, 0.5, 0.001])]
    lag = summarize(records).send_lag_s
    assert lag == pytest.approx({"p50": 0.001, "p90": 0.5, "p99": 0.5, "max": 0.5})
    # a request sent ahead of its schedule counts as no lag, not a negative one
    assert summarize([record(0, 1.0, lag_s=-0.2)]).send_lag_s["max"] == 0.0

    empty = summarize([])
    assert (empty.sent, empty.lost, empty.answered_late, empty.rate) == (0, 0, 0, 0.0)
    assert empty.latency_s == {} and empty.send_lag_s == {}
    assert record(0, 1.0, "lost").latency_s is None


@dataclass
class ScriptedServer(asyncio.DatagramProtocol):
    """A RADIUS server in this process that answers each copy of a request as ``answer``
    says: ``answer(number_of_the_request, copy) -> delay in s, or None for no answer``."""

    answer: Callable[[int, int], float | None]
    secret: bytes = SECRET
    copies: dict[tuple[tuple[str, int], int, bytes], int] = field(default_factory=dict)
    order: dict[tuple[tuple[str, int], int, bytes], int] = field(default_factory=dict)
    transport: asyncio.DatagramTransport | None = None
    bad_replies: bool = False
    held: list[tuple[bytes, tuple[str, int]]] | None = None
    """While a list, requests wait in it for ``release()``."""

    def release(self) -> None:
        held, self.held = self.held or [], None
        for data, addr in held:
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.held is not None:
            self.held.append((data, addr))
            return
        request = packet.AuthPacket(packet=data, secret=self.secret, dict=dictionary())
        key = (addr, request.id, request.authenticator)
        self.order.setdefault(key, len(self.order))
        copy = self.copies.get(key, 0) + 1
        self.copies[key] = copy
        delay = self.answer(self.order[key], copy)
        if delay is None:
            return
        reply = request.CreateReply()
        reply.code = ACCESS_REJECT if request["User-Name"][0] == "mallory" else ACCESS_ACCEPT
        if self.bad_replies:
            reply.secret = b"not the secret"
        raw = reply.ReplyPacket()
        asyncio.get_running_loop().call_later(delay, self._send, raw, addr)

    def _send(self, raw: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(raw, addr)


async def scripted(answer: Callable[[int, int], float | None]) -> tuple[ScriptedServer, Target]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: ScriptedServer(answer), local_addr=(IP, 0)
    )
    server.transport = transport
    port = transport.get_extra_info("sockname")[1]
    return server, Target(IP, port, SECRET)


async def test_answers_to_the_first_copy_after_the_timeout_and_to_a_retry_are_late() -> None:
    timeout = 0.2

    def answer(number: int, copy: int) -> float | None:
        if number == 0:
            return 0.0 if copy == 1 else None  # on time
        if number == 1:
            return 0.3 if copy == 1 else None  # the first copy, answered after the timeout
        if number == 2:
            return 0.0 if copy == 2 else None  # only the retransmission
        return None  # never

    server, target = await scripted(answer)
    try:
        async with Nas(timeout_s=timeout, retries=2) as nas:
            records = await nas.run(target, rate=50, count=4)
    finally:
        assert server.transport is not None
        server.transport.close()
    on_time, first_late, retried, lost = records
    assert (on_time.outcome, on_time.late, on_time.transmissions) == ("accepted", False, 1)
    # a reply to the first copy that comes after the retransmission is matched all the same
    assert (first_late.outcome, first_late.late, first_late.transmissions) == ("accepted", True, 2)
    assert first_late.latency_s == pytest.approx(0.3, abs=0.08)
    assert (retried.outcome, retried.late, retried.transmissions) == ("accepted", True, 2)
    assert retried.latency_s == pytest.approx(timeout, abs=0.08)
    # retransmitted with the same id and authenticator: the server saw one request, 3 copies
    assert (lost.outcome, lost.transmissions, lost.answered_at) == ("lost", 3, None)
    assert len(server.copies) == 4 and max(server.copies.values()) == 3
    assert nas.stray_replies == 0
    assert summarize(records).answered_late == 2


async def test_duplicate_and_forged_replies_are_stray() -> None:
    # the first copy is answered after the retransmission, the retransmission at once:
    # the answer to the second copy settles the request, the one to the first is then stray
    server, target = await scripted(lambda number, copy: 0.15 if copy == 1 else 0.0)
    try:
        async with Nas(timeout_s=0.1, retries=1, users=[("alice", "x"), ("mallory", "y")]) as nas:
            records = await nas.run(target, rate=100, count=4)
            await asyncio.sleep(0.2)
            assert [r.outcome for r in records] == ["accepted", "rejected"] * 2
            assert all(r.late and r.transmissions == 2 for r in records)
            assert nas.stray_replies == 4

            # replies under another secret fail the Response Authenticator: never answers
            server.bad_replies = True
            forged = await nas.run(target, rate=100, count=2)
            await asyncio.sleep(0.2)
    finally:
        assert server.transport is not None
        server.transport.close()
    assert [(r.outcome, r.transmissions) for r in forged] == [("lost", 2), ("lost", 2)]
    assert nas.stray_replies == 4 + 4


async def test_more_than_256_requests_in_flight_use_another_socket() -> None:
    held = 300
    server, target = await scripted(lambda number, copy: 0.0 if copy == 1 else None)
    server.held = []
    try:
        async with Nas(timeout_s=3.0, retries=0) as nas:
            run = asyncio.create_task(nas.run(target, rate=2000, count=held))
            async with asyncio.timeout(5):
                while len(server.held) < held:  # noqa: ASYNC110 (waits on the server's receipts)
                    await asyncio.sleep(0.01)
            assert nas.in_flight == held and len(nas.sockets) == 2
            server.release()
            records = await asyncio.wait_for(run, 5)
    finally:
        assert server.transport is not None
        server.transport.close()
    assert all(r.outcome == "accepted" and not r.late for r in records)
    assert nas.stray_replies == 0
    # every request had its own (socket, id) while in flight: the server saw 300 requests
    assert len(server.copies) == held and set(server.copies.values()) == {1}
