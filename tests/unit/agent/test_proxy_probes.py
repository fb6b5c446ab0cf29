"""The proxy's probe loop, alone on loopback: an idle proxy does not wake at all; a zombie is
probed with Status-Server every ``check_interval_s`` until it answers; an upstream socket
opened while the loop slept is still closed once idle, and the loop sleeps again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from pyrad import packet

from schemas.events import Endpoint
from services.agent.proxy import RadiusProxy
from services.launch.farm import free_udp_port
from services.radius.packet import dictionary
from services.runtime.config import ProxyConfig, Secret
from services.runtime.lifecycle import WakeEvent
from tests.support.proxying import accept

IP = "127.0.0.1"
NAS = b"nas-secret"
UP = b"upstream-secret"
STATUS_SERVER = 12
CHECK_S = 0.05


class Upstream(asyncio.DatagramProtocol):
    """An upstream on loopback that notes what comes, and answers only while ``answering``."""

    def __init__(self) -> None:
        self.answering = False
        self.received: list[tuple[float, int]] = []  # (when, code)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((time.monotonic(), data[0]))
        if self.answering and self.transport is not None:
            self.transport.sendto(accept(data, UP), addr)

    def probes(self, since: float = 0.0) -> list[float]:
        return [at for at, code in self.received if code == STATUS_SERVER and at >= since]


def access_request(ident: int) -> bytes:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=ident)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt("wonderland")
    pkt.add_message_authenticator()
    raw: bytes = pkt.RequestPacket()
    return raw


@asynccontextmanager
async def proxy_before(upstream: Upstream, **fields: Any) -> AsyncIterator[RadiusProxy]:
    """A proxy on loopback whose one upstream is ``upstream``, running until the block ends
    (and then stopped within a second)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: upstream, local_addr=(IP, 0))
    port = transport.get_extra_info("sockname")[1]
    settings = ProxyConfig(
        ip=IP,
        auth_port=free_udp_port(IP),
        nas_secret=Secret(file="unused"),
        response_window_s=0.1,
        check_interval_s=CHECK_S,
        check_timeout_s=CHECK_S,
        answers_to_alive=2,
        **fields,
    )
    proxy = RadiusProxy(
        client_id="nas-01",
        client_ip=IP,
        secret=UP,
        nas_secret=NAS,
        settings=settings,
        upstreams=[Endpoint(server="A", ip=IP, auth_port=port)],
    )
    stopping = WakeEvent()
    try:
        await proxy.start()
        task = asyncio.create_task(proxy.run(stopping))
        try:
            yield proxy
        finally:
            stopping.set()
            await asyncio.wait_for(task, 1.0)
    finally:
        await proxy.close()
        transport.close()


def count_wakes(proxy: RadiusProxy) -> list[float]:
    """When the probe loop went round, from now on (it asks the pool what is due each time)."""
    wakes: list[float] = []
    probes_due: Callable[[float], list[Endpoint]] = proxy.pool.probes_due

    def counted(now: float) -> list[Endpoint]:
        wakes.append(now)
        return probes_due(now)

    proxy.pool.probes_due = counted  # type: ignore[method-assign]
    return wakes


async def send_from_nas(proxy: RadiusProxy, raw: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(IP, proxy.settings.auth_port)
    )
    transport.sendto(raw)
    transport.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (the condition is the proxy's own state)
            await asyncio.sleep(0.005)


async def test_an_idle_proxy_does_not_wake() -> None:
    async with proxy_before(Upstream()) as proxy:
        await asyncio.sleep(0.05)
        wakes = count_wakes(proxy)
        await asyncio.sleep(10 * CHECK_S)
        # it used to go round every check_interval_s, ten times here
        assert wakes == []


async def test_a_zombie_is_probed_every_check_interval_until_it_answers() -> None:
    upstream = Upstream()
    async with proxy_before(upstream) as proxy:
        await send_from_nas(proxy, access_request(1))
        await until(lambda: proxy.pool.state("A") != "alive")
        began = time.monotonic()
        await until(lambda: len(upstream.probes(began)) >= 6)
        probes = upstream.probes(began)
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        # one probe per check interval: never two at once, none skipped
        assert min(gaps) >= 0.8 * CHECK_S
        assert max(gaps) < 10 * CHECK_S
        assert proxy.pool.state("A") == "dead"
        upstream.answering = True
        await until(lambda: proxy.pool.state("A") == "alive")
        # alive again: no more probes
        settled = time.monotonic() + CHECK_S
        await asyncio.sleep(6 * CHECK_S)
        assert upstream.probes(settled) == []


async def test_a_socket_opened_while_the_loop_slept_is_closed_once_idle() -> None:
    upstream = Upstream()
    upstream.answering = True
    async with proxy_before(upstream, socket_idle_s=0.2) as proxy:
        await asyncio.sleep(0.05)
        await send_from_nas(proxy, access_request(1))
        await until(lambda: proxy.counters.answered == 1)
        assert proxy.upstream_sockets() == 1
        # the loop, asleep with no timer when the socket was opened, sweeps it once idle
        await until(lambda: proxy.upstream_sockets() == 0, timeout_s=5.0)
        assert proxy.counters.sockets_closed == 1
        await asyncio.sleep(2 * CHECK_S)
        wakes = count_wakes(proxy)
        await asyncio.sleep(10 * CHECK_S)
        assert wakes == []
        assert upstream.probes() == []


async def test_warnings_held_back_while_the_loop_slept_are_counted_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="services.agent.proxy")
    async with proxy_before(Upstream()) as proxy:
        proxy.log.interval_s = 0.2
        await asyncio.sleep(0.05)
        for _ in range(3):
            await send_from_nas(proxy, b"\x01\x02")
        await until(lambda: proxy.counters.dropped["malformed"] == 3)
        # the first is logged, the others counted in one line once the window is over
        await until(lambda: "... and 2 more like it" in caplog.text, timeout_s=5.0)
        assert caplog.text.count("malformed") == 2
        # and then the loop sleeps again
        await asyncio.sleep(2 * CHECK_S)
        wakes = count_wakes(proxy)
        await asyncio.sleep(10 * CHECK_S)
        assert wakes == []
