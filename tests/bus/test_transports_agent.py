"""Notices reach the agent by each client's own transport: RADIUS CoA and ICMP Echo.

The notifier and the agent run for real; the agent listens for CoA on its
client's address and for ICMP Echo on another's, verifies each notice under
the client's secret, switches and acks over the bus. A CoA-Request under a
wrong secret gets no answer (RFC 5176 section 3.5) and changes nothing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from schemas.events import Ack, ClientStatus, Delivery, FailoverPlan, Move
from services.agent import service as agent
from services.notifier import service as notifier
from services.radius import packet as radius
from services.radius.notice import NoticeMessage, coa_request
from services.runtime.config import ClientConfig
from tests.conftest import FarmFactory
from tests.support.helpers import next_matching, operator_bus, running
from tests.support.notifying import transport_farm


@pytest.mark.raw_sockets
async def test_coa_and_icmp_notices_move_their_clients(farm: FarmFactory, tmp_path: Path) -> None:
    config = transport_farm(
        farm, tmp_path, {"nas-01": "radius-coa", "nas-04": "icmp-echo"}, clients=6
    )
    moving = ["nas-01", "nas-04"]  # both homed on A
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        acks: asyncio.Queue[Ack] = asyncio.Queue()
        deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        statuses: asyncio.Queue[ClientStatus] = asyncio.Queue()

        async def on_ack(event: Ack) -> None:
            await acks.put(event)

        async def on_delivery(event: Delivery) -> None:
            await deliveries.put(event)

        async def on_status(event: ClientStatus) -> None:
            await statuses.put(event)

        await bus.subscribe(bus.subjects.ack("*"), on_ack, types=(Ack,), accept_clients=True)
        await bus.subscribe(bus.subjects.delivery("*"), on_delivery, types=(Delivery,))
        await bus.subscribe(
            bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
        )
        async with running(agent.run, config, only=moving), running(notifier.run, config):
            seen: set[str] = set()
            await next_matching(
                statuses, lambda s: seen.add(s.client) or seen >= set(moving), timeout_s=10
            )
            plan = FailoverPlan(
                incident_id="inc-1",
                server="A",
                moves=[Move(client=c, alternates=["B"]) for c in moving],
            )
            await bus.publish(bus.subjects.plan("A"), plan)
            got: dict[str, Ack] = {}
            while set(got) != set(moving):
                ack = await asyncio.wait_for(acks.get(), 10)
                got[ack.client] = ack
            assert all(a.accepted and a.now_on == "B" for a in got.values())
            acked: set[str] = set()
            await next_matching(
                deliveries,
                lambda d: d.outcome == "acked" and (acked.add(d.client) or acked == set(moving)),
            )

            # a CoA-Request under a wrong secret is discarded silently
            nas1 = config.client("nas-01")
            message = NoticeMessage(
                server="A", payload=b'{"type":"notice.failover.v2"}', authenticator="00" * 32
            )
            request = coa_request(message, b"not the secret", radius.dictionary(), now=time.time())
            request.id = 7
            reply = await asyncio.to_thread(_exchange, request.RequestPacket(), nas1)
            assert reply is None
            still = await next_matching(statuses, lambda s: s.client == "nas-01", timeout_s=5)
            assert still.current == "B"


def _exchange(datagram: bytes, client: ClientConfig) -> bytes | None:
    """The answer to ``datagram``, or None when none comes within 2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(datagram, (client.ip, client.coa_port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None
