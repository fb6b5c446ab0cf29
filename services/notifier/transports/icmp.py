"""ICMP Echo Requests from the notifier, each carrying one framed notice.

A raw ICMP socket needs root or CAP_NET_RAW. :class:`IcmpSender` opens it on
first use; if that is refused it raises :class:`IcmpUnavailable` then and
for every later send, without trying again (a process does not gain the
capability while it runs). The socket only sends: an ICMP filter keeps every
incoming ICMP message out of its receive queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from services.radius.icmp import (
    ICMP_FILTER,
    SOL_RAW,
    IcmpUnavailable,
    echo_request,
    icmp_filter,
    open_raw_icmp,
)

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
