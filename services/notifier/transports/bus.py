"""Notices over the bus: each on ``notice.<client>``, signed with the bus key.

The agent answers with an Ack on the bus. A notice is published through
:meth:`Bus.publish` every time, the first and each retry: the stored notice is
decoded and published again, which in the bus's codec gives the very bytes
that were stored, and its client authenticator (``Aaa-Auth``, with
``Aaa-Server``) is computed over the bytes that go out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from schemas import codec
from services.notifier.deliveries import Pending
from services.notifier.transports.protocol import Deliveries
from services.runtime.bus import Bus
from services.runtime.config import ClientConfig

Authenticate = Callable[[bytes], Mapping[str, str]]
Authenticator = Callable[[ClientConfig, str], Authenticate | None]
"""``authenticator(client, server_id)``: what adds a notice's client authenticator
headers over its payload, or None if ``server_id`` is not configured."""


class BusTransport:
    """Notices published on the bus; settled by the agent's Ack."""

    name = "nats"

    def __init__(self, bus: Bus, deliveries: Deliveries, authenticator: Authenticator) -> None:
        self.bus = bus
        self.deliveries = deliveries
        self.authenticator = authenticator

    async def open(self) -> None:
        return None

    async def transmit(self, pending: Pending, client: ClientConfig) -> None:
        authenticate = self.authenticator(client, pending.server)
        if authenticate is None:
            await self.deliveries.give_up(
                pending.notice_id, f"server {pending.server!r} is not configured"
            )
            return
        try:
            notice = codec.decode(pending.payload, pending.headers.get(codec.CONTENT_TYPE))
        except codec.DecodeError as exc:
            await self.deliveries.give_up(pending.notice_id, f"stored notice is undecodable: {exc}")
            return
        await self.bus.publish(pending.subject, notice, authenticate=authenticate)

    def settled(self, notice_id: str) -> None:
        return None

    async def run(self) -> None:
        return None

    def close(self) -> None:
        return None
