"""A proxied RADIUS packet carried from one shared secret to another (no sockets).

What a proxy between NAS devices and upstream servers does to each packet
(:mod:`services.agent.proxy`): a NAS's request is verified under the NAS
secret (:func:`decode_request`) and re-encoded for the upstream under the
client's own secret (:func:`upstream_request`), and the upstream's reply is
re-encoded as the answer to the NAS (:func:`nas_reply`). User-Password
hiding (RFC 2865 section 5.2) and salt-encrypted attributes (RFC 2868
section 3.5, RFC 2548) are decrypted under one secret and vector and
encrypted again under the other; every other attribute, Proxy-State
included, is kept as it came. A packet that does not verify or decode
raises :class:`~services.radius.packet.Dropped`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from typing import Any

from pyrad import packet

from services.radius.packet import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    STATUS_SERVER,
    Dropped,
    dictionary,
)

MAX_PACKET_OCTETS = 4096
"""RFC 2865's largest RADIUS packet; FreeRADIUS drops anything longer without a word."""

RADIUS_HEADER_OCTETS = 20
MESSAGE_AUTHENTICATOR_OCTETS = 18

USER_PASSWORD = 2
CHAP_PASSWORD = 3
STATE = 24
PROXY_STATE = 33
CHAP_CHALLENGE = 60
EAP_MESSAGE = 79
TUNNEL_PASSWORD = 69
MESSAGE_AUTHENTICATOR = 80
MICROSOFT = 311

SALTED: dict[int | tuple[int, int], bool] = {
    TUNNEL_PASSWORD: True,  # RFC 2868 section 3.5, after a tag octet
    (MICROSOFT, 16): False,  # MS-MPPE-Send-Key, RFC 2548 section 2.4.2
    (MICROSOFT, 17): False,  # MS-MPPE-Recv-Key, RFC 2548 section 2.4.3
}
"""Attributes encrypted with a salt, by raw key, and whether a tag octet comes first."""

ZERO_VECTOR = bytes(16)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def hide_password(padded: bytes, secret: bytes, vector: bytes) -> bytes:
    """User-Password hiding (RFC 2865 section 5.2) of ``padded`` (a multiple of 16 octets)."""
    if not padded or len(padded) % 16:
        raise ValueError("a hidden password is a multiple of 16 octets")
    out = []
    last = vector
    for i in range(0, len(padded), 16):
        last = _xor(padded[i : i + 16], hashlib.md5(secret + last).digest())
        out.append(last)
    return b"".join(out)


def reveal_password(hidden: bytes, secret: bytes, vector: bytes) -> bytes:
    """The padded plaintext of a hidden User-Password; raise Dropped if its length is wrong."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise Dropped("malformed", f"User-Password of {len(hidden)} octets")
    out = []
    last = vector
    for i in range(0, len(hidden), 16):
        block = hidden[i : i + 16]
        out.append(_xor(block, hashlib.md5(secret + last).digest()))
        last = block
    return b"".join(out)


def resalt(
    value: bytes,
    tagged: bool,
    *,
    from_secret: bytes,
    from_vector: bytes,
    to_secret: bytes,
    to_vector: bytes,
) -> bytes:
    """A salt-encrypted value (RFC 2868 section 3.5) decrypted under one secret and
    vector and encrypted again, with the same salt, under another."""
    tag, body = (value[:1], value[1:]) if tagged else (b"", value)
    if len(body) < 18 or (len(body) - 2) % 16:
        raise Dropped("malformed", f"salt-encrypted value of {len(body)} octets")
    salt, cipher = body[:2], body[2:]
    out = []
    last_in, last_out = from_vector + salt, to_vector + salt
    for i in range(0, len(cipher), 16):
        block = cipher[i : i + 16]
        plain = _xor(block, hashlib.md5(from_secret + last_in).digest())
        encrypted = _xor(plain, hashlib.md5(to_secret + last_out).digest())
        out.append(encrypted)
        last_in, last_out = block, encrypted
    return tag + salt + b"".join(out)


def _raw_items(pkt: packet.Packet) -> list[tuple[Any, Any]]:
    # pyrad keys a packet by raw attribute code (or (vendor, code)); OrderedDict's own
    # items() gives those keys with their raw values, in order.
    return list(OrderedDict.items(pkt))


def _set_raw(pkt: packet.Packet, key: Any, values: Any) -> None:
    OrderedDict.__setitem__(pkt, key, list(values) if isinstance(values, list) else values)


def decode_request(
    data: bytes, secret: bytes, *, accounting: bool, require_message_authenticator: bool = True
) -> packet.Packet:
    """A NAS's request, verified under ``secret``; raise Dropped.

    The auth port takes Access-Request and Status-Server, the accounting port
    Accounting-Request and Status-Server. A Message-Authenticator is checked
    when present, and required on Status-Server, on an Access-Request that
    carries EAP-Message (RFC 3579) and, with ``require_message_authenticator``
    (FreeRADIUS's ``require_message_authenticator = yes``), on every
    Access-Request. Without it, an Access-Request that carries Proxy-State but
    no Message-Authenticator is refused all the same (FreeRADIUS's
    ``limit_proxy_state``: a NAS sends no Proxy-State, and BlastRADIUS hides
    its chosen prefix in one). The Request Authenticator of an
    Accounting-Request is always checked, which is why FreeRADIUS requires
    nothing more of accounting.
    """
    if len(data) < 20:
        raise Dropped("malformed", f"{len(data)} octets")
    code = data[0]
    allowed = (ACCOUNTING_REQUEST if accounting else ACCESS_REQUEST, STATUS_SERVER)
    if code not in allowed:
        raise Dropped("unsupported-code", str(code))
    kind = packet.AcctPacket if accounting else packet.AuthPacket
    try:
        request: packet.Packet = kind(packet=data, secret=secret, dict=dictionary())
        if code == ACCOUNTING_REQUEST and not request.VerifyAcctRequest():
            raise Dropped("bad-authenticator")
        if request.message_authenticator:
            if not request.verify_message_authenticator():
                raise Dropped("bad-message-authenticator")
        elif code == STATUS_SERVER:
            raise Dropped("no-message-authenticator")
        elif code == ACCESS_REQUEST:
            keys = OrderedDict.keys(request)
            if require_message_authenticator or EAP_MESSAGE in keys:
                raise Dropped("no-message-authenticator")
            if PROXY_STATE in keys:
                raise Dropped("proxy-state-unsigned")
    except Dropped:
        raise
    except Exception as exc:
        raise Dropped("malformed", str(exc)) from None
    return request


def upstream_request(request: packet.Packet, secret: bytes) -> packet.Packet:
    """``request`` (from a NAS, decoded under its secret) re-encoded for an upstream.

    The copy has a new Request Authenticator, the User-Password and salted
    attributes encrypted again under ``secret``, a Message-Authenticator (on an
    Accounting-Request only when the NAS sent one), and every other attribute
    as it came, Proxy-State included. A CHAP-Password without CHAP-Challenge
    gets the NAS's Request Authenticator as CHAP-Challenge, since that was the
    challenge. The id is set when it is sent.
    """
    access = request.code == ACCESS_REQUEST
    out: packet.Packet
    if access:
        out = packet.AuthPacket(
            code=ACCESS_REQUEST,
            secret=secret,
            dict=dictionary(),
            authenticator=secrets.token_bytes(16),
        )
        from_vector, to_vector = request.authenticator, out.authenticator
    else:
        out = packet.AcctPacket(code=ACCOUNTING_REQUEST, secret=secret, dict=dictionary())
        from_vector = to_vector = ZERO_VECTOR
    for key, values in _raw_items(request):
        if key == MESSAGE_AUTHENTICATOR:
            continue
        if key == USER_PASSWORD and access:
            values = [
                hide_password(reveal_password(v, request.secret, from_vector), secret, to_vector)
                for v in values
            ]
        elif key in SALTED:
            values = [
                resalt(
                    v,
                    SALTED[key],
                    from_secret=request.secret,
                    from_vector=from_vector,
                    to_secret=secret,
                    to_vector=to_vector,
                )
                for v in values
            ]
        _set_raw(out, key, values)
    raw_keys = {key for key, _ in _raw_items(request)}
    if access and CHAP_PASSWORD in raw_keys and CHAP_CHALLENGE not in raw_keys:
        _set_raw(out, CHAP_CHALLENGE, [request.authenticator])
    if access or request.message_authenticator:
        out.add_message_authenticator()
    return out


def nas_reply(request: packet.Packet, sent: packet.Packet, reply: packet.Packet) -> bytes:
    """The upstream's ``reply`` to ``sent``, re-encoded as the answer to the NAS's ``request``.

    Code and attributes are the upstream's (salted ones encrypted again under
    the NAS secret); the Response Authenticator is computed from the NAS's own
    Request Authenticator. Every answer to an Access-Request (Accept, Reject,
    Challenge) gets a Message-Authenticator, the first attribute, as
    FreeRADIUS 3.2.5 and later send it against BlastRADIUS; an
    Accounting-Response gets one when the upstream's reply had one.
    """
    access = request.code == ACCESS_REQUEST
    sign = access or bool(reply.message_authenticator)
    out: packet.Packet = request.CreateReply(message_authenticator=sign)
    out.code = reply.code
    for key, values in _raw_items(reply):
        if key == MESSAGE_AUTHENTICATOR:
            continue
        if key in SALTED:
            values = [
                resalt(
                    v,
                    SALTED[key],
                    from_secret=sent.secret,
                    from_vector=sent.authenticator,
                    to_secret=request.secret,
                    to_vector=request.authenticator,
                )
                for v in values
            ]
        _set_raw(out, key, values)
    raw: bytes = out.ReplyPacket()
    return raw


def status_answer(request: packet.Packet) -> bytes:
    """The proxy's own answer to a verified Status-Server (RFC 5997)."""
    reply = request.CreateReply()
    raw: bytes = reply.ReplyPacket()
    return raw
