"""RADIUS packets of the reference server: decode, authenticate, answer.

Plain functions over bytes and pyrad packets, with no sockets: a request is
decoded under the secret its sender should hold and must carry a valid
Message-Authenticator (RFC 2869; required, as against BlastRADIUS), else it
is dropped with a reason (:class:`services.radius.packet.Dropped`).
Passwords are PAP (RFC 2865 section 5.2).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from pyrad import packet

from services.radius.packet import ACCESS_REJECT, Dropped, dictionary

USER_NAME = 1
USER_PASSWORD = 2
STATE = 24
STATISTICS_TYPE = "FreeRADIUS-Statistics-Type"


def decode(data: bytes, secret: bytes) -> packet.AuthPacket:
    """The request in ``data``, authenticated under ``secret``; raise Dropped."""
    try:
        request = packet.AuthPacket(packet=data, secret=secret, dict=dictionary())
    except Exception as exc:
        raise Dropped("malformed", str(exc)) from None
    if not request.message_authenticator:
        raise Dropped("no-message-authenticator")
    try:
        valid = request.verify_message_authenticator()
    except Exception as exc:
        raise Dropped("malformed", str(exc)) from None
    if not valid:
        raise Dropped("bad-authenticator")
    return request


def _single(request: packet.AuthPacket, code: int) -> bytes | None:
    values = request.get(code)
    if not values or len(values) != 1:
        return None
    value: bytes = values[0]
    return value


def check_password(request: packet.AuthPacket, users: Mapping[str, str]) -> bool:
    """Whether the request's User-Name and PAP User-Password match ``users``."""
    raw_user = _single(request, USER_NAME)
    raw_password = _single(request, USER_PASSWORD)
    if raw_user is None or raw_password is None:
        return False
    try:
        user = raw_user.decode("utf-8")
        password = request.PwDecrypt(raw_password)
    except (UnicodeDecodeError, packet.PacketError):
        return False
    expected = users.get(user)
    if expected is None:
        return False
    return hmac.compare_digest(password.encode(), expected.encode())


def access_reply(request: packet.AuthPacket, accepted: bool) -> bytes:
    """The Access-Accept or Access-Reject to ``request``, signed, as bytes."""
    reply = request.CreateReply()
    if not accepted:
        reply.code = ACCESS_REJECT
    raw: bytes = reply.ReplyPacket()
    return raw


def challenge_reply(request: packet.AuthPacket, state: bytes) -> bytes:
    """The Access-Challenge to ``request`` carrying ``state``, signed, as bytes."""
    reply = request.CreateReply()
    reply.code = packet.AccessChallenge
    reply.AddAttribute("State", state)
    reply.add_message_authenticator()
    raw: bytes = reply.ReplyPacket()
    return raw


def state_of(request: packet.AuthPacket) -> bytes | None:
    """The request's ``State`` (raw), or None."""
    return _single(request, STATE)


@dataclass(frozen=True)
class ServerFigures:
    """What a server reports of itself in a Status-Server reply."""

    threads_active: int
    threads_total: int
    threads_max: int
    queue_len: int
    requests: int
    accepts: int
    rejects: int
    dropped: int
    pps_in: int = 0
    pps_out: int = 0
    challenges: int = 0


_U32 = 0xFFFFFFFF


def status_reply(request: packet.AuthPacket, figures: ServerFigures) -> bytes:
    """The Access-Accept to a Status-Server, with statistics when asked for them.

    As FreeRADIUS does, the statistics are included when the request has a
    FreeRADIUS-Statistics-Type other than None.
    """
    reply = request.CreateReply()
    try:
        asked = request.get(STATISTICS_TYPE)
    except Exception:
        asked = None
    if asked and asked[0] not in ("None", 0):
        values = {
            "FreeRADIUS-Stats-Threads-Active": figures.threads_active,
            "FreeRADIUS-Stats-Threads-Total": figures.threads_total,
            "FreeRADIUS-Stats-Threads-Max": figures.threads_max,
            "FreeRADIUS-Queue-Len-Auth": figures.queue_len,
            # It has only an auth queue and does no accounting or proxying.
            "FreeRADIUS-Queue-Len-Internal": 0,
            "FreeRADIUS-Queue-Len-Acct": 0,
            "FreeRADIUS-Queue-Len-Proxy": 0,
            "FreeRADIUS-Queue-Len-Detail": 0,
            "FreeRADIUS-Queue-PPS-In": figures.pps_in,
            "FreeRADIUS-Queue-PPS-Out": figures.pps_out,
            "FreeRADIUS-Total-Access-Requests": figures.requests,
            "FreeRADIUS-Total-Access-Accepts": figures.accepts,
            "FreeRADIUS-Total-Access-Rejects": figures.rejects,
            "FreeRADIUS-Total-Access-Challenges": figures.challenges,
            "FreeRADIUS-Total-Auth-Responses": figures.accepts
            + figures.rejects
            + figures.challenges,
            "FreeRADIUS-Total-Auth-Dropped-Requests": figures.dropped,
            "FreeRADIUS-Total-Accounting-Requests": 0,
            "FreeRADIUS-Total-Accounting-Responses": 0,
        }
        for name, value in values.items():
            reply[name] = min(max(0, value), _U32)
    raw: bytes = reply.ReplyPacket()
    return raw
