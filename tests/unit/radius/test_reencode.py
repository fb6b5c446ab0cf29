"""The agent's proxy packets alone: RADIUS requests and replies re-encoded from one secret to
another, and what cannot be trusted dropped with a reason."""

from __future__ import annotations

from typing import Any

import pytest
from pyrad import packet

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
from tests.support.proxying import NAS, nas_access_request

UP = b"proxy-to-server-secret"


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
    # from a NAS that may send none (nas_without_message_authenticator)
    request = decode_request(
        pkt.RequestPacket(), NAS, accounting=False, require_message_authenticator=False
    )
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


def test_a_reject_without_message_authenticator_goes_to_the_nas_signed_first() -> None:
    # an unsigned request, from a NAS that may send one without (no Proxy-State then)
    original = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=9)
    original["User-Name"] = "alice"
    original["User-Password"] = original.PwCrypt("wonderland")
    request = decode_request(
        original.RequestPacket(), NAS, accounting=False, require_message_authenticator=False
    )
    sent = upstream_request(request, UP)
    sent.id = 3
    at_server = packet.AuthPacket(packet=sent.RequestPacket(), secret=UP, dict=dictionary())
    answer = at_server.CreateReply(message_authenticator=False)
    answer.code = packet.AccessReject
    answer["Reply-Message"] = "no"
    wire = answer.ReplyPacket()
    back = nas_reply(request, sent, sent.CreateReply(packet=wire))
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert got.code == packet.AccessReject and got.message_authenticator
    assert back[20:22] == bytes([80, 18])  # Message-Authenticator, the first attribute


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
