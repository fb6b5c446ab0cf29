"""EAP conversations from a real supplicant (eapol_test, tests/support/eap.py) against FreeRADIUS
with PEAP and TTLS (tests/support/freeradius.py, ``eap=True``): straight, many at once, slowed
down round by round, and through the agent's RADIUS proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from services.runtime.config import ServerConfig
from tests.conftest import FarmFactory
from tests.support.eap import Method, Supplicant, converse, converse_many, start, station_mac
from tests.support.freeradius import CertificateAuthority, StartFreeRadius
from tests.support.proxying import NAS, PROXY_IP, proxying, with_proxy

ROUND_TRIPS: dict[Method, int] = {"PEAP": 9, "TTLS": 6}
"""Round trips of a conversation with FreeRADIUS(eap=True): TTLS's first answer is a Nak
to the PEAP the server offers first, then fewer rounds inside the tunnel than MSCHAPv2."""


@pytest.mark.parametrize("method", ["PEAP", "TTLS"])
async def test_a_conversation_succeeds_with_the_same_keys_on_both_sides(
    method: Method, freeradius: StartFreeRadius, tmp_path: Path
) -> None:
    server = await freeradius(eap=True)
    supplicant = Supplicant(method, anonymous_identity="anonymous", ca_cert=server.ca_file)
    result = await converse(server.auth_address, server.client_secret, supplicant, tmp_path)
    assert result.success and result.keys_match, result.tail()
    assert result.msk is not None and len(result.msk) == 64
    assert result.replies == ["Access-Challenge"] * (ROUND_TRIPS[method] - 1) + ["Access-Accept"]
    assert result.retransmissions == 0


async def test_a_wrong_password_fails_and_the_server_certificate_is_checked(
    freeradius: StartFreeRadius, tmp_path: Path
) -> None:
    server = await freeradius(eap=True)
    address, secret = server.auth_address, server.client_secret
    wrong = Supplicant("PEAP", password="looking-glass", ca_cert=server.ca_file)
    rejected = await converse(address, secret, wrong, tmp_path / "wrong")
    assert not rejected.success and rejected.outcome == "Access-Reject", rejected.tail()
    # the supplicant has its tunnel's keys, but a reject brings none from the server
    assert rejected.server_msk is None and not rejected.keys_match
    # a supplicant that trusts another CA drops the conversation at the server's certificate
    other = await asyncio.to_thread(CertificateAuthority.create, tmp_path / "other-ca")
    untrusted = Supplicant("TTLS", ca_cert=other.cert)
    refused = await converse(address, secret, untrusted, tmp_path / "untrusted", timeout_s=3)
    assert not refused.success and "Access-Accept" not in refused.replies, refused.tail()
    assert "CTRL-EVENT-EAP-TLS-CERT-ERROR" in refused.output, refused.tail()
    # one told to trust no CA takes any server certificate
    blind = await converse(address, secret, Supplicant("TTLS"), tmp_path / "blind")
    assert blind.success and blind.keys_match, blind.tail()


async def test_sixteen_conversations_at_once(freeradius: StartFreeRadius, tmp_path: Path) -> None:
    server = await freeradius(eap=True)
    methods: list[Method] = ["PEAP", "TTLS"] * 8
    supplicants = [
        Supplicant(method, ca_cert=server.ca_file, mac=station_mac(i))
        for i, method in enumerate(methods)
    ]
    results = await converse_many(server.auth_address, server.client_secret, supplicants, tmp_path)
    failed = [r.tail() for r in results if not (r.success and r.keys_match)]
    assert not failed, "\n\n".join(failed)
    assert [r.round_trips for r in results] == [ROUND_TRIPS[m] for m in methods]
    assert len({r.msk for r in results}) == 16


async def test_a_slow_backend_delays_every_round_of_a_conversation(
    freeradius: StartFreeRadius, tmp_path: Path
) -> None:
    server = await freeradius(eap=True, backend=True)
    server.slow_backend(1.0, 0.2)
    supplicant = Supplicant("PEAP", ca_cert=server.ca_file)
    async with await start(server.auth_address, server.client_secret, supplicant, tmp_path) as run:
        await run.until_round(3)
        assert run.rounds == 3  # the conversation waits on the fourth round now
        result = await run.result()
    assert result.success and result.keys_match, result.tail()
    gaps = [b - a for a, b in zip([0.0, *result.reply_at], result.reply_at, strict=False)]
    assert len(gaps) == ROUND_TRIPS["PEAP"] and min(gaps) >= 0.2, gaps


async def test_peap_and_ttls_through_the_agents_proxy_keep_their_keys(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    server = await freeradius(eap=True)
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    # the client's own secret is the upstream secret FreeRADIUS knows it by
    secret_file = config.path(config.clients[0].secret.file or "")
    secret_file.write_text(server.client_secret + "\n")
    servers = [msgspec.convert(server.entry("F"), ServerConfig), *config.servers]
    config = with_proxy(config, tmp_path, servers=servers, home="F", alternates=("B",))
    proxy = config.clients[0].proxy
    assert proxy is not None
    methods: list[Method] = ["PEAP", "TTLS", "PEAP", "TTLS"]
    supplicants = [
        Supplicant(method, ca_cert=server.ca_file, mac=station_mac(i))
        for i, method in enumerate(methods)
    ]
    async with proxying(config):
        results = await converse_many(
            (PROXY_IP, proxy.auth_port), NAS.decode(), supplicants, tmp_path / "eap"
        )
    for result in results:
        # eapol_test reads MS-MPPE-Recv-Key and -Send-Key under the NAS secret: the proxy
        # moved them from the upstream's secret to it
        assert result.success and result.keys_match, result.tail()
    assert [r.round_trips for r in results] == [ROUND_TRIPS[m] for m in methods]
