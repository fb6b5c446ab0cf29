"""The agent as a service on a real nats-server: notices, load and the return home."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, cast

import msgspec
import pytest
from pyrad import packet

from schemas.events import (
    Ack,
    ClientStatus,
    FailoverNotice,
    ReadmitNotice,
    ReadmitRequest,
)
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator
from services.agent.service import run
from services.launch.farm import free_udp_port
from services.radius.packet import dictionary
from services.runtime.bus import Bus
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running
from tests.support.scraping import metrics_urls, scrape

TIMEOUT = 5.0


# --- the service on the bus -------------------------------------------------


def _tune(config: Config, client: str, **changes: Any) -> Config:
    clients = [
        msgspec.structs.replace(c, **changes) if c.id == client else c for c in config.clients
    ]
    return msgspec.structs.replace(config, clients=clients)


class Harness:
    """Plays the notifier and the readmitter around an agent."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config = config
        self.bus = bus
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()
        self.statuses: asyncio.Queue[ClientStatus] = asyncio.Queue()
        self.requests: asyncio.Queue[tuple[str, ReadmitRequest]] = asyncio.Queue()
        self.seq = int(time.time() * 1_000_000)

    async def listen(self) -> None:
        async def on_ack(event: Ack) -> None:
            await self.acks.put(event)

        async def on_status(event: ClientStatus) -> None:
            await self.statuses.put(event)

        subjects = self.bus.subjects
        await self.bus.subscribe(subjects.ack("*"), on_ack, types=(Ack,), accept_clients=True)
        await self.bus.subscribe(
            subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
        )
        for server in self.config.servers:

            async def on_request(event: ReadmitRequest, sid: str = server.id) -> None:
                await self.requests.put((sid, event))

            await self.bus.subscribe(
                subjects.request(server.id),
                on_request,
                types=(ReadmitRequest,),
                accept_clients=True,
            )

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def failover(self, server: str, alternates: list[str], **fields: Any) -> FailoverNotice:
        values: dict[str, Any] = {
            "incident_id": "inc-1",
            "server": server,
            "client": "nas-01",
            "alternates": alternates,
            "seq": self.next_seq(),
            "valid_until": time.time() + 60,
        }
        values.update(fields)
        return FailoverNotice(**values)

    async def send(
        self,
        notice: FailoverNotice | ReadmitNotice,
        *,
        to: str = "nas-01",
        secret: bytes | None = None,
    ) -> None:
        """Publish ``notice`` on ``to``'s subject with that client's authenticator."""
        client = self.config.client(to)
        key = secret or self.config.read_secret(client.secret)
        server_ip = self.config.server(notice.server).ip

        def authenticate(payload: bytes) -> dict[str, str]:
            auth = client_authenticator(key, server_ip, client.ip, payload)
            return {AUTH_HEADER: auth, SERVER_HEADER: notice.server}

        await self.bus.publish(self.bus.subjects.notice(to), notice, authenticate=authenticate)

    async def ack(self) -> Ack:
        return await asyncio.wait_for(self.acks.get(), TIMEOUT)

    async def status(
        self, predicate: Callable[[ClientStatus], bool], within: float = TIMEOUT
    ) -> ClientStatus:
        async with asyncio.timeout(within):
            while True:
                status = await self.statuses.get()
                if status.client == "nas-01" and predicate(status):
                    return status


def agent(config: Config, only: list[str] | None = None) -> AbstractAsyncContextManager[object]:
    return running(run, config, only)


@asynccontextmanager
async def harness(config: Config) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "test")
        h = Harness(config, bus)
        await h.listen()
        yield h


async def test_agent_switches_on_genuine_notice_and_rejects_forgeries(farm: FarmFactory) -> None:
    config, _ = farm(clients=2, client_rate=0)
    config = _tune(config, "nas-01", return_after_s=60.0).with_metrics_port("agent", 0)
    with metrics_urls() as urls:
        async with harness(config) as h, agent(config):
            await _switches_and_rejects(h, urls[0])


async def _switches_and_rejects(h: Harness, metrics_url: str) -> None:
    """Genuine notices move nas-01; forged, foreign, expired and replayed ones are refused
    and counted, on its status and its /metrics."""
    ready = await h.status(lambda s: True)
    assert (ready.home, ready.current, ready.notices_rejected) == ("A", "A", 0)

    genuine = h.failover("A", ["B", "C"])
    await h.send(genuine)
    ack = await h.ack()
    assert (ack.notice_id, ack.client, ack.server) == (genuine.id, "nas-01", "A")
    assert (ack.accepted, ack.now_on) == (True, "B")
    await h.status(lambda s: s.current == "B")

    # a forged authenticator, another client's notice, an expired one, an old seq
    await h.send(h.failover("B", ["C"]), secret=b"not-the-secret")
    await h.send(h.failover("B", ["C"], client="nas-02"))
    expired = h.failover("B", ["C"], valid_until=time.time() - 1)
    await h.send(expired)
    replayed = h.failover("B", ["C"], seq=genuine.seq)
    await h.send(replayed)
    # and it still works
    good = h.failover("B", ["C"])
    await h.send(good)

    answers = [await h.ack() for _ in range(3)]
    assert [(a.notice_id, a.accepted, a.reason) for a in answers] == [
        (expired.id, False, "expired"),
        (replayed.id, False, "old-seq"),
        (good.id, True, ""),
    ]
    assert answers[2].now_on == "C" and not answers[2].again
    status = await h.status(lambda s: s.current == "C")
    assert status.notices_rejected == 4

    # the same notice delivered again (a notifier retry) is acked again, not counted
    await h.send(good)
    again = await h.ack()
    assert (again.notice_id, again.accepted, again.now_on) == (good.id, True, "C")
    assert again.again
    later = await h.status(lambda s: True, within=3)
    assert (later.current, later.notices_rejected) == ("C", 4)
    assert h.acks.empty()
    # each refused notice is a dropped event on the agent's /metrics, by reason
    dropped = {
        dict(labels)["reason"]: count
        for (name, labels), count in (await scrape(metrics_url)).items()
        if name == "aaa_failover_events_dropped_total"
    }
    assert sum(dropped.values()) == 4 and {"expired", "old-seq"} <= set(dropped), dropped


async def test_agent_asks_to_return_after_its_timeout_then_goes_home(
    farm: FarmFactory,
) -> None:
    config, _ = farm(clients=2, client_rate=0)
    config = _tune(config, "nas-01", return_after_s=0.4, return_jitter=0.25)
    async with harness(config) as h, agent(config, only=["nas-01"]):
        await h.status(lambda s: True)
        started = time.monotonic()
        await h.send(h.failover("A", ["B"]))
        assert (await h.ack()).now_on == "B"

        server, request = await asyncio.wait_for(h.requests.get(), TIMEOUT)
        waited = time.monotonic() - started
        assert (server, request.client, request.server) == ("A", "nas-01", "A")
        assert 0.4 * 0.75 <= waited < 0.4 * 1.25 + 1.0
        # unanswered, it asks again
        server, again = await asyncio.wait_for(h.requests.get(), TIMEOUT)
        assert server == "A" and again.id != request.id

        welcome = ReadmitNotice(
            incident_id="inc-1",
            server="A",
            client="nas-01",
            seq=h.next_seq(),
            valid_until=time.time() + 60,
        )
        await h.send(welcome)
        ack = await h.ack()
        assert (ack.notice_id, ack.accepted, ack.now_on) == (welcome.id, True, "A")
        await h.status(lambda s: s.current == "A")
        while not h.requests.empty():  # asked before the welcome came
            h.requests.get_nowait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(h.requests.get(), 1.0)


# --- RADIUS load --------------------------------------------------------------


class Responder(asyncio.DatagramProtocol):
    """A tiny RADIUS server: decodes each Access-Request and answers after ``delay_s``."""

    def __init__(self, secrets: dict[str, bytes], accept: bool, delay_s: float) -> None:
        self.secrets = secrets
        self.accept = accept
        self.delay_s = delay_s
        self.seen: list[tuple[str, str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        secret = self.secrets.get(addr[0])
        if secret is None or self.transport is None:
            return
        request = packet.AuthPacket(packet=data, secret=secret, dict=dictionary())
        password = request.PwDecrypt(request["User-Password"][0])
        self.seen.append((addr[0], request["NAS-Identifier"][0], password))
        reply = request.CreateReply()
        ok = self.accept and password == "wonderland"
        reply.code = packet.AccessAccept if ok else packet.AccessReject
        asyncio.get_running_loop().call_later(
            self.delay_s, self.transport.sendto, reply.ReplyPacket(), addr
        )


async def test_agent_load_follows_the_current_server(farm: FarmFactory) -> None:
    config, _ = farm(clients=2, client_rate=0)
    config = _tune(
        config,
        "nas-01",
        rate=25.0,
        request_timeout_s=0.3,
        request_retries=0,
        return_after_s=60.0,
    )
    nas1 = config.client("nas-01")
    secrets = {c.ip: config.read_secret(c.secret) for c in config.clients}
    loop = asyncio.get_running_loop()
    responders: dict[str, Responder] = {}
    transports = []
    # A accepts slowly, B is down (no responder), C rejects
    for sid, accept in (("A", True), ("C", False)):
        s = config.server(sid)
        responder = Responder(secrets, accept, delay_s=0.2 if accept else 0.0)
        transport, _ = await loop.create_datagram_endpoint(
            lambda r=responder: r, local_addr=(s.ip, s.auth_port)
        )
        responders[sid] = responder
        transports.append(transport)
    try:
        async with harness(config) as h:
            async with agent(config):
                answered = await h.status(lambda s: s.answered >= 5)
                assert answered.current == "A" and answered.lost == 0

                await h.send(h.failover("A", ["B", "C"]))
                at_switch = await h.status(lambda s: s.current == "B")
                # requests in flight to A finish there after the switch
                await h.status(lambda s: s.answered > at_switch.answered)
                on_b = await h.status(lambda s: s.lost >= 3)
                assert on_b.current == "B"

                await h.send(h.failover("B", ["C"]))
                on_c = await h.status(lambda s: s.current == "C" and s.rejected >= 3)
                assert on_c.notices_rejected == 0
            # the last status, sent at shutdown, accounts for every request
            final = on_c
            while True:
                try:
                    status = await asyncio.wait_for(h.statuses.get(), 1.0)
                except TimeoutError:
                    break
                if status.client == "nas-01":
                    final = status
            assert final.sent == final.answered + final.rejected + final.lost
            assert final.sent >= on_c.sent
    finally:
        for transport in transports:
            transport.close()
    seen = responders["A"].seen + responders["C"].seen
    assert seen, "no request reached a server"
    assert {(ip, nas, pw) for ip, nas, pw in seen} == {(nas1.ip, "nas-01", "wonderland")}


async def test_agent_load_is_answered_by_the_reference_server(farm: FarmFactory) -> None:
    from services.aaa import service as aaa

    config, _ = farm(clients=2, client_rate=0)
    config = _tune(config, "nas-01", rate=20.0, request_timeout_s=0.5, request_retries=1)
    stop = asyncio.Event()
    server = asyncio.create_task(aaa.run(config, shutdown_trigger=stop.wait, only=["A"]))
    try:
        async with harness(config) as h, agent(config, only=["nas-01"]):
            status = await h.status(lambda s: s.answered >= 10)
            assert (status.current, status.rejected) == ("A", 0)
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_agent_counts_the_coa_packets_it_refuses_on_its_metrics(farm: FarmFactory) -> None:
    """Datagrams that are not CoA, and a CoA-Request under the wrong secret, reach the
    agent's CoA listener; each is counted by outcome on the agent's /metrics."""
    config, _ = farm(clients=2, client_rate=0)
    config = _tune(
        config, "nas-01", transport="radius-coa", coa_port=free_udp_port("127.0.0.1")
    ).with_metrics_port("agent", 0)
    client = config.client("nas-01")
    loop = asyncio.get_running_loop()
    with metrics_urls() as urls:
        async with harness(config) as h, agent(config):
            await h.status(lambda s: True)  # the agent runs, its listener bound
            sock, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(client.ip, client.coa_port)
            )
            try:
                # too short; a header only; a length field past the datagram's end
                for junk in (b"\x2b", b"\x2b\x01\x00\x14", b"\x2b\x01\x01\x00" + bytes(16)):
                    sock.sendto(junk)
                forged = packet.CoAPacket(
                    code=packet.CoARequest, id=7, secret=b"not-the-secret", dict=dictionary()
                )
                forged.add_message_authenticator()
                sock.sendto(forged.RequestPacket())

                async def counted() -> dict[str, float]:
                    while True:
                        found = {
                            dict(labels)["outcome"]: value
                            for (name, labels), value in (await scrape(urls[0])).items()
                            if name == "aaa_failover_agent_packets_total"
                            and dict(labels)["receiver"] == "radius-coa"
                        }
                        if found.get("bad-authenticator") and found.get("malformed", 0) >= 3:
                            return found
                        await asyncio.sleep(0.05)

                found = await asyncio.wait_for(counted(), TIMEOUT)
            finally:
                sock.close()
    assert found["malformed"] == 3, found
    assert found["bad-authenticator"] == 1, found


async def test_a_notice_cannot_send_a_client_to_a_server_outside_its_configuration(
    farm: FarmFactory,
) -> None:
    """Finding: whoever holds a client's RADIUS secret could name their own address as an
    alternate. Alternates are server ids now: an id the agent does not know is refused
    with the whole notice, and the client stays where it is."""
    config, _ = farm(clients=2, client_rate=0)
    config = _tune(config, "nas-01", return_after_s=60.0)
    async with harness(config) as h, agent(config):
        await h.status(lambda s: True)
        rogue = h.failover("A", ["rogue", "B"])
        await h.send(rogue)
        ack = await h.ack()
        assert (ack.notice_id, ack.accepted, ack.reason, ack.now_on) == (
            rogue.id,
            False,
            "unknown-server",
            "A",
        )
        status = await h.status(lambda s: s.notices_rejected == 1)
        assert status.current == "A"
        # the retired form, which carried addresses, does not even decode
        retired = msgspec.json.encode(
            {
                "type": "notice.failover",
                "id": "f" * 32,
                "time": time.time(),
                "source": "attacker",
                "incident_id": "x",
                "server": "A",
                "client": "nas-01",
                "alternates": [{"server": "B", "ip": "127.0.0.66", "auth_port": 1812}],
                "seq": h.next_seq(),
                "valid_until": time.time() + 60,
            }
        )
        client = config.client("nas-01")
        auth = client_authenticator(
            config.read_secret(client.secret), config.server("A").ip, client.ip, retired
        )
        await h.bus.nc.publish(
            h.bus.subjects.notice("nas-01"),
            retired,
            headers={AUTH_HEADER: auth, SERVER_HEADER: "A"},
        )
        status = await h.status(lambda s: s.notices_rejected == 2)
        assert status.current == "A"
        # and a genuine notice still moves it
        await h.send(h.failover("A", ["B"]))
        assert (await h.ack()).now_on == "B"
