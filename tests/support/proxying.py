"""The agent of nas-01 as a RADIUS proxy in a test: its config (``with_proxy``, the NAS secret
``NAS`` on ``PROXY_IP``), an Access-Request as a NAS sends it, the reference servers behind it
(``reference``, ``requests_seen``), and the operator's view of it (``Watcher``, ``proxying``).
``proxy_alone`` runs nas-01's proxy in the test's own process in front of reference servers run
there too (real UDP, no bus), for tests that look at its counters and sockets; ``Nas`` is a NAS
on a source address of the test's choosing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from pyrad import packet

from schemas.events import Ack, ClientStatus, FailoverNotice, ReadmitNotice
from services.aaa import service as aaa
from services.aaa.service import AaaServer, build_servers
from services.agent import service as agent
from services.agent.proxy import RadiusProxy
from services.launch.farm import free_udp_port
from services.radius.packet import dictionary
from services.runtime.bus import Bus
from services.runtime.config import Config, ProxyConfig, Secret, ServerConfig
from tests.support.datagrams import Collect
from tests.support.helpers import next_matching, operator_bus, running, status, wait_ready
from tests.support.notices import Notices

NAS = b"nas-to-proxy-secret"
PROXY_IP = "127.0.2.1"
WINDOW_S = 0.5
CHECK_S = 0.2
ANSWERS = 3


# --- packets, alone ---------------------------------------------------------------


def nas_access_request(secret: bytes = NAS, *, signed: bool = True) -> packet.AuthPacket:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=secret, dict=dictionary(), id=42)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt("a password longer than sixteen octets")
    pkt["NAS-Identifier"] = "nas-7"
    pkt.AddAttribute("Proxy-State", b"first")
    pkt.AddAttribute("Proxy-State", b"second")
    pkt[(9, 1)] = [b"cisco-avpair=shell:priv-lvl=15"]
    if signed:
        pkt.add_message_authenticator()
    return pkt


# --- through the agent --------------------------------------------------------------


def with_proxy(
    config: Config,
    tmp_path: Path,
    *,
    acct: bool = False,
    servers: list[ServerConfig] | None = None,
    home: str = "A",
    alternates: tuple[str, ...] = ("B", "C"),
    rate: float = 0.0,
    **settings: Any,
) -> Config:
    """``config`` with client nas-01 as a proxy on PROXY_IP (the NAS secret in a file);
    ``settings`` are further fields of its ProxyConfig."""
    (tmp_path / "nas.secret").write_text(NAS.decode() + "\n")
    auth_port = free_udp_port(PROXY_IP)
    fields: dict[str, Any] = {
        "response_window_s": WINDOW_S,
        "check_interval_s": CHECK_S,
        "check_timeout_s": CHECK_S,
        "answers_to_alive": ANSWERS,
        **settings,
    }
    proxy = ProxyConfig(
        ip=PROXY_IP,
        auth_port=auth_port,
        acct_port=free_udp_port(PROXY_IP) if acct else None,
        nas_secret=Secret(file=str(tmp_path / "nas.secret")),
        **fields,
    )
    client = msgspec.structs.replace(
        config.clients[0], proxy=proxy, home=home, alternates=list(alternates), rate=rate
    )
    return msgspec.structs.replace(
        config, clients=[client], servers=servers if servers is not None else config.servers
    )


def auth_target(config: Config) -> str:
    proxy = config.clients[0].proxy
    assert proxy is not None
    return f"{proxy.ip}:{proxy.auth_port}"


async def requests_seen(config: Config, server: str) -> int:
    """Access-Requests a running reference server has answered, read by Status-Server.

    (Its Total-Access-Requests, like FreeRADIUS's, also counts every Status-Server.)
    """
    values = await status(config, server, retries=5)
    return int(values["FreeRADIUS-Total-Auth-Responses"])


class Watcher:
    """The operator's view of nas-01: its statuses and acks; notices sent as the notifier does."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config = config
        self.bus = bus
        self.notices = Notices(config, bus, incident_id="inc-proxy")
        self.statuses: asyncio.Queue[ClientStatus] = asyncio.Queue()
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()

    async def listen(self) -> None:
        async def on_status(event: ClientStatus) -> None:
            if event.client == "nas-01":
                await self.statuses.put(event)

        async def on_ack(event: Ack) -> None:
            if event.client == "nas-01":
                await self.acks.put(event)

        await self.bus.subscribe(
            self.bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
        )
        await self.bus.subscribe(
            self.bus.subjects.ack("*"), on_ack, types=(Ack,), accept_clients=True
        )

    async def on(self, server: str, timeout_s: float = 10) -> ClientStatus:
        return await next_matching(self.statuses, lambda s: s.current == server, timeout_s)

    async def failover(self, server: str, to: str) -> FailoverNotice:
        """Publish a FailoverNotice moving nas-01 off ``server`` to ``to``."""
        return await self.notices.failover("nas-01", server, to)

    async def readmit(self, home: str) -> ReadmitNotice:
        """Publish a ReadmitNotice letting nas-01 return to ``home``."""
        return await self.notices.readmit("nas-01", home)

    async def acked(self, notice: FailoverNotice | ReadmitNotice, timeout_s: float = 10) -> Ack:
        """nas-01's ack of ``notice``."""
        return await next_matching(self.acks, lambda a: a.notice_id == notice.id, timeout_s)


@asynccontextmanager
async def watching(config: Config) -> AsyncIterator[Watcher]:
    async with AsyncExitStack() as stack:
        watcher = Watcher(config, await operator_bus(config, stack, "proxy-test"))
        await watcher.listen()
        yield watcher


@asynccontextmanager
async def proxying(config: Config) -> AsyncIterator[Watcher]:
    """The agent of nas-01 running, with its proxy listening once this is entered."""
    async with watching(config) as watcher, running(agent.run, config, ["nas-01"]):
        await watcher.on(config.clients[0].home)  # its first status comes after set-up
        yield watcher


@asynccontextmanager
async def reference(config: Config, server: str) -> AsyncIterator[None]:
    """A reference server running (and answering) until the block ends."""
    async with running(aaa.run, config, [server]):
        await wait_ready(config, server)
        yield


# --- the proxy alone, in this process ------------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``predicate`` holds (checked every few milliseconds); fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (the condition is the proxy's own state)
            await asyncio.sleep(0.005)


@asynccontextmanager
async def proxy_alone(
    config: Config, servers: tuple[str, ...] = ("A",)
) -> AsyncIterator[tuple[RadiusProxy, dict[str, AaaServer]]]:
    """nas-01's proxy (``with_proxy``) and the reference ``servers``, all in this process on
    real UDP: the proxy listening and its zombie probes running until the block ends."""
    client = config.clients[0]
    assert client.proxy is not None and client.proxy.nas_secret.file is not None
    by_id = {s.id: s for s in config.servers}
    started: dict[str, AaaServer] = {}
    stopping = asyncio.Event()
    proxy = RadiusProxy(
        client_id=client.id,
        client_ip=client.ip,
        secret=config.read_secret(client.secret),
        nas_secret=config.read_secret(client.proxy.nas_secret),
        settings=client.proxy,
        upstreams=[by_id[s].endpoint for s in (client.home, *client.alternates)],
    )
    try:
        for server in build_servers(config, list(servers)) if servers else []:
            await server.start()
            started[server.id] = server
        await proxy.start()
        task = asyncio.create_task(proxy.run(stopping), name="proxy under test")
        try:
            yield proxy, started
        finally:
            stopping.set()
            await asyncio.wait_for(task, 30)
    finally:
        await proxy.close()
        for server in started.values():
            await server.close()


class Nas:
    """A NAS on ``ip`` (any loopback address): datagrams to the proxy, replies on a queue."""

    def __init__(self, transport: asyncio.DatagramTransport, replies: asyncio.Queue[bytes]):
        self.transport = transport
        self.replies = replies

    def send(self, raw: bytes) -> None:
        self.transport.sendto(raw)

    async def reply(self, timeout_s: float = 10.0) -> bytes:
        return await asyncio.wait_for(self.replies.get(), timeout_s)


@asynccontextmanager
async def nas(
    config: Config, ip: str = "127.0.0.1", *, accounting: bool = False
) -> AsyncIterator[Nas]:
    """A NAS sending from ``ip`` to nas-01's proxy (its auth port, or its accounting port)."""
    proxy = config.clients[0].proxy
    assert proxy is not None
    port = proxy.acct_port if accounting else proxy.auth_port
    assert port is not None
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Collect(replies), local_addr=(ip, 0), remote_addr=(proxy.ip, port)
    )
    try:
        yield Nas(transport, replies)
    finally:
        transport.close()


def accept(request: bytes, secret: bytes) -> bytes:
    """An Access-Accept to ``request`` with a Message-Authenticator, as an upstream sends."""
    length = (20 + 18).to_bytes(2, "big")
    header = bytes([2, request[1]]) + length
    authenticator = request[4:20]
    signature = hmac.new(secret, header + authenticator + bytes([80, 18]) + bytes(16), "md5")
    attributes = bytes([80, 18]) + signature.digest()
    response = hashlib.md5(header + authenticator + attributes + secret).digest()
    return header + response + attributes
