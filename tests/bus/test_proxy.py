"""The agent as a RADIUS proxy to the reference server, on a real nats-server: retransmissions,
and simulated load beside the proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pyrad import packet

from services.radius.packet import dictionary
from tests.conftest import FarmFactory
from tests.support.datagrams import Collect
from tests.support.helpers import next_matching
from tests.support.proxying import (
    NAS,
    PROXY_IP,
    auth_target,
    nas_access_request,
    proxying,
    reference,
    requests_seen,
    with_proxy,
)


async def test_retransmissions_are_not_forwarded_twice(farm: FarmFactory, tmp_path: Path) -> None:
    config, _ = farm(clients=1, client_rate=0, service_time_ms=300.0)
    config = with_proxy(config, tmp_path)
    port = int(auth_target(config).split(":")[1])
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    async with reference(config, "A"), proxying(config):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Collect(replies), remote_addr=(PROXY_IP, port)
        )
        try:
            request = nas_access_request()
            raw = request.RequestPacket()
            for _ in range(3):  # a NAS retransmitting while the server works
                transport.sendto(raw)
            first = await asyncio.wait_for(replies.get(), 5)
            assert request.VerifyReply(request.CreateReply(packet=first), first, enforce_ma=True)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(replies.get(), 0.5)
            assert await requests_seen(config, "A") == 1
            # once answered, a retransmission gets the same answer, not a new request
            transport.sendto(raw)
            assert await asyncio.wait_for(replies.get(), 5) == first
            # Status-Server is the proxy's own to answer
            probe = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary())
            probe.add_message_authenticator()
            transport.sendto(probe.RequestPacket())
            answer = await asyncio.wait_for(replies.get(), 5)
            assert probe.VerifyReply(probe.CreateReply(packet=answer), answer)
            assert await requests_seen(config, "A") == 1
        finally:
            transport.close()


async def test_simulated_load_runs_beside_the_proxy_and_goes_where_it_does(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path, rate=20.0)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        on_a = await next_matching(watcher.statuses, lambda s: s.answered >= 5)
        assert (on_a.current, on_a.lost) == ("A", 0)
        assert await requests_seen(config, "B") == 0
        await watcher.failover("A", to="B")
        on_b = await watcher.on("B")
        await next_matching(watcher.statuses, lambda s: s.answered >= on_b.answered + 5)
        assert await requests_seen(config, "B") >= 5
