"""One UDP socket for RADIUS: datagrams handed to a callback, answers sent back.

Every RADIUS socket of the project is a :class:`UdpEndpoint`: the reference
server's, the agent's proxy listeners and CoA listener, the RADIUS client's
and the notifier's CoA client's. It is asyncio's datagram protocol once, so
no service writes its own: each datagram goes to ``on_datagram(data,
(host, port))`` and socket errors are logged at debug level under the
endpoint's name (a UDP peer that is not listening is no error of ours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

logger = logging.getLogger(__name__)

Address = tuple[str, int]
OnDatagram = Callable[[bytes, Address], None]


class UdpEndpoint(asyncio.DatagramProtocol):
    """A UDP socket that hands each datagram to ``on_datagram``.

    Make it, then ``await endpoint.open(local_addr=..., remote_addr=...)``:
    the callback may use the endpoint (to answer) from the first datagram on.

    Each datagram's source is ``(host, port)`` as ``str`` and ``int``; with
    ``addresses_as_given``, it is the loop's own tuple handed straight on, one
    call fewer a datagram for the agent's proxy, whose every datagram counts:
    ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6,
    the host a ``str`` either way (it is used as given: sent to, and kept as
    a key).
    """

    def __init__(
        self, on_datagram: OnDatagram, *, name: str, addresses_as_given: bool = False
    ) -> None:
        self.on_datagram = on_datagram
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        if addresses_as_given:
            self.datagram_received = on_datagram  # type: ignore[method-assign,assignment]

    async def open(
        self, *, local_addr: Address | None = None, remote_addr: Address | None = None
    ) -> UdpEndpoint:
        """Bind (and connect, with ``remote_addr``) the socket; OSError if it cannot."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: self, local_addr=local_addr, remote_addr=remote_addr
        )
        return self

    @property
    def address(self) -> Address | None:
        """The address the socket is bound to, or None when it is not open."""
        if self.transport is None:
            return None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def sendto(self, data: bytes, addr: Address | None = None) -> None:
        """Send ``data`` (to ``addr``, or to the connected peer); nothing once closed."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # --- asyncio.DatagramProtocol ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        logger.debug("%s socket error: %s", self.name, exc)
