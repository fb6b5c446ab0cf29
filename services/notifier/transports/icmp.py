"""ICMP Echo Requests from the notifier, each carrying one framed notice.

A raw ICMP socket needs root or CAP_NET_RAW. :class:`IcmpSender` opens it on
first use; if that is refused it raises :class:`IcmpUnavailable` then and
for every later send, without trying again (a process does not gain the
capability while it runs). The socket only sends: an ICMP filter keeps every
incoming ICMP message out of its receive queue.

:class:`IcmpTransport` is the notifier's ``icmp-echo`` transport on it: the
agent answers with an Ack on the bus. Without the capability that is said
once, and each ICMP notice then fails at once (dropped as
``icmp-unavailable``); a message the kernel refuses is dropped as
``icmp-send-error`` and sent again at the ack timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from services.notifier.deliveries import Pending
from services.notifier.transports.protocol import Deliveries, message_of
from services.radius.icmp import (
    ICMP_FILTER,
    SOL_RAW,
    IcmpUnavailable,
    echo_request,
    icmp_filter,
    open_raw_icmp,
)
from services.radius.notice import WireError, frame
from services.runtime.config import ClientConfig

logger = logging.getLogger(__name__)


class IcmpSender:
    """Sends Echo Requests with given data to any address, from one raw socket."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self.unavailable: str | None = None
        self.ident = os.getpid() & 0xFFFF
        self._seq = 0
        self.sent = 0

    def open(self) -> None:
        """Open the raw socket now; IcmpUnavailable (said once, kept) if it is not allowed."""
        if self._sock is not None:
            return
        if self.unavailable is not None:
            raise IcmpUnavailable(self.unavailable)
        try:
            sock = open_raw_icmp()
        except OSError as exc:
            self.unavailable = (
                f"cannot open a raw ICMP socket ({exc.strerror or exc}): the icmp-echo "
                "transport needs root or CAP_NET_RAW"
            )
            raise IcmpUnavailable(self.unavailable) from None
        try:
            sock.setsockopt(SOL_RAW, ICMP_FILTER, icmp_filter())
        except OSError as exc:
            logger.debug("no ICMP_FILTER on the sending socket: %s", exc)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def send(self, ip: str, data: bytes) -> None:
        """Send one Echo Request carrying ``data`` to ``ip``.

        Raises IcmpUnavailable without the capability, OSError if the kernel
        refuses this one message.
        """
        self.open()
        assert self._sock is not None
        self._seq = (self._seq + 1) & 0xFFFF
        message = echo_request(self.ident, self._seq, data)
        await asyncio.get_running_loop().sock_sendto(self._sock, message, (ip, 0))
        self.sent += 1


class IcmpTransport:
    """Notices as ICMP Echo Requests to the client's ``ip``; settled by the agent's Ack."""

    name = "icmp-echo"

    def __init__(self, deliveries: Deliveries, drop: Callable[[str], None]) -> None:
        self.deliveries = deliveries
        self.drop = drop
        self.sender = IcmpSender()
        self._said_unavailable = False

    async def open(self) -> None:
        """Open the raw socket now, so that a missing capability is said at start."""
        try:
            self.sender.open()
        except IcmpUnavailable as exc:
            self._unavailable(exc)

    def _unavailable(self, exc: IcmpUnavailable) -> None:
        if not self._said_unavailable:
            logger.error("%s", exc)
            self._said_unavailable = True
        self.drop("icmp-unavailable")

    async def transmit(self, pending: Pending, client: ClientConfig) -> None:
        try:
            data = frame(message_of(pending))
            await self.sender.send(client.ip, data)
        except IcmpUnavailable as exc:
            self._unavailable(exc)
            await self.deliveries.give_up(pending.notice_id, str(exc))
        except WireError as exc:
            await self.deliveries.give_up(pending.notice_id, f"cannot frame it for ICMP: {exc}")
        except OSError as exc:
            # the ack timeout sends it again
            self.drop("icmp-send-error")
            logger.warning("ICMP Echo to %s for %s: %s", client.ip, pending.notice_id, exc)

    def settled(self, notice_id: str) -> None:
        return None

    async def run(self) -> None:
        return None

    def close(self) -> None:
        self.sender.close()
