"""What every notifier transport does, and what it tells the notifier back.

A :class:`Transport` carries tracked notices (:class:`Pending`) to the
clients whose ``transport`` it serves; the notifier holds one of each and
picks a client's by its name. What a transport learns of a notice (it is
held for a CoA exchange, retransmitted, answered, failed, or cannot be sent
at all) goes back through :class:`Deliveries`, which the notifier
implements, so the delivery tracker and the ``delivery.<client>`` reports
stay in one place.
"""

from __future__ import annotations

from typing import Protocol

from schemas import codec
from schemas.events import Delivery
from schemas.signing import AUTH_HEADER
from services.notifier.deliveries import Pending
from services.radius.notice import NoticeMessage
from services.runtime.config import ClientConfig


class Deliveries(Protocol):
    """The notifier's side of a transport: the notices in flight and their reports."""

    def pending(self, notice_id: str) -> Pending | None:
        """The notice in flight under ``notice_id``, if any."""
        ...

    async def hold(self, notice_id: str, hold_s: float) -> None:
        """Keep the ack timeout off a notice while an exchange of ``hold_s`` carries it."""
        ...

    async def retransmitted(self, notice_id: str) -> None:
        """Report a notice sent again within its exchange."""
        ...

    async def acked(self, notice_id: str, client: str, now: float) -> Delivery | None:
        """Settle a notice its client answered; the delivery to report, or None if not in flight."""
        ...

    async def report(self, delivery: Delivery) -> None:
        """Publish a delivery outcome."""
        ...

    async def exchange_failed(self, notice_id: str, now: float) -> None:
        """Schedule a notice whose exchange failed for another try, or report it failed."""
        ...

    async def give_up(self, notice_id: str, reason: str) -> None:
        """Fail a notice that cannot be sent at all, and report it."""
        ...


class Transport(Protocol):
    """One way of carrying notices: the bus, RADIUS CoA or ICMP Echo."""

    name: str
    """The client ``transport`` it serves (``nats``, ``radius-coa``, ``icmp-echo``)."""

    async def open(self) -> None:
        """Open what it sends with; what is missing is said once, here."""
        ...

    async def transmit(self, pending: Pending, client: ClientConfig) -> None:
        """Send a tracked notice (again) to ``client``."""
        ...

    def settled(self, notice_id: str) -> None:
        """The notice was acked on the bus: stop carrying it."""
        ...

    async def run(self) -> None:
        """What it does in the background while the service runs (nothing, for most)."""
        ...

    def close(self) -> None:
        """Close what it sends with."""
        ...


def message_of(pending: Pending) -> NoticeMessage:
    """The notice of a delivery in flight, as the CoA and ICMP transports carry it."""
    return NoticeMessage(
        server=pending.server,
        payload=pending.payload,
        authenticator=pending.headers.get(AUTH_HEADER, ""),
        content_type=pending.headers.get(codec.CONTENT_TYPE, codec.JSON_TYPE),
    )
