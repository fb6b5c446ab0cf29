"""What the proxy takes and what it keeps, alone: the NAS allowlist and its default, the NAS
devices that may send no Message-Authenticator, the BlastRADIUS checks of a request, the
replies kept for retransmissions, the settings' bounds, and the counters' accounting."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from pyrad import packet

from services.agent.proxy import (
    LOOPBACK,
    UPSTREAM_DROPS,
    VERDICTS_KEPT,
    NasFilter,
    ProxyCounters,
    RecentReplies,
    default_nas_addresses,
)
from services.radius.packet import Dropped, dictionary
from services.radius.reencode import decode_request, nas_reply, upstream_request, verify_reply
from services.runtime.config import ProxyConfig, Secret

NAS = b"nas-secret"
UP = b"upstream-secret"


def settings(**fields: object) -> ProxyConfig:
    return ProxyConfig(nas_secret=Secret(file="nas"), **fields)  # type: ignore[arg-type]


def request(
    *, signed: bool, proxy_state: bool = False, eap: bool = False, secret: bytes = NAS
) -> bytes:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=secret, dict=dictionary(), id=7)
    pkt["User-Name"] = "alice"
    if eap:
        pkt[79] = [b"\x02\x01\x00\x06\x01a"]  # EAP-Message, an EAP-Response/Identity
    else:
        pkt["User-Password"] = pkt.PwCrypt("wonderland")
    if proxy_state:
        pkt.AddAttribute("Proxy-State", b"hop")
    if signed:
        pkt.add_message_authenticator()
    raw: bytes = pkt.RequestPacket()
    return raw


# --- the NAS allowlist -----------------------------------------------------------------


def test_the_default_allowlist_is_the_client_the_proxy_and_loopback_on_loopback() -> None:
    nets = default_nas_addresses("127.0.2.1", "127.0.1.1")
    assert [str(n) for n in nets] == ["127.0.1.1/32", "127.0.2.1/32", "127.0.0.0/8", "::1/128"]
    # a proxy on a site address takes its NAS (the client) and its own host, nothing else
    nets = default_nas_addresses("10.0.5.1", "10.0.1.1")
    assert [str(n) for n in nets] == ["10.0.1.1/32", "10.0.5.1/32"]
    nas = NasFilter(nets)
    assert nas.allows("10.0.1.1") and nas.allows("10.0.5.1")
    assert not nas.allows("10.0.1.2") and not nas.allows("127.0.0.1")
    # listening on every address: a NAS on this host comes from loopback
    assert set(default_nas_addresses("0.0.0.0", "10.0.1.1")) == {
        ipaddress.ip_network("10.0.1.1/32"),
        *LOOPBACK,
    }


def test_the_allowlist_takes_addresses_and_cidrs_of_both_families() -> None:
    nas = NasFilter.of(
        settings(nas_addresses=["192.0.2.0/24", "2001:db8::/64", "198.51.100.7"]), "10.0.1.1"
    )
    assert nas.allows("192.0.2.200") and nas.allows("198.51.100.7")
    assert nas.allows("2001:db8::5") and nas.allows("::ffff:192.0.2.9")  # v4-mapped
    assert nas.allows("fe80::1%eth0") is False
    for outside in ("192.0.3.1", "198.51.100.8", "10.0.1.1", "2001:db9::1", "not-an-address", ""):
        assert not nas.allows(outside), outside


def test_only_listed_nas_devices_may_send_without_message_authenticator() -> None:
    nas = NasFilter.of(
        settings(nas_addresses=["10.0.0.0/16"], nas_without_message_authenticator=["10.0.9.0/24"]),
        "10.0.1.1",
    )
    assert not nas.requires_message_authenticator("10.0.9.3")
    assert nas.requires_message_authenticator("10.0.1.1")
    assert nas.requires_message_authenticator("garbage")
    assert NasFilter.of(settings(), "10.0.1.1").requires_message_authenticator("127.0.0.1")


def test_a_source_asked_again_gets_the_same_verdict_and_spoofed_sources_do_not_pile_up() -> None:
    nas = NasFilter.of(
        settings(nas_addresses=["10.0.0.0/16"], nas_without_message_authenticator=["10.0.9.0/24"]),
        "10.0.1.1",
    )
    for _ in range(2):
        assert nas.allows("10.0.9.3") and not nas.requires_message_authenticator("10.0.9.3")
        assert not nas.allows("10.1.0.1") and nas.requires_message_authenticator("10.1.0.1")
    for i in range(3 * VERDICTS_KEPT):
        nas.allows(f"10.2.{i // 256 % 256}.{i % 256}")
    assert len(nas._verdicts) <= VERDICTS_KEPT
    assert nas.allows("10.0.9.3") and not nas.allows("10.1.0.1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nas_addresses": ["10.0.0.300"]}, "nas_addresses: '10.0.0.300' is not an address"),
        ({"nas_addresses": []}, "nas_addresses is empty"),
        ({"nas_without_message_authenticator": ["nas-7"]}, "is not an address or CIDR"),
        ({"upstreams_without_message_authenticator": ["a b"]}, "must be 1-64 of letters"),
        ({"max_in_flight": 0}, "at least 1"),
        ({"max_upstream_sockets": 0}, "at least 1"),
        ({"max_in_flight": 512, "max_upstream_sockets": 2}, "leaves no room for max_in_flight"),
        ({"socket_idle_s": 0}, "socket_idle_s must be positive"),
    ],
)
def test_bad_settings_fail_with_a_clear_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**fields)


def test_the_defaults_are_hardened_and_a_config_file_sets_them(tmp_path: Path) -> None:
    default = settings()
    assert default.nas_addresses is None
    assert default.nas_without_message_authenticator == []
    assert default.upstreams_without_message_authenticator == []
    assert (default.max_in_flight, default.max_upstream_sockets) == (4000, 16)
    decoded = msgspec.toml.decode(
        b'nas_secret = { file = "nas" }\n'
        b'nas_addresses = ["10.0.1.0/24"]\n'
        b'nas_without_message_authenticator = ["10.0.1.7"]\n'
        b'upstreams_without_message_authenticator = ["F"]\n'
        b"max_in_flight = 100\nmax_upstream_sockets = 1\nsocket_idle_s = 5.0\n",
        type=ProxyConfig,
    )
    assert decoded.nas_without_message_authenticator == ["10.0.1.7"]
    assert (decoded.max_in_flight, decoded.max_upstream_sockets) == (100, 1)


# --- what a request must carry (FreeRADIUS's require_message_authenticator, limit_proxy_state)


def test_an_access_request_needs_a_message_authenticator_by_default() -> None:
    with pytest.raises(Dropped, match="no-message-authenticator"):
        decode_request(request(signed=False), NAS, accounting=False)
    assert decode_request(request(signed=True, proxy_state=True), NAS, accounting=False)
    with pytest.raises(Dropped, match="bad-message-authenticator"):
        decode_request(request(signed=True, secret=b"other"), NAS, accounting=False)


def test_a_nas_let_off_still_may_not_send_proxy_state_or_eap_unsigned() -> None:
    lenient = {"accounting": False, "require_message_authenticator": False}
    assert not decode_request(request(signed=False), NAS, **lenient).message_authenticator
    with pytest.raises(Dropped, match="proxy-state-unsigned"):
        decode_request(request(signed=False, proxy_state=True), NAS, **lenient)
    with pytest.raises(Dropped, match="no-message-authenticator"):  # RFC 3579
        decode_request(request(signed=False, eap=True), NAS, **lenient)
    assert decode_request(request(signed=True, proxy_state=True), NAS, **lenient)


def test_accounting_needs_no_message_authenticator_as_in_freeradius() -> None:
    pkt = packet.AcctPacket(secret=NAS, dict=dictionary(), id=3)
    pkt["Acct-Status-Type"] = 1
    pkt["User-Name"] = "alice"
    pkt.AddAttribute("Proxy-State", b"hop")
    assert decode_request(pkt.RequestPacket(), NAS, accounting=True)


@pytest.mark.parametrize("code", [packet.AccessAccept, packet.AccessReject, packet.AccessChallenge])
def test_every_answer_to_an_access_request_is_signed_first(code: int) -> None:
    raw = request(signed=True, proxy_state=True)
    nas_side = decode_request(raw, NAS, accounting=False)
    sent = upstream_request(nas_side, UP).seal(1)
    at_server = packet.AuthPacket(packet=sent.raw, secret=UP, dict=dictionary())
    answer = at_server.CreateReply(message_authenticator=False)
    answer.code = code
    answer["Reply-Message"] = "hello"
    wire = answer.ReplyPacket()
    reply = verify_reply(sent, wire, require_message_authenticator=False)
    back = nas_reply(nas_side, sent, reply)
    assert back[0] == code and back[20:22] == bytes([80, 18])
    original = packet.AuthPacket(packet=raw, secret=NAS)
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)


# --- what the proxy keeps ----------------------------------------------------------------


def key(i: int) -> tuple[bool, tuple[str, int], int, bytes]:
    return (False, ("127.0.0.1", 1000 + i), i % 256, i.to_bytes(16, "big"))


def test_replies_kept_for_retransmissions_are_bounded_by_count_octets_and_age() -> None:
    recent = RecentReplies(ttl_s=5.0, max_entries=100, max_octets=10_000)
    for i in range(1000):
        recent.put(key(i), bytes(50), now=0.0)
    assert len(recent) == 100 and recent.octets == 5000
    assert recent.get(key(999), 0.0) == bytes(50) and recent.get(key(0), 0.0) is None
    for i in range(1000, 1100):
        recent.put(key(i), bytes(4000), now=1.0)
    assert recent.octets <= 10_000 and len(recent) == 2
    assert recent.get(key(1099), 5.9) is not None
    assert recent.get(key(1099), 6.0) is None and len(recent) == 0 and recent.octets == 0
    recent.put(key(1), b"a", 0.0)
    recent.put(key(1), b"bb", 0.0)  # the same request again: replaced, not added
    assert (len(recent), recent.octets) == (1, 2)


def test_every_datagram_of_a_nas_settles_once() -> None:
    counters = ProxyCounters(received=10, answered=3, resent=1, status=1)
    counters.dropped.update(Counter({"unknown-nas": 2, "overload": 3, "upstream-stray": 7}))
    assert "upstream-stray" in UPSTREAM_DROPS
    assert counters.settled() == 10  # the upstream's stray replies are not the NAS's datagrams
