"""The agent's proxy packets alone: RADIUS requests and replies re-encoded from one secret to
another at the byte level, each checked by pyrad decoding what the proxy wrote (the upstream
under its secret, the NAS under its own), and what cannot be trusted dropped with a reason."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet

from services.radius.packet import Dropped, dictionary, status_request
from services.radius.reencode import (
    Message,
    Sent,
    decode_request,
    hide_password,
    hmac_md5,
    nas_reply,
    outgoing,
    random_authenticator,
    resalt,
    reveal_password,
    status_answer,
    upstream_request,
    verify_reply,
)
from tests.support.proxying import NAS, nas_access_request

UP = b"proxy-to-server-secret"
MPPE_SEND, MPPE_RECV = (311, 16), (311, 17)


def relayed(raw: bytes, *, accounting: bool = False, ident: int = 9) -> tuple[Message, Sent]:
    """``raw`` from the NAS, decoded under NAS, and its copy as sent upstream under UP."""
    request = decode_request(raw, NAS, accounting=accounting, require_message_authenticator=False)
    return request, upstream_request(request, UP).seal(ident)


def at_upstream(sent: Sent) -> packet.Packet:
    """What the upstream decodes of ``sent``, under its own secret."""
    kind = packet.AcctPacket if sent.code == packet.AccountingRequest else packet.AuthPacket
    seen: packet.Packet = kind(packet=sent.raw, secret=UP, dict=dictionary())
    return seen


def raw_values(pkt: packet.Packet, key: Any) -> list[bytes]:
    values: list[bytes] = OrderedDict.get(pkt, key, [])
    return values


def encode(
    code: int,
    attributes: list[tuple[int, bytes]],
    *,
    secret: bytes = NAS,
    ident: int = 7,
    authenticator: bytes = bytes(range(16)),
    sign: bool = True,
) -> bytes:
    """A request built by hand, its attributes in exactly this order (pyrad groups them by
    type): Message-Authenticator last when ``sign``, and for accounting the Request
    Authenticator computed."""
    body = b"".join(bytes((t, len(v) + 2)) + v for t, v in attributes)
    if sign:
        body += bytes((80, 18)) + bytes(16)
    head = struct.pack("!BBH", code, ident, 20 + len(body))
    accounting = code == packet.AccountingRequest
    vector = bytes(16) if accounting else authenticator
    if sign:
        body = body[:-16] + hmac.digest(secret, head + vector + body, "md5")
    if accounting:
        authenticator = hashlib.md5(head + bytes(16) + body + secret).digest()
    return head + authenticator + body


def resigned(reply: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """``reply`` with its Response Authenticator computed again (after a change to it)."""
    digest = hashlib.md5(reply[:4] + request_authenticator + reply[20:] + secret).digest()
    return reply[:4] + digest + reply[20:]


# --- the ciphers -------------------------------------------------------------------------


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


# --- a request on its way up -------------------------------------------------------------


def test_an_access_request_is_re_encoded_for_the_upstream() -> None:
    original = nas_access_request()
    request = decode_request(original.RequestPacket(), NAS, accounting=False)
    assert (request.code, request.id, request.authenticator) == (1, 42, original.authenticator)
    assert request.message_authenticator and request.values(33) == [b"first", b"second"]
    sent = upstream_request(request, UP).seal(9)
    seen = at_upstream(sent)
    assert seen.id == 9 and sent.raw[20:22] == bytes([80, 18])  # signed, first
    assert seen.message_authenticator and seen.verify_message_authenticator()
    assert seen.authenticator != request.authenticator
    assert seen.PwDecrypt(seen["User-Password"][0]) == "a password longer than sixteen octets"
    assert seen["User-Name"] == ["alice"] and seen["NAS-Identifier"] == ["nas-7"]
    assert seen["Proxy-State"] == [b"first", b"second"]
    assert seen[(9, 1)] == [b"cisco-avpair=shell:priv-lvl=15"]
    # nothing readable under the NAS's secret any more
    assert not packet.AuthPacket(
        packet=sent.raw, secret=NAS, dict=dictionary()
    ).verify_message_authenticator()
    # each copy has its own Request Authenticator
    assert upstream_request(request, UP).seal(9).authenticator != sent.authenticator


def test_attributes_go_up_in_their_order_and_byte_for_byte() -> None:
    attributes = [(33, b"one"), (1, b"alice"), (33, b"two"), (26, b"\x00\x00\x00\x09\x01\x03x")]
    raw = encode(packet.AccessRequest, attributes)
    assert packet.AuthPacket(packet=raw, secret=NAS).verify_message_authenticator()
    _, sent = relayed(raw)
    copied = b"".join(bytes((t, len(v) + 2)) + v for t, v in attributes)
    assert sent.raw[20:22] == bytes([80, 18]) and sent.raw[38:] == copied
    assert at_upstream(sent).verify_message_authenticator()


def test_chap_keeps_its_challenge_and_an_unsigned_request_is_signed_upstream() -> None:
    pkt = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=1)
    pkt["User-Name"] = "alice"
    pkt.authenticator = bytes(range(16))
    pkt[3] = [b"\x07" + bytes(16)]  # CHAP-Password, challenged by the authenticator
    # from a NAS that may send none (nas_without_message_authenticator)
    request, sent = relayed(pkt.RequestPacket())
    assert not request.message_authenticator
    seen = at_upstream(sent)
    assert seen[60] == [bytes(range(16))]  # CHAP-Challenge
    assert seen[3] == [b"\x07" + bytes(16)]
    assert seen.verify_message_authenticator()
    # a challenge the NAS sent goes as it came, and no second one
    pkt[60] = [b"challenge of the NAS"]
    _, sent = relayed(pkt.RequestPacket())
    assert at_upstream(sent)[60] == [b"challenge of the NAS"]


def test_accounting_is_verified_and_re_encoded() -> None:
    pkt = packet.AcctPacket(secret=NAS, dict=dictionary(), id=5)
    pkt["Acct-Status-Type"] = 1
    pkt["Acct-Session-Id"] = "s-1"
    pkt["User-Name"] = "alice"
    raw = pkt.RequestPacket()
    request, sent = relayed(raw, accounting=True, ident=6)
    at_server = at_upstream(sent)
    assert at_server.VerifyAcctRequest()
    assert at_server["Acct-Session-Id"] == ["s-1"] and not at_server.message_authenticator
    wire = at_server.CreateReply().ReplyPacket()
    back = nas_reply(request, sent, verify_reply(sent, wire, require_message_authenticator=True))
    got = pkt.CreateReply(packet=back)
    assert pkt.VerifyReply(got, back) and got.code == packet.AccountingResponse
    assert not got.message_authenticator


def test_signed_accounting_is_signed_upstream_and_back() -> None:
    pkt = packet.AcctPacket(secret=NAS, dict=dictionary(), id=5)
    pkt["Acct-Status-Type"] = 2
    pkt["User-Name"] = "alice"
    pkt.add_message_authenticator()
    raw = pkt.RequestPacket()
    request, sent = relayed(raw, accounting=True, ident=6)
    at_server = at_upstream(sent)
    assert at_server.VerifyAcctRequest() and at_server.verify_message_authenticator()
    answer = at_server.CreateReply()
    answer.message_authenticator = True
    wire = answer.ReplyPacket()
    reply = verify_reply(sent, wire, require_message_authenticator=True)
    assert reply.message_authenticator
    back = nas_reply(request, sent, reply)
    got = pkt.CreateReply(packet=back)
    assert pkt.VerifyReply(got, back) and got.message_authenticator


# --- a reply on its way back -------------------------------------------------------------


def test_the_upstreams_reply_is_re_encoded_for_the_nas() -> None:
    original = nas_access_request()
    request = decode_request(original.RequestPacket(), NAS, accounting=False)
    sent = upstream_request(request, UP).seal(200)
    at_server = at_upstream(sent)
    answer = at_server.CreateReply()
    answer["Reply-Message"] = "welcome"
    answer.request_authenticator = at_server.authenticator
    answer[69] = [b"\x01" + answer.SaltCrypt(b"tunnel secret")]  # Tunnel-Password, tag 1
    answer[MPPE_SEND] = [answer.SaltCrypt(b"s" * 32)]
    answer[MPPE_RECV] = [answer.SaltCrypt(b"r" * 32)]
    answer["State"] = b"conversation-1"
    wire = answer.ReplyPacket()
    reply = verify_reply(sent, wire, require_message_authenticator=True)
    assert reply.state == b"conversation-1" and reply.code == packet.AccessAccept

    back = nas_reply(request, sent, reply)
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert got.code == packet.AccessAccept and got.id == 42
    assert got["Reply-Message"] == ["welcome"] and got["State"] == [b"conversation-1"]
    assert got["Proxy-State"] == [b"first", b"second"]
    opener = packet.Packet(code=packet.AccessAccept, secret=NAS, dict=dictionary())
    opener.request_authenticator = original.authenticator
    assert got[69][0][:1] == b"\x01"
    assert opener.SaltDecrypt(got[69][0][1:]) == b"tunnel secret"
    assert opener.SaltDecrypt(raw_values(got, MPPE_SEND)[0]) == b"s" * 32
    assert opener.SaltDecrypt(raw_values(got, MPPE_RECV)[0]) == b"r" * 32


def test_a_reject_without_message_authenticator_goes_to_the_nas_signed_first() -> None:
    # an unsigned request, from a NAS that may send one without (no Proxy-State then)
    original = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=9)
    original["User-Name"] = "alice"
    original["User-Password"] = original.PwCrypt("wonderland")
    request, sent = relayed(original.RequestPacket(), ident=3)
    at_server = at_upstream(sent)
    answer = at_server.CreateReply(message_authenticator=False)
    answer.code = packet.AccessReject
    answer["Reply-Message"] = "no"
    wire = answer.ReplyPacket()
    reply = verify_reply(sent, wire, require_message_authenticator=False)
    back = nas_reply(request, sent, reply)
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert got.code == packet.AccessReject and got.message_authenticator
    assert back[20:22] == bytes([80, 18])  # Message-Authenticator, the first attribute


def test_the_nas_gets_its_proxy_state_back_when_the_upstream_echoes_none() -> None:
    original = nas_access_request()
    request = decode_request(original.RequestPacket(), NAS, accounting=False)
    sent = upstream_request(request, UP).seal(4)
    at_server = at_upstream(sent)
    answer = packet.AuthPacket(
        code=packet.AccessAccept, id=4, secret=UP, authenticator=at_server.authenticator
    )
    answer.message_authenticator = True
    wire = answer.ReplyPacket()
    back = nas_reply(request, sent, verify_reply(sent, wire, require_message_authenticator=True))
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert got["Proxy-State"] == [b"first", b"second"]


def test_replies_that_cannot_be_trusted_are_refused_with_a_reason() -> None:
    _, sent = relayed(nas_access_request().RequestPacket(), ident=11)
    at_server = at_upstream(sent)

    def answer(
        *, sign: bool = True, code: int = packet.AccessAccept, secret: bytes = UP, **attrs: Any
    ) -> bytes:
        reply = at_server.CreateReply(message_authenticator=sign)
        reply.code = code
        reply.secret = secret
        for key, value in attrs.items():
            reply[key.replace("_", "-")] = value
        wire: bytes = reply.ReplyPacket()
        return wire

    good = answer(Reply_Message="ok")
    assert verify_reply(sent, good, require_message_authenticator=True).code == 2
    assert verify_reply(sent, good + b"padding", require_message_authenticator=True).raw == good
    changed = good[:-1] + bytes([good[-1] ^ 1])  # Reply-Message's last octet
    # a wrong Message-Authenticator (the first attribute) under a right Response Authenticator
    bad_ma = resigned(good[:22] + bytes([good[22] ^ 1]) + good[23:], sent.authenticator, UP)
    longer = good + b"\x01\x01"  # an attribute of length 1, under a right authenticator
    longer = resigned(
        longer[:2] + struct.pack("!H", len(longer)) + longer[4:], sent.authenticator, UP
    )
    stray_state = at_server.CreateReply()
    OrderedDict.__setitem__(stray_state, 33, [b"first", b"not sent"])
    cases = [
        (good[:19], "malformed"),
        (good[:-1], "malformed"),  # Length beyond the datagram
        (resigned(good[:2] + b"\x00\x13" + good[4:], sent.authenticator, UP), "malformed"),
        (longer, "malformed"),
        (bytes([good[0], 12]) + good[2:], "invalid"),  # another id
        (changed, "invalid"),
        (bad_ma, "invalid"),
        (answer(secret=b"guessed"), "invalid"),
        (answer(code=packet.AccountingResponse), "invalid"),
        (answer(code=packet.AccessRequest), "invalid"),
        (answer(sign=False), "no-message-authenticator"),
        (stray_state.ReplyPacket(), "invalid"),  # Proxy-State that was not sent
    ]
    for data, reason in cases:
        with pytest.raises(Dropped) as caught:
            verify_reply(sent, data, require_message_authenticator=True)
        assert caught.value.reason == reason, (data, reason, caught.value)
    # an upstream let off signing (upstreams_without_message_authenticator) may send none
    unsigned = answer(sign=False)
    assert not verify_reply(
        sent, unsigned, require_message_authenticator=False
    ).message_authenticator


def test_a_reply_echoing_fewer_proxy_states_than_sent_is_taken() -> None:
    _, sent = relayed(nas_access_request().RequestPacket(), ident=11)
    reply = at_upstream(sent).CreateReply()
    OrderedDict.__setitem__(reply, 33, [b"first"])
    assert verify_reply(sent, reply.ReplyPacket(), require_message_authenticator=True)


# --- the proxy's own answers, and its probes -----------------------------------------------


@pytest.mark.parametrize("accounting", [False, True])
def test_status_server_is_answered_by_the_proxy(accounting: bool) -> None:
    kind = packet.AcctPacket if accounting else packet.AuthPacket
    probe = kind(code=packet.StatusServer, secret=NAS, dict=dictionary(), id=8)
    probe.add_message_authenticator()
    raw = probe.RequestPacket()
    answer = status_answer(decode_request(raw, NAS, accounting=accounting), accounting=accounting)
    reply = probe.CreateReply(packet=answer)
    assert probe.VerifyReply(reply, answer, enforce_ma=True)
    assert reply.message_authenticator and answer[20:22] == bytes([80, 18])
    code = packet.AccountingResponse if accounting else packet.AccessAccept
    assert reply.code == code


def test_a_probe_goes_out_with_the_sockets_id_and_its_answer_is_verified() -> None:
    probe = outgoing(status_request(UP, "None").RequestPacket(), UP)
    sent = probe.seal(77)
    seen = packet.AuthPacket(packet=sent.raw, secret=UP, dict=dictionary())
    assert seen.id == 77 and seen.code == packet.StatusServer
    assert seen.verify_message_authenticator()
    # FreeRADIUS 3.2.1 answers on its auth port with an unsigned Access-Reject: any answer
    reject = seen.CreateReply(message_authenticator=False)
    reject.code = packet.AccessReject
    assert verify_reply(sent, reject.ReplyPacket(), require_message_authenticator=True)
    accept = seen.CreateReply().ReplyPacket()
    assert verify_reply(sent, accept, require_message_authenticator=True).message_authenticator


# --- what a NAS may not send -------------------------------------------------------------


def test_requests_that_cannot_be_trusted_are_dropped_with_a_reason() -> None:
    signed = nas_access_request().RequestPacket()
    acct = packet.AcctPacket(secret=NAS, dict=dictionary(), id=5)
    acct["User-Name"] = "alice"
    acct_raw = acct.RequestPacket()
    status = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary(), id=8)
    access = packet.AccessRequest
    two_ma = encode(access, [(1, b"alice"), (80, bytes(16))])
    cases = [
        (b"\x01\x02", False, "malformed"),
        (signed[:25], False, "malformed"),  # cut short of its Length
        (signed[:2] + b"\x00\x13" + signed[4:], False, "malformed"),  # Length under 20
        (signed[:2] + struct.pack("!H", len(signed) + 1) + signed[4:] + b"\0", False, "malformed"),
        (encode(access, [(1, b"x" * 253)] * 17), False, "malformed"),  # over 4096 octets
        (bytes([1, 7, 0, 21]) + bytes(16) + b"\x01", False, "malformed"),  # a header cut short
        (encode(access, [(1, b"alice")])[:20] + b"\x01\x00" + bytes(23), False, "malformed"),
        (encode(access, [(1, b"alice")])[:20] + b"\x01\xff" + bytes(23), False, "malformed"),
        (two_ma, False, "malformed"),
        (encode(access, [(80, bytes(10))], sign=False), False, "malformed"),
        (encode(access, [(2, b"12345")]), False, "malformed"),  # a User-Password of 5 octets
        (encode(access, [(69, b"\x01\x80\x01" + bytes(15))]), False, "malformed"),
        (encode(access, [(26, b"\x00\x00\x01\x37\x10\x05abc")]), False, "malformed"),
        (signed, True, "unsupported-code"),  # an Access-Request on the accounting port
        (acct_raw, False, "unsupported-code"),
        (bytes([2]) + signed[1:], False, "unsupported-code"),  # an Access-Accept
        (nas_access_request(b"wrong").RequestPacket(), False, "bad-message-authenticator"),
        (signed[:-1] + bytes([signed[-1] ^ 1]), False, "bad-message-authenticator"),
        (acct_raw[:-1] + bytes([acct_raw[-1] ^ 1]), True, "bad-authenticator"),
        (status.RequestPacket(), False, "no-message-authenticator"),
        (encode(access, [(1, b"alice")], sign=False), False, "no-message-authenticator"),
    ]
    for data, accounting, reason in cases:
        with pytest.raises(Dropped) as caught:
            decode_request(data, NAS, accounting=accounting)
        assert caught.value.reason == reason, (data, reason, caught.value)


def test_padding_after_the_length_is_ignored() -> None:
    signed = nas_access_request().RequestPacket()
    request = decode_request(signed + bytes(30), NAS, accounting=False)
    assert request.raw == signed


def test_a_nas_let_off_signing_may_send_neither_eap_nor_proxy_state_unsigned() -> None:
    lenient = {"accounting": False, "require_message_authenticator": False}
    access = packet.AccessRequest
    assert decode_request(encode(access, [(1, b"a")], sign=False), NAS, **lenient)
    with pytest.raises(Dropped, match="no-message-authenticator"):
        decode_request(encode(access, [(79, b"\x02\x01\x00\x05\x01")], sign=False), NAS, **lenient)
    with pytest.raises(Dropped, match="proxy-state-unsigned"):
        decode_request(encode(access, [(33, b"hop")], sign=False), NAS, **lenient)


# --- properties: what the NAS and the upstream decode, with pyrad ---------------------------

ORDINARY = [1, 4, 5, 6, 24, 25, 30, 31, 32, 33, 44, 61, 79, 87, 100, 200, 255]
"""Attribute types the proxy copies as they are (no hidden value, not Message-Authenticator)."""

ordinary = st.lists(st.tuples(st.sampled_from(ORDINARY), st.binary(max_size=60)), max_size=10)
reply_ordinary = ordinary.map(lambda found: [(t, v) for t, v in found if t != 33])
"""The same in a reply: an upstream echoes the request's Proxy-State and adds none."""
secret_text = st.binary(min_size=1, max_size=100)
passwords = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=32,
)
"""At most 128 octets in UTF-8, and none of them NUL (the padding pyrad strips)."""


@st.composite
def salted(draw: st.DrawFn) -> dict[Any, bytes]:
    """Plaintexts of salt-encrypted attributes, by pyrad key."""
    found = {}
    for key in (69, MPPE_SEND, MPPE_RECV):
        if draw(st.booleans()):
            found[key] = draw(secret_text)
    return found


def add(pkt: packet.Packet, attributes: list[tuple[int, bytes]], hidden: dict[Any, bytes]) -> None:
    for code, value in attributes:
        OrderedDict.setdefault(pkt, code, []).append(value)
    for key, plain in hidden.items():
        sealed = pkt.SaltCrypt(plain)
        OrderedDict.__setitem__(pkt, key, [b"\x05" + sealed if key == 69 else sealed])


def opened(pkt: packet.Packet, key: Any, vector: bytes) -> bytes:
    value = raw_values(pkt, key)[0]
    opener = packet.Packet(code=packet.AccessAccept, secret=pkt.secret, dict=dictionary())
    opener.request_authenticator = vector
    if key == 69:
        assert value[:1] == b"\x05"
        value = value[1:]
    plain: bytes = opener.SaltDecrypt(value)
    return plain


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attributes=ordinary,
    password=st.none() | passwords,
    hidden=salted(),
    reply_attributes=reply_ordinary,
    reply_hidden=salted(),
    code=st.sampled_from([packet.AccessAccept, packet.AccessReject, packet.AccessChallenge]),
    authenticator=st.binary(min_size=16, max_size=16),
    ident=st.integers(0, 255),
)
def test_an_access_request_and_its_reply_decode_the_same_at_each_end(
    attributes: list[tuple[int, bytes]],
    password: str | None,
    hidden: dict[Any, bytes],
    reply_attributes: list[tuple[int, bytes]],
    reply_hidden: dict[Any, bytes],
    code: int,
    authenticator: bytes,
    ident: int,
) -> None:
    original = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary(), id=ident)
    original.authenticator = authenticator
    add(original, attributes, hidden)
    if password is not None:
        original["User-Password"] = original.PwCrypt(password)
    original.add_message_authenticator()
    raw = original.RequestPacket()

    request, sent = relayed(raw, ident=(ident + 1) % 256)
    seen = at_upstream(sent)
    assert seen.verify_message_authenticator() and sent.raw[20:22] == bytes([80, 18])
    for key, values in OrderedDict.items(original):
        if key not in (2, 80, *hidden):
            assert raw_values(seen, key) == values, key
    if password is not None:
        assert seen.PwDecrypt(seen["User-Password"][0]) == password
    for key, plain in hidden.items():
        assert opened(seen, key, seen.authenticator) == plain

    answer = seen.CreateReply()
    answer.code = code
    answer.request_authenticator = seen.authenticator
    add(answer, reply_attributes, reply_hidden)
    wire = answer.ReplyPacket()
    reply = verify_reply(sent, wire, require_message_authenticator=True)
    back = nas_reply(request, sent, reply)
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back, enforce_ma=True)
    assert back[20:22] == bytes([80, 18]) and got.code == code and got.id == ident
    for key, values in OrderedDict.items(answer):
        if key not in (80, *reply_hidden):
            assert raw_values(got, key) == values, key
    for key, plain in reply_hidden.items():
        assert opened(got, key, original.authenticator) == plain


@settings(max_examples=100, deadline=None)
@given(
    attributes=ordinary,
    hidden=salted(),
    sign=st.booleans(),
    reply_attributes=reply_ordinary,
    ident=st.integers(0, 255),
)
def test_accounting_and_its_reply_decode_the_same_at_each_end(
    attributes: list[tuple[int, bytes]],
    hidden: dict[Any, bytes],
    sign: bool,
    reply_attributes: list[tuple[int, bytes]],
    ident: int,
) -> None:
    original = packet.AcctPacket(secret=NAS, dict=dictionary(), id=ident)
    original["Acct-Status-Type"] = 1
    add(original, attributes, hidden)
    if sign:
        original.add_message_authenticator()
    raw = original.RequestPacket()

    request, sent = relayed(raw, accounting=True, ident=ident ^ 0xFF)
    seen = at_upstream(sent)
    assert seen.VerifyAcctRequest()
    assert bool(seen.message_authenticator) == sign
    if sign:
        assert seen.verify_message_authenticator()
    for key, values in OrderedDict.items(original):
        if key not in (80, *hidden):
            assert raw_values(seen, key) == values, key
    for key, plain in hidden.items():
        assert opened(seen, key, bytes(16)) == plain

    answer = seen.CreateReply()
    answer.message_authenticator = sign
    add(answer, reply_attributes, {})
    wire = answer.ReplyPacket()
    back = nas_reply(request, sent, verify_reply(sent, wire, require_message_authenticator=True))
    got = original.CreateReply(packet=back)
    assert original.VerifyReply(got, back) and got.code == packet.AccountingResponse
    assert bool(got.message_authenticator) == sign
    for key, values in OrderedDict.items(answer):
        if key != 80:
            assert raw_values(got, key) == values, key


@settings(max_examples=300, deadline=None)
@given(attributes=ordinary, accounting=st.booleans(), data=st.data())
def test_any_bit_changed_in_a_request_or_its_reply_is_refused(
    attributes: list[tuple[int, bytes]], accounting: bool, data: st.DataObject
) -> None:
    if accounting:
        original: packet.Packet = packet.AcctPacket(secret=NAS, dict=dictionary(), id=1)
    else:
        original = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary())
        original.add_message_authenticator()
    add(original, attributes, {})
    raw = original.RequestPacket()
    spoilt = bytearray(raw)
    spoilt[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(Dropped):
        decode_request(bytes(spoilt), NAS, accounting=accounting)
    # and cut short anywhere
    with pytest.raises(Dropped):
        decode_request(raw[: data.draw(st.integers(0, len(raw) - 1))], NAS, accounting=accounting)

    _, sent = relayed(raw, accounting=accounting)
    answer = at_upstream(sent).CreateReply()
    add(answer, data.draw(reply_ordinary), {})
    wire = answer.ReplyPacket()
    assert verify_reply(sent, wire, require_message_authenticator=True)
    spoilt = bytearray(wire)
    spoilt[data.draw(st.integers(0, len(wire) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(Dropped):
        verify_reply(sent, bytes(spoilt), require_message_authenticator=True)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), accounting=st.booleans(), lenient=st.booleans())
def test_random_bytes_are_dropped_and_never_raise_anything_else(
    data: bytes, accounting: bool, lenient: bool
) -> None:
    try:
        decode_request(data, NAS, accounting=accounting, require_message_authenticator=not lenient)
    except Dropped:
        return
    raise AssertionError("random bytes verified")  # pragma: no cover


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(max_size=100), message=st.binary(max_size=300))
def test_hmac_md5_from_kept_pads_is_hmac_md5(secret: bytes, message: bytes) -> None:
    # keys longer than MD5's block (64 octets) are hashed first, as RFC 2104 has it
    assert hmac_md5(secret, message) == hmac.digest(secret, message, "md5")
    assert hmac_md5(secret, message) == hmac.digest(secret, message, "md5")  # pads kept


def test_request_authenticators_drawn_in_bulk_are_never_the_same() -> None:
    drawn = [random_authenticator() for _ in range(3 * 256 + 5)]  # across three refills
    assert all(len(a) == 16 for a in drawn)
    assert len(set(drawn)) == len(drawn)
