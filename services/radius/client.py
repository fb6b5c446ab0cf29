"""A RADIUS client over asyncio: requests to one server, matched by packet id.

:class:`RadiusClient` sends requests (built with :mod:`services.radius.packet`)
to one server from one UDP socket and matches replies by packet id, with
per-request timeout and retransmissions; it is used by the agent
(Access-Requests), the collector (Status-Server) and tests.
:func:`query_status` asks a server for its FreeRADIUS statistics once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyrad import packet

from schemas.errors import AaaFailoverError
from services.radius.endpoint import UdpEndpoint
from services.radius.packet import reply_values, status_request, verified_reply


class RadiusTimeout(AaaFailoverError):
    """No valid reply came within the timeout and retransmissions."""


class RadiusClient:
    """Requests to one RADIUS server from one UDP socket, matched by id."""

    def __init__(self, server: tuple[str, int], secret: bytes) -> None:
        self.server = server
        self.secret = secret
        self._endpoint: UdpEndpoint | None = None
        self._pending: dict[int, tuple[packet.Packet, asyncio.Future[packet.Packet]]] = {}
        self._next_id = 0
        self.stray_replies = 0

    @classmethod
    async def open(
        cls, server: tuple[str, int], secret: bytes, *, bind_ip: str | None = None
    ) -> RadiusClient:
        """A client with its socket bound to ``bind_ip`` (any port) if given."""
        self = cls(server, secret)
        endpoint = UdpEndpoint(self._on_reply, name="radius")
        await endpoint.open(local_addr=(bind_ip, 0) if bind_ip else None, remote_addr=server)
        self._endpoint = endpoint
        return self

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
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
        endpoint = self._endpoint
        if endpoint is None:
            raise RuntimeError("client is closed")
        pkt.id = self._allocate_id()
        raw = pkt.RequestPacket()
        future: asyncio.Future[packet.Packet] = asyncio.get_running_loop().create_future()
        self._pending[pkt.id] = (pkt, future)
        try:
            for _attempt in range(retries + 1):
                endpoint.sendto(raw)
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
