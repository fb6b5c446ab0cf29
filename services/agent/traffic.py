"""RADIUS load of one client: Access-Requests at a steady rate to its current server.

Requests go from a socket bound to the client's own IP, one
:class:`RadiusClient` per server endpoint, kept for reuse. Each request runs
as its own task, so a switch of server never drops a request in flight: it
finishes (or times out) against the server it was sent to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas.events import Endpoint
from services.agent.tally import Tallies
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import ACCESS_ACCEPT, access_request

logger = logging.getLogger(__name__)


@dataclass
class TrafficCounters:
    """Access-Requests sent, and how they ended: accepted, rejected or lost."""

    sent: int = 0
    answered: int = 0
    rejected: int = 0
    lost: int = 0

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered - self.rejected - self.lost


class Traffic:
    """Sends one client's Access-Requests to wherever ``current()`` points."""

    def __init__(
        self,
        *,
        client_id: str,
        client_ip: str,
        secret: bytes,
        user: str,
        password: str,
        rate: float,
        timeout_s: float,
        retries: int,
        current: Callable[[], Endpoint],
        tallies: Tallies | None = None,
        phase: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.client_ip = client_ip
        self.secret = secret
        self.user = user
        self.password = password
        self.rate = rate
        self.timeout_s = timeout_s
        self.retries = retries
        self.current = current
        self.tallies = tallies if tallies is not None else Tallies()
        self.phase = phase
        self.counters = TrafficCounters()
        self._radius: dict[tuple[str, int], RadiusClient] = {}

    async def _client_for(self, endpoint: Endpoint) -> RadiusClient:
        key = (endpoint.ip, endpoint.auth_port)
        radius = self._radius.get(key)
        if radius is None:
            radius = await RadiusClient.open(key, self.secret, bind_ip=self.client_ip)
            self._radius[key] = radius
        return radius

    async def request(self, endpoint: Endpoint) -> None:
        """One Access-Request to ``endpoint``, counted by how it ends."""
        self.counters.sent += 1
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        try:
            radius = await self._client_for(endpoint)
            pkt = access_request(
                self.secret, self.user, self.password, NAS_Identifier=self.client_id
            )
            reply = await radius.send(pkt, timeout_s=self.timeout_s, retries=self.retries)
        except RadiusTimeout:
            self.counters.lost += 1
            self.tallies.timed_out(endpoint.server)
            return
        except Exception as exc:
            # A socket error or a full id space: the request is lost, the load goes on.
            self.counters.lost += 1
            logger.warning("%s: request to %s failed: %s", self.client_id, endpoint.server, exc)
            return
        self.tallies.answered(endpoint.server, loop.time() - sent_at)
        if reply.code == ACCESS_ACCEPT:
            self.counters.answered += 1
        else:
            self.counters.rejected += 1

    async def run(self, sleep: Callable[[float], Awaitable[bool]]) -> None:
        """Send at ``rate`` per second until ``sleep`` returns False, then finish in flight.

        The first request waits ``phase`` (a share of one interval), so that
        clients started together do not send in lock-step.
        """
        if self.rate <= 0:
            return
        interval = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                next_at = loop.time() + self.phase * interval
                if not await sleep(self.phase * interval):
                    return
                while True:
                    endpoint = self.current()
                    tg.create_task(self.request(endpoint), name=f"{self.client_id}:request")
                    next_at += interval
                    now = loop.time()
                    if next_at < now - 1.0:
                        next_at = now
                    if not await sleep(max(0.0, next_at - now)):
                        break
        finally:
            self.close()

    def close(self) -> None:
        for radius in self._radius.values():
            radius.close()
        self._radius.clear()
