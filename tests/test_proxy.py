"""The agent as a RADIUS proxy: packet re-encoding alone, then radclient and radtest
through the agent to the reference server and to FreeRADIUS, across notices and
dead upstreams."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyrad import packet

from schemas.events import Ack, ClientStatus, FailoverNotice, ReadmitNotice, UpstreamReport
from services.aaa import service as aaa
from services.agent import service as agent
from services.launch.farm import free_udp_port
from services.radius.packet import Dropped, dictionary
from services.radius.reencode import (
    decode_request,
    hide_password,
    nas_reply,
    resalt,
    reveal_password,
    status_answer,
    upstream_request,
)
from services.runtime.bus import Bus
from services.runtime.config import Config, ProxyConfig, Secret, ServerConfig
from tests.conftest import FarmFactory
from tests.freeradius import StartFreeRadius, require
from tests.helpers import next_matching, operator_bus, running, status, wait_ready
from tests.notices import Notices

NAS = b"nas-to-proxy-secret"
UP = b"proxy-to-server-secret"
PROXY_IP = "127.0.2.1"
CREDENTIALS = "User-Name = alice, User-Password = wonderland\n"
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


def decoded_nas_request(**kwargs: Any) -> tuple[packet.Packet, bytes]:
    raw = nas_access_request(**kwargs).RequestPacket()
    return decode_request(raw, NAS, accounting=False), raw


def test_password_hiding_matches_rfc2865_as_pyrad_does_it() -> None:
    pkt = packet.AuthPacket(secret=UP, dict=dictionary())
    for password in ("x", "wonderland", "sixteen octets!!", "a" * 100):
        hidden = pkt.PwCrypt(password)
        padded = reveal_password(hidden, UP, pkt.authenticator)
        assert padded.rstrip(b"\0").decode() == pkt.PwDecrypt(hidden) == password
        assert hide_password(padded, UP, pkt.authenticator) == hidden
    for bad in (b"", b"x" * 15, b"x" * 144):
        with pytest.raises(Dropped, match="malformed"):
            reveal_password(bad, UP, pkt.authenticator)


@pytest.mark.parametrize("tagged", [False, True])
def test_salted_values_are_moved_from_one_secret_to_another(tagged: bool) -> None:
    vector_in, vector_out = bytes(range(16)), bytes(range(16, 32))
    sealer = packet.Packet(code=packet.AccessAccept, secret=UP, dict=dictionary())
    sealer.request_authenticator = vector_in
    value = sealer.SaltCrypt(b"mppe key material, 32 octets...")
    tag = b"\x03" if tagged else b""
    moved = resalt(
        tag + value,
        tagged,
        from_secret=UP,
        from_vector=vector_in,
        to_secret=NAS,
        to_vector=vector_out,
    )
    assert moved[: len(tag) + 2] == tag + value[:2]  # same tag and salt
    opener = packet.Packet(code=packet.AccessAccept, secret=NAS, dict=dictionary())
    opener.request_authenticator = vector_out
    assert opener.SaltDecrypt(moved[len(tag) :]) == b"mppe key material, 32 octets..."
    with pytest.raises(Dropped, match="malformed"):
        resalt(
            b"\x80\x01short",
            False,
            from_secret=UP,
            from_vector=vector_in,
            to_secret=NAS,
            to_vector=vector_out,
        )


def test_an_access_request_is_re_encoded_for_the_upstream() -> None:
    request, _ = decoded_nas_request()
    sent = upstream_request(request, UP)
    sent.id = 9
    wire = sent.RequestPacket()
    seen = packet.AuthPacket(packet=wire, secret=UP, dict=dictionary())
    assert seen.message_authenticator and seen.verify_message_authenticator()
    assert seen.authenticator != request.authenticator
    assert seen.PwDecrypt(seen["User-Password"][0]) == "a password longer than sixteen octets"
    assert seen["User-Name"] == ["alice"] and seen["NAS-Identifier"] == ["nas-7"]
    assert seen["Proxy-State"] == [b"first", b"second"]
    assert seen[(9, 1)] == [b"cisco-avpair=shell:priv-lvl=15"]
    # nothing readable under the NAS's secret any more
    assert not packet.AuthPacket(
        packet=wire, secret=NAS, dict=dictionary()
    ).verify_message_authenticator()


def test_chap_keeps_its_challenge_and_an_unsigned_request_is_signed_upstream() -> None:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=1)
    pkt["User-Name"] = "alice"
    pkt.authenticator = bytes(range(16))
    pkt[3] = [b"\x07" + bytes(16)]  # CHAP-Password, challenged by the authenticator
    request = decode_request(pkt.RequestPacket(), NAS, accounting=False)
    assert not request.message_authenticator
    sent = upstream_request(request, UP)
    sent.id = 2
    seen = packet.AuthPacket(packet=sent.RequestPacket(), secret=UP, dict=dictionary())
    assert seen[60] == [bytes(range(16))]  # CHAP-Challenge
    assert seen[3] == [b"\x07" + bytes(16)]
    assert seen.verify_message_authenticator()


def test_the_upstreams_reply_is_re_encoded_for_the_nas() -> None:
    original = nas_access_request()
    request = decode_request(original.RequestPacket(), NAS, accounting=False)
    sent = upstream_request(request, UP)
    sent.id = 200
    at_server = packet.AuthPacket(packet=sent.RequestPacket(), secret=UP, dict=dictionary())
    answer = at_server.CreateReply()
    answer["Reply-Message"] = "welcome"
    answer.request_authenticator = at_server.authenticator
    answer[69] = [b"\x01" + answer.SaltCrypt(b"tunnel secret")]  # Tunnel-Password, tag 1
    wire = answer.ReplyPacket()
    reply = sent.CreateReply(packet=wire)
    assert sent.VerifyReply(reply, wire)

    back = nas_reply(request, sent, reply)
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert got.code == packet.AccessAccept and got.id == 42
    assert got["Reply-Message"] == ["welcome"]
    assert got["Proxy-State"] == [b"first", b"second"]
    opener = packet.Packet(code=packet.AccessAccept, secret=NAS, dict=dictionary())
    opener.request_authenticator = original.authenticator
    assert got[69][0][:1] == b"\x01"
    assert opener.SaltDecrypt(got[69][0][1:]) == b"tunnel secret"


def test_a_reject_without_message_authenticator_to_an_unsigned_request_stays_unsigned() -> None:
    original = nas_access_request(signed=False)
    request = decode_request(original.RequestPacket(), NAS, accounting=False)
    sent = upstream_request(request, UP)
    sent.id = 3
    at_server = packet.AuthPacket(packet=sent.RequestPacket(), secret=UP, dict=dictionary())
    answer = at_server.CreateReply(message_authenticator=False)
    answer.code = packet.AccessReject
    wire = answer.ReplyPacket()
    back = nas_reply(request, sent, sent.CreateReply(packet=wire))
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back)
    assert got.code == packet.AccessReject and not got.message_authenticator


def test_accounting_is_verified_and_re_encoded() -> None:
    pkt = packet.AcctPacket(secret=NAS, dict=dictionary(), id=5)
    pkt["Acct-Status-Type"] = 1
    pkt["Acct-Session-Id"] = "s-1"
    pkt["User-Name"] = "alice"
    raw = pkt.RequestPacket()
    request = decode_request(raw, NAS, accounting=True)
    sent = upstream_request(request, UP)
    sent.id = 6
    at_server = packet.AcctPacket(packet=sent.RequestPacket(), secret=UP, dict=dictionary())
    assert at_server.VerifyAcctRequest()
    assert at_server["Acct-Session-Id"] == ["s-1"] and not at_server.message_authenticator
    wire = at_server.CreateReply().ReplyPacket()
    back = nas_reply(request, sent, sent.CreateReply(packet=wire))
    got = pkt.CreateReply(packet=back)
    assert pkt.VerifyReply(got, back) and got.code == packet.AccountingResponse


def test_requests_that_cannot_be_trusted_are_dropped_with_a_reason() -> None:
    signed = nas_access_request().RequestPacket()
    acct = packet.AcctPacket(secret=NAS, dict=dictionary(), id=5)
    acct["User-Name"] = "alice"
    acct_raw = acct.RequestPacket()
    status = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary(), id=8)
    cases = [
        (b"\x01\x02", False, "malformed"),
        (signed[:25], False, "malformed"),
        (signed, True, "unsupported-code"),  # an Access-Request on the accounting port
        (acct_raw, False, "unsupported-code"),
        (bytes([2]) + signed[1:], False, "unsupported-code"),  # an Access-Accept
        (nas_access_request(b"wrong").RequestPacket(), False, "bad-message-authenticator"),
        (acct_raw[:-1] + bytes([acct_raw[-1] ^ 1]), True, "bad-authenticator"),
        (status.RequestPacket(), False, "no-message-authenticator"),
    ]
    for data, accounting, reason in cases:
        with pytest.raises(Dropped) as caught:
            decode_request(data, NAS, accounting=accounting)
        assert caught.value.reason == reason, (data, reason)


def test_status_server_is_answered_by_the_proxy() -> None:
    probe = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary(), id=8)
    probe.add_message_authenticator()
    raw = probe.RequestPacket()
    answer = status_answer(decode_request(raw, NAS, accounting=False))
    reply = probe.CreateReply(packet=answer)
    assert probe.VerifyReply(reply, answer, enforce_ma=True)
    assert reply.code == packet.AccessAccept


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
) -> Config:
    """``config`` with client nas-01 as a proxy on PROXY_IP (the NAS secret in a file)."""
    (tmp_path / "nas.secret").write_text(NAS.decode() + "\n")
    auth_port = free_udp_port(PROXY_IP)
    proxy = ProxyConfig(
        ip=PROXY_IP,
        auth_port=auth_port,
        acct_port=free_udp_port(PROXY_IP) if acct else None,
        nas_secret=Secret(file=str(tmp_path / "nas.secret")),
        response_window_s=WINDOW_S,
        check_interval_s=CHECK_S,
        check_timeout_s=CHECK_S,
        answers_to_alive=ANSWERS,
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


def acct_target(config: Config) -> str:
    proxy = config.clients[0].proxy
    assert proxy is not None and proxy.acct_port is not None
    return f"{proxy.ip}:{proxy.acct_port}"


@dataclass
class Outcome:
    """How a radclient or radtest run ended."""

    code: int
    output: str

    @property
    def accepted(self) -> int:
        found = re.search(r"Accepted\s*:\s*(\d+)", self.output)
        return int(found.group(1)) if found else 0

    @property
    def lost(self) -> int:
        found = re.search(r"Lost\s*:\s*(\d+)", self.output)
        return int(found.group(1)) if found else -1


async def _run(argv: list[str], stdin: str | None, timeout_s: float) -> Outcome:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout_s
        )
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Outcome(proc.returncode, out.decode(errors="replace"))


async def radclient(
    target: str,
    *,
    count: int,
    parallel: int = 1,
    rate: int | None = None,
    command: str = "auth",
    attributes: str = CREDENTIALS,
    secret: bytes = NAS,
) -> Outcome:
    """radclient sending ``count`` requests, ``parallel`` at once (at ``rate`` per second).

    radclient runs the packets of its input in parallel, so the input holds
    ``parallel`` copies, each sent ``count / parallel`` times. Each request is
    sent once (no retransmission) and waits 3 s for its answer.
    """
    assert count % parallel == 0
    argv = [require("radclient"), "-q", "-s", "-c", str(count // parallel), "-p", str(parallel)]
    argv += ["-t", "3", "-r", "1"]
    if rate is not None:
        argv += ["-n", str(rate)]
    argv += [target, command, secret.decode()]
    return await _run(argv, "\n".join([attributes] * parallel), timeout_s=60)


async def radtest(target: str, password: str = "wonderland") -> Outcome:
    argv = [require("radtest"), "alice", password, target, "0", NAS.decode()]
    return await _run(argv, None, timeout_s=30)


async def requests_seen(config: Config, server: str) -> int:
    """Access-Requests a running reference server has answered, read by Status-Server.

    (Its Total-Access-Requests, like FreeRADIUS's, also counts every Status-Server.)
    """
    values = await status(config, server, retries=5)
    return int(values["FreeRADIUS-Total-Auth-Responses"])


async def until_seen(config: Config, server: str, count: int, timeout_s: float = 10) -> None:
    """Wait until a reference server has taken ``count`` Access-Requests."""
    async with asyncio.timeout(timeout_s):
        while await requests_seen(config, server) < count:  # noqa: ASYNC110 (polls a server)
            await asyncio.sleep(0.05)


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


async def test_radclient_and_radtest_through_the_proxy_to_the_reference_server(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path)
    target = auth_target(config)
    async with reference(config, "A"), proxying(config):
        first = await radtest(target)
        assert first.code == 0 and "Received Access-Accept" in first.output, first.output
        many = await radclient(target, count=60, parallel=10)
        assert (many.code, many.accepted, many.lost) == (0, 60, 0), many.output
        wrong = await radtest(target, password="not-it")
        assert "Received Access-Reject" in wrong.output and wrong.code != 0
        assert await requests_seen(config, "A") == 62

        # a request signed with another secret is not forwarded, nor answered
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Collector(replies), remote_addr=(PROXY_IP, int(target.split(":")[1]))
        )
        try:
            transport.sendto(nas_access_request(b"not-the-nas-secret").RequestPacket())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(replies.get(), 1.0)
        finally:
            transport.close()
        assert await requests_seen(config, "A") == 62


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


async def test_retransmissions_are_not_forwarded_twice(farm: FarmFactory, tmp_path: Path) -> None:
    config, _ = farm(clients=1, client_rate=0, service_time_ms=300.0)
    config = with_proxy(config, tmp_path)
    port = int(auth_target(config).split(":")[1])
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    async with reference(config, "A"), proxying(config):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Collector(replies), remote_addr=(PROXY_IP, port)
        )
        try:
            request = nas_access_request()
            raw = request.RequestPacket()
            for _ in range(3):  # a NAS retransmitting while the server works
                transport.sendto(raw)
            first = await asyncio.wait_for(replies.get(), 5)
            assert request.VerifyReply(request.CreateReply(packet=first), first, enforce_ma=True)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(replies.get(), 0.5)
            assert await requests_seen(config, "A") == 1
            # once answered, a retransmission gets the same answer, not a new request
            transport.sendto(raw)
            assert await asyncio.wait_for(replies.get(), 5) == first
            # Status-Server is the proxy's own to answer
            probe = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary())
            probe.add_message_authenticator()
            transport.sendto(probe.RequestPacket())
            answer = await asyncio.wait_for(replies.get(), 5)
            assert probe.VerifyReply(probe.CreateReply(packet=answer), answer)
            assert await requests_seen(config, "A") == 1
        finally:
            transport.close()


async def test_a_notice_moves_the_upstream_with_no_failed_request(
    farm: FarmFactory, tmp_path: Path
) -> None:
    # A answers slowly, so requests are in flight to it when the notice comes
    config, _ = farm(clients=1, client_rate=0, service_time_ms=40.0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        load = asyncio.create_task(radclient(auth_target(config), count=600, parallel=20, rate=200))
        await until_seen(config, "A", 100)
        await watcher.failover("A", to="B")
        await watcher.on("B")
        at_switch = await requests_seen(config, "A")
        outcome = await asyncio.wait_for(load, 30)
        assert (outcome.code, outcome.accepted, outcome.lost) == (0, 600, 0), outcome.output
        on_a = await requests_seen(config, "A")
        on_b = await requests_seen(config, "B")
        # the (at most 20) requests in flight to A when the notice came were sent on to B at
        # once; A may still have answered some of them, too late to matter
        assert on_b > 100 and 600 <= on_a + on_b <= 620
        # nothing went to A after the switch
        assert on_a - at_switch <= 20


async def test_a_notice_sends_requests_in_flight_on_at_once_but_not_an_eap_round(
    farm: FarmFactory, tmp_path: Path
) -> None:
    # A answers within the response window, but slowly: requests are in flight when the
    # notice comes
    config, _ = farm(clients=1, client_rate=0, service_time_ms=300.0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        polls = 0
        before = int((await status(config, "A"))["FreeRADIUS-Total-Access-Requests"])
        plain = asyncio.create_task(radclient(auth_target(config), count=4, parallel=4))
        # a request carrying State is a round of an EAP conversation only A can go on with
        in_eap = CREDENTIALS.strip() + ", State = 0x0102\n"
        bound = asyncio.create_task(
            radclient(auth_target(config), count=2, parallel=2, attributes=in_eap)
        )
        async with asyncio.timeout(5):
            while True:  # every Status-Server counts among A's Access-Requests, too
                polls += 1
                seen = int((await status(config, "A"))["FreeRADIUS-Total-Access-Requests"])
                if seen - before - polls >= 6:
                    break
        await watcher.failover("A", to="B")
        outcomes = await asyncio.gather(plain, bound)
        assert [(o.code, o.accepted) for o in outcomes] == [(0, 4), (0, 2)], outcomes
        # the four were sent on to B without waiting out their window; the two stayed on A
        assert await requests_seen(config, "B") == 4
        reports: list[UpstreamReport] = []
        while sum(r.answers for r in reports if r.server == "A") < 2:
            status_ = await next_matching(watcher.statuses, lambda s: bool(s.upstreams), 5)
            reports += status_.upstreams
        of_a = [r for r in reports if r.server == "A"]
        assert sum(r.resent for r in of_a) == 4 and sum(r.timeouts for r in of_a) == 0


async def test_simulated_load_runs_beside_the_proxy_and_goes_where_it_does(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path, rate=20.0)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        on_a = await next_matching(watcher.statuses, lambda s: s.answered >= 5)
        assert (on_a.current, on_a.lost) == ("A", 0)
        assert await requests_seen(config, "B") == 0
        await watcher.failover("A", to="B")
        on_b = await watcher.on("B")
        await next_matching(watcher.statuses, lambda s: s.answered >= on_b.answered + 5)
        assert await requests_seen(config, "B") >= 5


async def test_a_dead_upstream_is_left_by_itself_and_taken_back(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "B"), proxying(config) as watcher:
        async with reference(config, "A"):
            load = asyncio.create_task(
                radclient(auth_target(config), count=1000, parallel=20, rate=200)
            )
            await until_seen(config, "A", 100)
        killed = time.monotonic()  # A is gone, with whatever it had queued
        left = await watcher.on("B")
        assert time.monotonic() - killed < WINDOW_S + 0.3
        assert not load.done()
        # the agent's own failover reaches the bus at once, with what it saw of A
        assert [(c.server, c.before, c.after) for c in left.changes] == [("A", "alive", "zombie")]
        assert left.changes[0].reason == f"no answer in {WINDOW_S:g}s"
        of_a = next(u for u in left.upstreams if u.server == "A")
        assert of_a.state == "zombie" and of_a.timeouts >= 1 and of_a.resent >= 1
        assert left.relayed >= 100 and left.response_window_s == WINDOW_S

        back = time.monotonic()
        async with reference(config, "A"):
            await watcher.on("A")
            # answers_to_alive probes, one per check interval, the first up to one interval in
            assert time.monotonic() - back >= (ANSWERS - 1) * CHECK_S
            assert not load.done()
            outcome = await asyncio.wait_for(load, 30)
            assert (outcome.code, outcome.accepted, outcome.lost) == (0, 1000, 0), outcome.output
            assert await requests_seen(config, "A") > 0
        assert await requests_seen(config, "B") > 0


async def test_freeradius_through_the_proxy_auth_accounting_and_failover(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    fr = await freeradius()  # accounting on a port of its own, not auth_port + 1
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    # the client's own secret is the upstream secret FreeRADIUS knows it by
    secret_file = config.path(config.clients[0].secret.file or "")
    secret_file.write_text(fr.client_secret + "\n")
    entry = fr.entry("F", acct_port=fr.acct_port)
    servers = [msgspec.convert(entry, ServerConfig), *config.servers]
    config = with_proxy(config, tmp_path, acct=True, servers=servers, home="F", alternates=("B",))
    async with reference(config, "B"), proxying(config) as watcher:
        first = await radtest(auth_target(config))
        assert first.code == 0 and "Received Access-Accept" in first.output, first.output
        auth = await radclient(auth_target(config), count=50, parallel=10)
        assert (auth.code, auth.accepted) == (0, 50), auth.output
        acct = await radclient(
            acct_target(config),
            count=3,
            command="acct",
            attributes='Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = "px-1"\n',
        )
        assert (acct.code, acct.accepted) == (0, 3), acct.output
        detail = (fr.directory / "radacct" / "detail").read_text()
        assert detail.count('Acct-Session-Id = "px-1"') == 3
        assert await requests_seen(config, "B") == 0

        load = asyncio.create_task(radclient(auth_target(config), count=800, parallel=10, rate=200))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fr.stop)
        await watcher.on("B")
        fr.start()
        await fr.wait_ready()
        await watcher.on("F")
        outcome = await asyncio.wait_for(load, 30)
        assert (outcome.code, outcome.accepted, outcome.lost) == (0, 800, 0), outcome.output
        assert await requests_seen(config, "B") > 0
