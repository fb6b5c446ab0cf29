"""BlastRADIUS (CVE-2024-3596) through the agent's proxy with FreeRADIUS's own tools and server:
radclient without Message-Authenticator is refused and with it accepted; every answer to the
NAS is signed first; and FreeRADIUS 3.2.1, which signs no Access-Accept unless told to, is
refused as an upstream until it signs its replies or is listed as unable to."""

from __future__ import annotations

from pathlib import Path

import msgspec
from pyrad import packet

from services.radius.packet import dictionary
from services.runtime.config import Config, ServerConfig
from tests.conftest import FarmFactory
from tests.freeradius.test_proxy_radclient import CREDENTIALS, acct_target, radclient
from tests.support.freeradius import FreeRadius, StartFreeRadius
from tests.support.proxying import (
    NAS,
    auth_target,
    nas,
    proxy_alone,
    proxying,
    reference,
    requests_seen,
    with_proxy,
)
from tests.support.scraping import metrics_urls, scrape

UNSIGNED = "User-Name = alice, User-Password = wonderland\n"
assert "Message-Authenticator" in CREDENTIALS


def signed_request(ident: int) -> packet.AuthPacket:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=ident)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt("wonderland")
    pkt.add_message_authenticator()
    return pkt


def signed_first(request: packet.Packet, raw: bytes) -> bool:
    reply = request.CreateReply(packet=raw)
    return bool(request.VerifyReply(reply, raw, enforce_ma=True)) and raw[20:22] == b"\x50\x12"


def behind_freeradius(config: Config, tmp_path: Path, fr: FreeRadius, **settings: object) -> Config:
    """nas-01 proxying to FreeRADIUS ``F`` alone, under the secret FreeRADIUS knows it by."""
    config.path(config.clients[0].secret.file or "").write_text(fr.client_secret + "\n")
    entry = msgspec.convert(fr.entry("F", acct_port=fr.acct_port), ServerConfig)
    return with_proxy(
        config,
        tmp_path,
        acct=True,
        servers=[entry, *config.servers],
        home="F",
        alternates=(),
        **settings,
    )


async def test_radclient_without_message_authenticator_is_refused_with_it_accepted(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path).with_metrics_port("agent", 0)
    with metrics_urls() as urls:
        async with reference(config, "A"), proxying(config):
            refused = await radclient(auth_target(config), count=1, attributes=UNSIGNED)
            assert (refused.accepted, refused.lost) == (0, 1), refused.output
            accepted = await radclient(auth_target(config), count=1)
            assert (accepted.code, accepted.accepted) == (0, 1), accepted.output
            assert await requests_seen(config, "A") == 1
            samples = await scrape(urls[0])
    drops = {
        dict(labels)["outcome"]: count
        for (name, labels), count in samples.items()
        if name == "aaa_failover_agent_packets_total" and dict(labels)["receiver"] == "proxy"
    }
    assert drops == {"no-message-authenticator": 1}


async def test_freeradius_3_2_1_replies_without_message_authenticator_are_refused(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    fr = await freeradius()  # 3.2.1 as installed: its Access-Accept carries no attributes
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    config = behind_freeradius(config, tmp_path, fr)
    async with proxy_alone(config, servers=()) as (proxy, _):
        outcome = await radclient(auth_target(config), count=1)
        assert (outcome.accepted, outcome.lost) == (0, 1), outcome.output
        counters = proxy.counters
        # FreeRADIUS's answer came, was refused and ignored; no valid one came in the window
        assert counters.dropped == {"upstream-no-message-authenticator": 1, "no-answer": 1}
        assert counters.answered == 0
        # as FreeRADIUS ignores such a reply from a home server requiring one, nothing valid
        # came from F in its response window: it timed out there and F turned zombie (its
        # probes' answers may have brought it back since)
        reports, changes = proxy.tallies.drain(proxy.pool.states())
        assert [(r.server, r.answers, r.timeouts) for r in reports] == [("F", 0, 1)]
        assert (changes[0].server, changes[0].after) == ("F", "zombie")
        # accounting is protected by its Request Authenticator: FreeRADIUS asks no more of it
        acct = await radclient(
            acct_target(config),
            count=1,
            command="acct",
            attributes='Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = "b-1"\n',
        )
        assert (acct.code, acct.accepted) == (0, 1), acct.output


async def test_an_upstream_listed_as_unable_to_sign_is_taken_and_the_nas_still_gets_signed(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    fr = await freeradius()
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    config = behind_freeradius(config, tmp_path, fr, upstreams_without_message_authenticator=["F"])
    async with proxy_alone(config, servers=()) as (proxy, _), nas(config) as sender:
        outcome = await radclient(auth_target(config), count=10, parallel=5)
        assert (outcome.code, outcome.accepted) == (0, 10), outcome.output
        request = signed_request(ident=1)
        sender.send(request.RequestPacket())
        answer = await sender.reply()
        assert answer[0] == packet.AccessAccept and signed_first(request, answer)
        assert proxy.counters.dropped == {}


async def test_freeradius_signing_its_replies_is_taken_by_default(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    fr = await freeradius(sign_replies=True)
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    config = behind_freeradius(config, tmp_path, fr)
    async with proxy_alone(config, servers=()) as (proxy, _), nas(config) as sender:
        outcome = await radclient(auth_target(config), count=20, parallel=5)
        assert (outcome.code, outcome.accepted) == (0, 20), outcome.output
        wrong = await radclient(
            auth_target(config),
            count=1,
            attributes="User-Name = alice, User-Password = no, Message-Authenticator = 0x00\n",
        )
        assert "Access-Reject" in wrong.output or wrong.code != 0, wrong.output
        for ident, code in ((1, packet.AccessAccept), (2, packet.AccessReject)):
            request = signed_request(ident)
            if code == packet.AccessReject:
                request["User-Password"] = request.PwCrypt("not-it")
            sender.send(request.RequestPacket())
            answer = await sender.reply()
            assert answer[0] == code and signed_first(request, answer)
        assert proxy.counters.dropped == {}
        assert proxy.counters.answered == 23
