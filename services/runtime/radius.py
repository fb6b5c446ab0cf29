"""RADIUS over asyncio: packets from pyrad, one UDP socket per client.

:class:`RadiusClient` sends requests to one server and matches replies by
packet id, with per-request timeout and retransmissions; it is used by the
agent (Access-Requests), the collector (Status-Server) and tests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

from pyrad import packet
from pyrad.dictionary import Dictionary

logger = logging.getLogger(__name__)

DICTIONARY_PATH = Path(__file__).with_name("dictionary")

ACCESS_REQUEST = packet.AccessRequest
ACCESS_ACCEPT = packet.AccessAccept
ACCESS_REJECT = packet.AccessReject
STATUS_SERVER = packet.StatusServer

# FreeRADIUS statistics attribute -> MetricsSample field.
STATS_FIELDS = {
    "FreeRADIUS-Stats-Threads-Active": "threads_active",
    "FreeRADIUS-Stats-Threads-Total": "threads_total",
    "FreeRADIUS-Stats-Threads-Max": "threads_max",
    "FreeRADIUS-Queue-Len-Auth": "queue_len",
}


@functools.cache
def dictionary() -> Dictionary:
    """The project's RADIUS dictionary, loaded once."""
    return Dictionary(str(DICTIONARY_PATH))


def verified_reply(request: packet.Packet, data: bytes, addr: Any = None) -> packet.Packet | None:
    """``data`` decoded as the reply to ``request``, or None if it does not verify
    (Response Authenticator, Message-Authenticator) or does not decode."""
    try:
        reply = request.CreateReply(packet=data)
        if request.VerifyReply(reply, data):
            return reply
    except Exception as exc:
        logger.debug("undecodable reply from %s: %s", addr, exc)
    return None


class RadiusTimeout(Exception):
    """No valid reply came within the timeout and retransmissions."""


def access_request(secret: bytes, user: str, password: str, **attributes: Any) -> packet.AuthPacket:
    """An Access-Request with PAP password and Message-Authenticator."""
    pkt = packet.AuthPacket(code=ACCESS_REQUEST, secret=secret, dict=dictionary())
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    for name, value in attributes.items():
        pkt[name.replace("_", "-")] = value
    pkt.add_message_authenticator()
    return pkt


def status_request(secret: bytes, statistics: str = "All") -> packet.AuthPacket:
    """A Status-Server request asking for FreeRADIUS statistics."""
    pkt = packet.AuthPacket(code=STATUS_SERVER, secret=secret, dict=dictionary())
    pkt["FreeRADIUS-Statistics-Type"] = statistics
    pkt.add_message_authenticator()
    return pkt


def reply_values(reply: packet.Packet) -> dict[str, Any]:
    """The first decoded value of each attribute of a reply, keyed by attribute name.

    Attributes the dictionary does not name, or that do not decode, are left out.
    """
    values: dict[str, Any] = {}
    # pyrad's keys() names the attributes; iterating the packet gives raw codes
    for key in reply.keys():  # noqa: SIM118
        if not isinstance(key, str):
            continue
        try:
            decoded = reply[key]
        except Exception as exc:
            logger.debug("undecodable %s in a reply: %s", key, exc)
            continue
        if decoded:
            values[key] = decoded[0]
    return values


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: RadiusClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client._on_reply(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("radius socket error: %s", exc)


class RadiusClient:
    """Requests to one RADIUS server from one UDP socket, matched by id."""

    def __init__(self, server: tuple[str, int], secret: bytes) -> None:
        self.server = server
        self.secret = secret
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[int, tuple[packet.Packet, asyncio.Future[packet.Packet]]] = {}
        self._next_id = 0
        self.stray_replies = 0

    @classmethod
    async def open(
        cls, server: tuple[str, int], secret: bytes, *, bind_ip: str | None = None
    ) -> RadiusClient:
        """A client with its socket bound to ``bind_ip`` (any port) if given."""
        self = cls(server, secret)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self),
            local_addr=(bind_ip, 0) if bind_ip else None,
            remote_addr=server,
        )
        self._transport = transport
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for _, future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()

    def _allocate_id(self) -> int:
        for _ in range(256):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % 256
            if candidate not in self._pending:
                return candidate
        raise RuntimeError("256 requests in flight to one server")

    async def send(
        self, pkt: packet.Packet, *, timeout_s: float, retries: int = 0
    ) -> packet.Packet:
        """Send ``pkt`` and return its verified reply; raise RadiusTimeout."""
        if self._transport is None:
            raise RuntimeError("client is closed")
        pkt.id = self._allocate_id()
        raw = pkt.RequestPacket()
        future: asyncio.Future[packet.Packet] = asyncio.get_running_loop().create_future()
        self._pending[pkt.id] = (pkt, future)
        try:
            for _attempt in range(retries + 1):
                self._transport.sendto(raw)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), timeout_s)
                except TimeoutError:
                    continue
            raise RadiusTimeout(f"no reply from {self.server[0]}:{self.server[1]}")
        finally:
            self._pending.pop(pkt.id, None)
            if not future.done():
                future.cancel()

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 20:
            self.stray_replies += 1
            return
        entry = self._pending.get(data[1])
        if entry is None:
            self.stray_replies += 1
            return
        request, future = entry
        reply = verified_reply(request, data, addr)
        if reply is None:
            self.stray_replies += 1
            return
        if not future.done():
            future.set_result(reply)


async def query_status(
    server: tuple[str, int], secret: bytes, *, timeout_s: float
) -> dict[str, Any]:
    """Ask a server for its FreeRADIUS statistics; raise RadiusTimeout."""
    client = await RadiusClient.open(server, secret)
    try:
        reply = await client.send(status_request(secret), timeout_s=timeout_s)
    finally:
        client.close()
    return reply_values(reply)
