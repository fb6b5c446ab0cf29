"""A notifier under test on a real nats-server: ``transport_farm`` (a farm whose clients take
notices by their own transports), ``notifier`` (one running) and ``harness`` (the ``Harness``
that publishes plans and waves and watches the deliveries)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from schemas import codec
from schemas.events import (
    Ack,
    Delivery,
    FailoverPlan,
    Move,
)
from schemas.signing import (
    AUTH_HEADER,
    SERVER_HEADER,
    Rejected,
    client_key_id,
    verify_client_authenticator,
)
from services.agent.receive import NoticeCallback, verify_notice
from services.launch.farm import farm_dict, free_udp_port
from services.notifier.service import run
from services.runtime.bus import Bus, Signer
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running

TIMEOUT = 5.0


class Harness:
    """Plays the targeter, the readmitter and the clients around a notifier."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config = config
        self.bus = bus
        self.notices: defaultdict[str, asyncio.Queue[Msg]] = defaultdict(asyncio.Queue)
        self.deliveries: defaultdict[str, asyncio.Queue[Delivery]] = defaultdict(asyncio.Queue)

    async def listen(self) -> None:
        async def on_notice(msg: Msg) -> None:
            await self.notices[msg.subject.rsplit(".", 1)[1]].put(msg)

        async def on_delivery(event: Delivery) -> None:
            await self.deliveries[event.client].put(event)

        await self.bus.subscribe_raw(self.bus.subjects.notice("*"), on_notice)
        await self.bus.subscribe(self.bus.subjects.delivery("*"), on_delivery, types=(Delivery,))

    async def notice(self, client: str) -> Msg:
        return await asyncio.wait_for(self.notices[client].get(), TIMEOUT)

    async def delivery(self, client: str) -> Delivery:
        return await asyncio.wait_for(self.deliveries[client].get(), TIMEOUT)

    def secret(self, client: str) -> bytes:
        return self.config.read_secret(self.config.client(client).secret)

    async def plan(
        self, server: str, *moves: tuple[str, list[str]], incident_id: str = "inc-1"
    ) -> FailoverPlan:
        plan = FailoverPlan(
            incident_id=incident_id,
            server=server,
            moves=[Move(client=c, alternates=alts) for c, alts in moves],
        )
        await self.bus.publish(self.bus.subjects.plan(server), plan)
        return plan

    async def ack(self, client: str, notice_id: str, server: str) -> None:
        ack = Ack(notice_id=notice_id, client=client, server=server, accepted=True, now_on="B")
        signer = Signer(client_key_id(client), self.secret(client))
        await self.bus.publish(self.bus.subjects.ack(client), ack, signer=signer)

    async def until_ready(self, probe: str) -> None:
        """Send plans moving ``probe`` until the notifier reports one sent, and ack it."""
        home = self.config.client(probe).home
        for _ in range(40):
            await self.plan(home, (probe, []))
            try:
                delivery = await asyncio.wait_for(self.deliveries[probe].get(), 0.25)
            except TimeoutError:
                continue
            assert delivery.outcome == "sent"
            await self.ack(probe, delivery.notice_id, home)
            return
        raise AssertionError("the notifier never answered")

    def check_notice(self, msg: Msg, client: str, server: str) -> Any:
        """Verify ``msg`` as the client would; return the decoded notice."""
        headers = msg.headers or {}
        assert headers[SERVER_HEADER] == server
        c = self.config.client(client)
        server_ip = self.config.server(server).ip
        verify_client_authenticator(
            self.secret(client), server_ip, c.ip, msg.data, headers[AUTH_HEADER]
        )
        with pytest.raises(Rejected):
            verify_client_authenticator(
                b"not-the-secret", server_ip, c.ip, msg.data, headers[AUTH_HEADER]
            )
        with pytest.raises(Rejected):
            verify_client_authenticator(
                self.secret(client), "10.9.9.9", c.ip, msg.data, headers[AUTH_HEADER]
            )
        return codec.decode(msg.data, headers.get(codec.CONTENT_TYPE))


def transport_farm(
    farm: FarmFactory,
    tmp_path: Path,
    transports: Mapping[str, str],
    notifier: Mapping[str, Any] | None = None,
    clients: int = 3,
) -> Config:
    """A farm whose clients named in ``transports`` use that transport (and a free CoA port)."""
    shape = farm_dict(tmp_path / "shape", bus_url=None, clients=clients)
    client_list = []
    for entry in shape["clients"]:
        transport = transports.get(entry["id"])
        if transport is not None:
            entry = entry | {"transport": transport, "coa_port": free_udp_port(entry["ip"])}
        client_list.append(entry)
    config, _ = farm({"clients": client_list, "notifier": dict(notifier or {})}, clients=clients)
    return config


def notifier(config: Config) -> AbstractAsyncContextManager[object]:
    return running(run, config)


@asynccontextmanager
async def harness(config: Config) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "test")
        h = Harness(config, bus)
        await h.listen()
        yield h


def verifying(
    config: Config, client_id: str, seen: asyncio.Queue[Any], secret: bytes | None = None
) -> NoticeCallback:
    """An on_notice callback that verifies as the agent does, under ``secret`` (the client's
    own by default), and puts on ``seen`` what it got: ``(notice, payload)``, or the reason
    it refused the notice."""
    client = config.client(client_id)
    key = secret if secret is not None else config.read_secret(client.secret)
    servers = {s.id: s for s in config.servers}

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        try:
            notice = verify_notice(client, key, servers, server, payload, auth, ct)
        except Rejected as exc:
            await seen.put(exc.reason)
            return False
        await seen.put((notice, payload))
        return True

    return on_notice
