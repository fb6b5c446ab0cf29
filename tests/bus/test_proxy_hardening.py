"""The agent's proxy against an attacker on loopback, on real UDP in front of the reference
server: BlastRADIUS (CVE-2024-3596) requests refused as FreeRADIUS 3.2.5 refuses them, a NAS
allowlist, every answer to the NAS signed first, and bounds on what a flood can make it hold
(requests in flight, upstream sockets, warning lines). What it drops is counted by reason, and
the agent's /metrics shows it (``aaa_failover_agent_packets_total{receiver="proxy"}``)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec
import pytest
from pyrad import packet

from services.radius.packet import dictionary
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.proxying import (
    NAS,
    nas,
    proxy_alone,
    proxying,
    reference,
    requests_seen,
    until,
    with_proxy,
)
from tests.support.scraping import metrics_urls, scrape

CLIENT_IP = "127.0.1.1"  # nas-01 in the farm: the proxy's upstream sockets are bound to it


def access_request(
    *,
    signed: bool = True,
    proxy_state: bool = False,
    password: str = "wonderland",
    secret: bytes = NAS,
    ident: int = 1,
) -> packet.AuthPacket:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=secret, dict=dictionary(), id=ident)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt(password)
    if proxy_state:
        pkt.AddAttribute("Proxy-State", b"from-a-proxy")
    if signed:
        pkt.add_message_authenticator()
    return pkt


def signed_first(request: packet.Packet, raw: bytes) -> bool:
    """``raw`` is the valid answer to ``request``, its first attribute a Message-Authenticator."""
    reply = request.CreateReply(packet=raw)
    return bool(request.VerifyReply(reply, raw, enforce_ma=True)) and raw[20:22] == b"\x50\x12"


async def proxy_drops(url: str) -> dict[str, float]:
    """The agent's proxy drops by reason, as /metrics shows them."""
    found: dict[str, float] = {}
    for (name, labels), count in (await scrape(url)).items():
        tags = dict(labels)
        if name == "aaa_failover_agent_packets_total" and tags.get("receiver") == "proxy":
            found[tags["outcome"]] = count
    return found


def served(config: Config) -> Config:
    return config.with_metrics_port("agent", 0)


def udp_sockets_on(ip: str) -> int:
    """UDP sockets of this process bound to ``ip``, from /proc (other processes on this host
    may bind the same loopback address)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[len("socket:[") : -1])
    hexed = "".join(f"{int(part):02X}" for part in reversed(ip.split(".")))
    with open("/proc/net/udp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[1].startswith(hexed + ":") and row[9] in mine)


# --- BlastRADIUS -------------------------------------------------------------------------


async def test_requests_freeradius_would_refuse_are_refused_and_counted(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = served(with_proxy(config, tmp_path))
    with metrics_urls() as urls:
        async with reference(config, "A"), proxying(config), nas(config) as sender:
            # no Message-Authenticator: the BlastRADIUS attack's request, with Proxy-State or not
            sender.send(access_request(signed=False, ident=1).RequestPacket())
            sender.send(access_request(signed=False, proxy_state=True, ident=2).RequestPacket())
            # one that does not verify under the NAS secret
            sender.send(access_request(secret=b"guessed", ident=3).RequestPacket())
            good = access_request(ident=4)
            sender.send(good.RequestPacket())
            # the NAS's datagrams are taken in order: by this answer the others were refused
            answer = await sender.reply()
            assert answer[1] == 4 and signed_first(good, answer)
            assert sender.replies.empty()
            assert await requests_seen(config, "A") == 1
            drops = await proxy_drops(urls[0])
    assert drops == {"no-message-authenticator": 2, "bad-message-authenticator": 1}


async def test_a_nas_let_off_message_authenticator_may_not_send_proxy_state(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = served(with_proxy(config, tmp_path, nas_without_message_authenticator=["127.0.0.1"]))
    with metrics_urls() as urls:
        async with reference(config, "A"), proxying(config), nas(config) as sender:
            unsigned = access_request(signed=False, ident=1)
            sender.send(unsigned.RequestPacket())
            answer = await sender.reply()
            # an old NAS still gets a signed answer, Message-Authenticator first
            assert answer[0] == packet.AccessAccept and signed_first(unsigned, answer)
            # limit_proxy_state: a NAS sends no Proxy-State; one without Message-Authenticator
            # is the attack's request
            sender.send(access_request(signed=False, proxy_state=True, ident=2).RequestPacket())
            signed = access_request(proxy_state=True, ident=3)
            sender.send(signed.RequestPacket())
            answer = await sender.reply()
            assert answer[1] == 3 and signed_first(signed, answer)
            assert sender.replies.empty()
            assert await requests_seen(config, "A") == 2
            drops = await proxy_drops(urls[0])
    assert drops == {"proxy-state-unsigned": 1}


async def test_every_answer_to_the_nas_carries_message_authenticator_first(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    servers = [
        msgspec.structs.replace(
            s, reference=msgspec.structs.replace(s.reference, challenge_rounds=1)
        )
        if s.id == "B" and s.reference is not None
        else s
        for s in config.servers
    ]
    config = with_proxy(msgspec.structs.replace(config, servers=servers), tmp_path)
    async with (
        reference(config, "A"),
        reference(config, "B"),
        proxying(config) as watcher,
        nas(config) as sender,
    ):
        for ident, password, code in (
            (1, "wonderland", packet.AccessAccept),
            (2, "not-it", packet.AccessReject),
        ):
            request = access_request(password=password, ident=ident)
            sender.send(request.RequestPacket())
            answer = await sender.reply()
            assert answer[0] == code and signed_first(request, answer)
        await watcher.failover("A", to="B")  # B challenges first
        await watcher.on("B")
        request = access_request(ident=3)
        sender.send(request.RequestPacket())
        answer = await sender.reply()
        assert answer[0] == packet.AccessChallenge and signed_first(request, answer)


# --- the NAS allowlist -------------------------------------------------------------------


async def test_datagrams_from_outside_the_allowlist_are_dropped_and_counted(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = served(with_proxy(config, tmp_path, nas_addresses=["127.0.0.1/32"]))
    with metrics_urls() as urls:
        async with reference(config, "A"), proxying(config):
            async with nas(config, "127.0.0.9") as stranger, nas(config) as known:
                stranger.send(access_request(ident=1).RequestPacket())  # valid, but not a NAS
                stranger.send(b"\x01")
                request = access_request(ident=2)
                known.send(request.RequestPacket())
                assert signed_first(request, await known.reply())
                assert stranger.replies.empty()
            assert await requests_seen(config, "A") == 1
            drops = await proxy_drops(urls[0])
    assert drops == {"unknown-nas": 2}


# --- bounds ------------------------------------------------------------------------------


SLOW = {"response_window_s": 30.0, "conversation_wait_s": 30.0}
"""A response window long enough that nothing times out while A's workers are stalled."""


async def test_beyond_max_in_flight_requests_are_dropped_as_overload(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path, max_in_flight=4, **SLOW)
    async with proxy_alone(config) as (proxy, servers), nas(config) as sender:
        servers["A"].pool.set_stalled(servers["A"].pool.workers)  # a hung backend
        requests = [access_request(ident=i) for i in range(10)]
        for request in requests:
            sender.send(request.RequestPacket())
        await until(lambda: proxy.counters.received == 10)
        assert proxy.in_flight == 4 and proxy.counters.dropped == {"overload": 6}
        assert proxy.counters.accepted == 4
        servers["A"].pool.set_stalled(0)
        answers = sorted([(await sender.reply())[1] for _ in range(4)])
        assert answers == [0, 1, 2, 3]
        await until(lambda: proxy.in_flight == 0)
        # with room again, the next request goes through
        sender.send(access_request(ident=10).RequestPacket())
        assert (await sender.reply())[1] == 10
        assert proxy.counters.settled() == proxy.counters.received == 11


async def test_upstream_sockets_are_capped_and_closed_when_idle(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    servers = [
        msgspec.structs.replace(s, reference=msgspec.structs.replace(s.reference, queue_max=1024))
        if s.reference is not None
        else s
        for s in config.servers
    ]
    config = msgspec.structs.replace(config, servers=servers)
    config = with_proxy(
        config,
        tmp_path,
        max_in_flight=500,
        max_upstream_sockets=2,
        socket_idle_s=0.3,
        **SLOW,
    )
    before = udp_sockets_on(CLIENT_IP)
    async with proxy_alone(config) as (proxy, aaa), nas(config) as sender:
        aaa["A"].pool.set_stalled(aaa["A"].pool.workers)
        sent = 0
        for batch in range(11):  # 550 requests, in batches the socket buffers take
            for i in range(50):
                request = access_request(ident=(batch * 50 + i) % 256)
                sender.send(request.RequestPacket())
                sent += 1
            await until(lambda: proxy.counters.received == sent)  # noqa: B023
        await until(lambda: proxy.counters.forwarded == 500)
        # 500 in flight to A: two sockets of 256 ids, no more; the rest refused
        assert proxy.upstream_sockets() == 2 == udp_sockets_on(CLIENT_IP) - before
        assert proxy.in_flight == 500 and proxy.counters.dropped == {"overload": 50}
        aaa["A"].pool.set_stalled(0)
        await until(lambda: proxy.counters.answered == 500)
        # nothing in flight: the sockets go once idle for socket_idle_s
        await until(lambda: proxy.upstream_sockets() == 0)
        assert udp_sockets_on(CLIENT_IP) == before
        assert proxy.counters.sockets_opened == proxy.counters.sockets_closed == 2
        # and come back when needed
        sender.send(access_request(ident=7).RequestPacket())
        await until(lambda: proxy.counters.answered == 501)
        assert proxy.upstream_sockets() == 1


async def test_a_flood_of_bad_datagrams_writes_a_few_lines_and_counts_them_all(
    farm: FarmFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path)
    caplog.set_level(logging.WARNING, logger="services.agent.proxy")
    async with proxy_alone(config) as (proxy, _), nas(config) as sender:
        floods: list[bytes] = [
            b"\x01\x02",  # malformed
            access_request(signed=False).RequestPacket(),  # no-message-authenticator
            access_request(secret=b"guess").RequestPacket(),  # bad-message-authenticator
            b"\x04" + bytes(19),  # unsupported-code
        ]
        sent = 0
        for _ in range(25):
            for raw in floods:
                for _ in range(20):
                    sender.send(raw)
                    sent += 1
            await until(lambda: proxy.counters.received == sent)  # noqa: B023
        counters = proxy.counters
        assert sent == 2000 and counters.received == 2000
        assert counters.dropped == {
            "malformed": 500,
            "no-message-authenticator": 500,
            "bad-message-authenticator": 500,
            "unsupported-code": 500,
        }
        assert counters.settled() == counters.received and proxy.in_flight == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "services.agent.proxy"]
    dropped = [line for line in lines if "proxy dropped" in line]
    # one line per reason, and at shutdown the count of the rest
    assert len(dropped) == 8, dropped
    assert sum("... and 499 more like it in the last" in line for line in dropped) == 4
