"""A request's first attempt, waited for with no task, alone on loopback: answered, left
unanswered and tried once more on the next upstream, moved off its server by a notice, and
waited for (then let go) when the proxy stops."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

from pyrad import packet

from schemas.events import Endpoint
from services.agent.proxy import RadiusProxy
from services.launch.farm import free_udp_port
from services.radius.packet import ACCESS_ACCEPT, dictionary
from services.runtime.config import ProxyConfig, Secret
from tests.support.proxying import accept

IP = "127.0.0.1"
NAS = b"nas-secret"
UP = b"upstream-secret"
WINDOW_S = 0.2


class Upstream(asyncio.DatagramProtocol):
    """An upstream on loopback that counts what comes, and answers only while ``answering``
    (or keeps what it did not answer, to answer it later with :meth:`answer_held`)."""

    def __init__(self, *, answering: bool) -> None:
        self.answering = answering
        self.received = 0
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self.answering and self.transport is not None:
            self.transport.sendto(accept(data, UP), addr)
        else:
            self.held.append((data, addr))

    def answer_held(self) -> None:
        assert self.transport is not None
        for data, addr in self.held:
            self.transport.sendto(accept(data, UP), addr)
        self.held.clear()


class Nas(asyncio.DatagramProtocol):
    """A NAS on loopback: the replies it gets, by id."""

    def __init__(self) -> None:
        self.replies: dict[int, bytes] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies[data[1]] = data


def access_request(ident: int) -> packet.AuthPacket:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=ident)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt("wonderland")
    pkt.add_message_authenticator()
    return pkt


def verified(pkt: packet.AuthPacket, raw: bytes) -> bool:
    reply = pkt.CreateReply(packet=raw)
    return bool(pkt.VerifyReply(reply, raw)) and reply.code == ACCESS_ACCEPT


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (the condition is the proxy's own state)
            await asyncio.sleep(0.005)


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def proxied(
    *upstreams: Upstream, listen_ip: str = IP
) -> AsyncIterator[tuple[RadiusProxy, Nas]]:
    """A started proxy before ``upstreams`` (A, B, ...), listening on ``listen_ip``, and a
    NAS that sends to it."""
    loop = asyncio.get_running_loop()
    transports = []
    for upstream in upstreams:
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(lambda u: u, upstream), local_addr=(IP, 0)
        )
        transports.append(transport)
    settings = ProxyConfig(
        ip=listen_ip,
        auth_port=free_udp_port(IP) if listen_ip == IP else free_port_v6(),
        nas_secret=Secret(file="unused"),
        response_window_s=WINDOW_S,
        check_interval_s=10.0,
        check_timeout_s=1.0,
    )
    proxy = RadiusProxy(
        client_id="nas-01",
        client_ip=IP,
        secret=UP,
        nas_secret=NAS,
        settings=settings,
        upstreams=[
            Endpoint(server=name, ip=IP, auth_port=u.port)
            for name, u in zip("ABC", upstreams, strict=False)
        ],
    )
    nas = Nas()
    nas_transport, _ = await loop.create_datagram_endpoint(
        lambda: nas, remote_addr=(listen_ip, settings.auth_port)
    )
    try:
        await proxy.start()
        yield proxy, nas
    finally:
        await proxy.close()
        nas_transport.close()
        for transport in transports:
            transport.close()


async def send(nas: Nas, pkts: list[packet.AuthPacket]) -> None:
    assert nas.transport is not None
    for pkt in pkts:
        nas.transport.sendto(pkt.RequestPacket())


async def test_requests_after_the_first_are_answered_through_the_open_socket() -> None:
    a = Upstream(answering=True)
    async with proxied(a) as (proxy, nas):
        first = [access_request(0)]
        await send(nas, first)  # opens the socket to A
        await until(lambda: 0 in nas.replies)
        rest = [access_request(i) for i in range(1, 40)]
        await send(nas, rest)
        await until(lambda: len(nas.replies) == 40)
        assert all(verified(p, nas.replies[p.id]) for p in first + rest)
        assert (proxy.counters.forwarded, proxy.counters.answered, proxy.in_flight) == (40, 40, 0)
        assert proxy.upstream_sockets() == 1 and a.received == 40


async def test_requests_left_unanswered_are_tried_once_more_on_the_next_upstream() -> None:
    a, b = Upstream(answering=True), Upstream(answering=True)
    async with proxied(a, b) as (proxy, nas):
        await send(nas, [access_request(0)])
        await until(lambda: 0 in nas.replies)
        a.answering = False
        pkts = [access_request(i) for i in range(1, 11)]
        started = time.monotonic()
        await send(nas, pkts)
        await until(lambda: len(nas.replies) == 11)
        assert time.monotonic() - started >= WINDOW_S * 0.9  # each waited out A's window
        assert all(verified(p, nas.replies[p.id]) for p in pkts)
        assert proxy.counters.failed_over == 10
        assert proxy.pool.state("A") == "zombie" and proxy.in_use().server == "B"
        assert (a.received, b.received) == (11, 10)
        a.answer_held()  # too late: each one is stray now
        await until(lambda: proxy.counters.dropped["upstream-stray"] == 10)
        assert proxy.counters.answered == 11 and proxy.in_flight == 0


async def test_a_move_off_the_server_sends_requests_in_flight_on_at_once() -> None:
    a, b = Upstream(answering=True), Upstream(answering=True)
    async with proxied(a, b) as (proxy, nas):
        await send(nas, [access_request(0)])
        await until(lambda: 0 in nas.replies)
        a.answering = False
        pkts = [access_request(i) for i in range(1, 6)]
        await send(nas, pkts)
        await until(lambda: a.received == 6)
        proxy.prefer(proxy.pool.upstream("B").endpoint)
        moved_at = time.monotonic()
        proxy.leave("A")
        await until(lambda: len(nas.replies) == 6)
        assert time.monotonic() - moved_at < WINDOW_S  # not after A's window
        assert all(verified(p, nas.replies[p.id]) for p in pkts)
        assert proxy.counters.moved_in_flight == 5 and proxy.counters.failed_over == 5
        assert proxy.pool.state("A") == "alive"  # left, not judged silent


async def test_stopping_waits_for_the_answers_in_flight_then_lets_the_rest_go() -> None:
    a = Upstream(answering=True)
    async with proxied(a) as (proxy, nas):
        await send(nas, [access_request(0)])
        await until(lambda: 0 in nas.replies)
        a.answering = False
        pkts = [access_request(i) for i in range(1, 4)]
        await send(nas, pkts)
        await until(lambda: a.received == 4)
        closing = asyncio.create_task(proxy.close())
        await asyncio.sleep(WINDOW_S / 4)
        assert not closing.done() and proxy.in_flight == 3
        answered_at = time.monotonic()
        a.answer_held()  # answered while the proxy stops: it stops once they are in
        await asyncio.wait_for(closing, 2 * WINDOW_S + 1)
        assert time.monotonic() - answered_at < WINDOW_S / 2
        assert proxy.in_flight == 0 and proxy.counters.answered == 4

    silent = Upstream(answering=True)
    async with proxied(silent) as (proxy, nas):
        await send(nas, [access_request(0)])
        await until(lambda: 0 in nas.replies)
        silent.answering = False
        await send(nas, [access_request(1)])
        await until(lambda: silent.received == 2)
        started = time.monotonic()
        await asyncio.wait_for(proxy.close(), 2 * WINDOW_S + 1)  # waited for, then let go
        assert time.monotonic() - started >= WINDOW_S * 0.9
        assert proxy.in_flight == 0 and 1 not in nas.replies
        assert proxy.counters.dropped["no-answer"] == 1  # no other upstream to try


async def test_a_nas_on_ipv6_is_answered_and_its_retransmission_answered_again() -> None:
    # the proxy's sockets hand on the loop's own source tuple: (host, port, flow, scope)
    a = Upstream(answering=True)
    async with proxied(a, listen_ip="::1") as (proxy, nas):
        pkts = [access_request(0), access_request(1)]
        await send(nas, pkts[:1])
        await until(lambda: 0 in nas.replies)
        await send(nas, pkts[1:])
        await until(lambda: 1 in nas.replies)
        first = nas.replies.pop(1)
        await send(nas, pkts[1:])  # a retransmission: the same reply, not forwarded again
        await until(lambda: 1 in nas.replies)
        assert nas.replies[1] == first and verified(pkts[1], first)
        assert (proxy.counters.forwarded, proxy.counters.resent, a.received) == (2, 1, 2)
