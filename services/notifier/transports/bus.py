"""Notices over the bus: each on ``notice.<client>``, signed with the bus key.

The agent answers with an Ack on the bus. A notice goes out as the notifier
stored it, the first time and at each retry: the very bytes, signed, with
their client authenticator (``Aaa-Auth``, with ``Aaa-Server``), through
:meth:`Bus.publish_encoded`, so it is neither encoded nor signed twice.
"""

from __future__ import annotations

from services.notifier.deliveries import Pending
from services.runtime.bus import Bus
from services.runtime.config import ClientConfig


class BusTransport:
    """Notices published on the bus; settled by the agent's Ack."""

    name = "nats"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def open(self) -> None:
        return None

    async def transmit(self, pending: Pending, client: ClientConfig) -> None:
        await self.bus.publish_encoded(pending.subject, pending.payload, pending.headers)

    def settled(self, notice_id: str) -> None:
        return None

    async def run(self) -> None:
        return None

    def close(self) -> None:
        return None
