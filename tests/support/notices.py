"""Notices sent to a client as the notifier sends them, for tests and benchmarks that move a
client by hand: signed with the bus key, authenticated under the client's own secret.

Use::

    notices = Notices(config, bus)           # bus: one holding the config's keys
    await notices.failover("nas-01", "A", to="B")
    await notices.readmit("nas-01", "A")     # back home to A, as a readmission wave does
"""

from __future__ import annotations

import time
from collections.abc import Callable

from schemas.events import Event, FailoverNotice, ReadmitNotice
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator
from services.runtime.bus import Bus
from services.runtime.config import Config

VALID_S = 60.0


class Notices:
    """Failover and readmit notices for the clients of ``config``, published on ``bus``."""

    def __init__(self, config: Config, bus: Bus, incident_id: str = "inc-by-hand") -> None:
        self.config = config
        self.bus = bus
        self.incident_id = incident_id
        # above any sequence number a notifier of this machine has used
        self.seq = int(time.time() * 1_000_000)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _authenticate(self, client_id: str, server: str) -> Callable[[bytes], dict[str, str]]:
        client = self.config.client(client_id)
        secret = self.config.read_secret(client.secret)
        server_ip = self.config.server(server).ip

        def authenticate(payload: bytes) -> dict[str, str]:
            auth = client_authenticator(
                secret, server_ip, client.ip, payload, legacy=client.legacy_authenticator
            )
            return {AUTH_HEADER: auth, SERVER_HEADER: server}

        return authenticate

    async def _send(self, client_id: str, server: str, notice: Event) -> None:
        await self.bus.publish(
            self.bus.subjects.notice(client_id),
            notice,
            authenticate=self._authenticate(client_id, server),
        )

    async def failover(self, client: str, server: str, to: str) -> FailoverNotice:
        """Move ``client`` off ``server`` to ``to``."""
        notice = FailoverNotice(
            incident_id=self.incident_id,
            server=server,
            client=client,
            alternates=[to],
            seq=self._next_seq(),
            valid_until=time.time() + VALID_S,
        )
        await self._send(client, server, notice)
        return notice

    async def readmit(self, client: str, server: str, wave: int = 1) -> ReadmitNotice:
        """Let ``client`` return to ``server``, its home, in readmission wave ``wave``."""
        notice = ReadmitNotice(
            incident_id=self.incident_id,
            server=server,
            client=client,
            wave=wave,
            seq=self._next_seq(),
            valid_until=time.time() + VALID_S,
        )
        await self._send(client, server, notice)
        return notice
