"""How a notice travels outside the bus: RADIUS CoA attributes and ICMP Echo framing (no I/O).

Both ends use this module, the contract between them: the notifier's
transports build what they send with it, the agent's listeners
(:mod:`services.agent.coa`, :mod:`services.agent.icmp`) read what they
receive with it. Whatever the
transport, a notice is a :class:`NoticeMessage`: the exact encoded notice,
the authenticator that covers it under the client's shared secret, the id
of the server it concerns and its content type.

CoA (RFC 5176): a CoA-Request with a Message-Authenticator, Event-Timestamp
and the vendor attributes of vendor ``aaa-failover`` (see the project's
RADIUS dictionary); a notice longer than one attribute is split over several
``AAA-Failover-Notice`` attributes in order. Retransmissions back off as in
RFC 5080 section 2.2.1 (:func:`backoff`).

ICMP: an Echo Request (:mod:`services.radius.icmp`) whose data is a frame:
``AAAF``, a version octet, a content-type octet, then the server id and the
authenticator (each one length octet and ASCII) and the notice (two length
octets, big-endian).

What is not a well-formed notice raises :class:`WireError`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pyrad import packet
from pyrad.dictionary import Dictionary

from schemas import codec
from schemas.errors import Rejected
from schemas.events import FailoverNotice, ReadmitNotice


class WireError(Rejected):
    """What was received is not a well-formed notice, or a notice does not fit its
    carrier; ``reason`` is a short counter label."""


@dataclass(frozen=True)
class NoticeMessage:
    """A notice as every transport carries it: the bytes and what authenticates them."""

    server: str
    payload: bytes
    authenticator: str
    content_type: str = codec.JSON_TYPE


# --- RADIUS CoA ------------------------------------------------------------

COA_REQUEST = packet.CoARequest
COA_ACK = packet.CoAACK
COA_NAK = packet.CoANAK

MAX_PACKET = 4096
"""The largest RADIUS packet (RFC 2865 section 3)."""

MAX_VSA_OCTETS = 247
"""The most octets one vendor attribute holds: 255 less the Vendor-Specific
header (2), the vendor id (4) and the sub-attribute header (2)."""

NOTICE = "AAA-Failover-Notice"
AUTHENTICATOR = "AAA-Failover-Authenticator"
SERVER = "AAA-Failover-Server"
NOTICE_TYPE = "AAA-Failover-Notice-Type"
INCIDENT = "AAA-Failover-Incident"
ALTERNATE = "AAA-Failover-Alternate"
VALID_UNTIL = "AAA-Failover-Valid-Until"
SEQUENCE = "AAA-Failover-Sequence"
CONTENT_TYPE = "AAA-Failover-Content-Type"
EVENT_TIMESTAMP = "Event-Timestamp"
ERROR_CAUSE_CODE = 101


class ErrorCause(IntEnum):
    """Error-Cause values (RFC 5176 section 3.6) a CoA-NAK of a notice carries.

    A request that does not authenticate under the shared secret (wrong
    Request Authenticator or Message-Authenticator, or none) gets no answer
    at all (RFC 5176 section 3.5: silently discarded). INVALID_REQUEST (404):
    its Event-Timestamp is outside the receiver's window. MISSING_ATTRIBUTE
    (402): no Event-Timestamp, or no notice, server or authenticator
    attribute. INVALID_ATTRIBUTE_VALUE (407): the notice was refused (it did
    not verify or was not accepted). RESOURCES_UNAVAILABLE (506): the
    receiver failed while handling it.
    """

    MISSING_ATTRIBUTE = 402
    INVALID_REQUEST = 404
    INVALID_ATTRIBUTE_VALUE = 407
    ADMINISTRATIVELY_PROHIBITED = 501
    RESOURCES_UNAVAILABLE = 506


def split_octets(data: bytes, size: int = MAX_VSA_OCTETS) -> list[bytes]:
    """``data`` in pieces of at most ``size`` octets, in order (one empty piece for none)."""
    if size < 1:
        raise ValueError("size must be positive")
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _describe(pkt: Any, message: NoticeMessage) -> None:
    """Add the plain attributes that repeat parts of the notice, if it decodes."""
    try:
        notice = codec.decode(message.payload, message.content_type)
    except codec.DecodeError:
        return
    if not isinstance(notice, FailoverNotice | ReadmitNotice):
        return
    pkt[NOTICE_TYPE] = str(type(notice).__struct_config__.tag)
    pkt[INCIDENT] = notice.incident_id
    if isinstance(notice, FailoverNotice) and notice.alternates:
        pkt[ALTERNATE] = list(notice.alternates)
    pkt[VALID_UNTIL] = max(0, min(int(notice.valid_until), 0xFFFFFFFF))
    pkt[SEQUENCE] = max(0, min(notice.seq, 0xFFFFFFFFFFFFFFFF))


def coa_request(
    message: NoticeMessage, secret: bytes, dictionary: Dictionary, *, now: float
) -> Any:
    """The CoA-Request (a ``pyrad.packet.CoAPacket``) that carries ``message``.

    Raises WireError (``too-long``) if it would not fit in one RADIUS packet.
    """
    pkt = packet.CoAPacket(code=COA_REQUEST, secret=secret, dict=dictionary)
    pkt.add_message_authenticator()
    pkt[EVENT_TIMESTAMP] = int(now)
    pkt[SERVER] = message.server
    pkt[AUTHENTICATOR] = message.authenticator
    pkt[CONTENT_TYPE] = message.content_type
    pkt[NOTICE] = split_octets(message.payload)
    _describe(pkt, message)
    size = len(pkt.RequestPacket())
    if size > MAX_PACKET:
        raise WireError("too-long", f"CoA-Request of {size} octets exceeds {MAX_PACKET}")
    return pkt


def _first_text(pkt: Any, name: str) -> str | None:
    values = pkt.get(name)
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes):
        raise WireError("bad-attribute", f"{name} is not UTF-8")
    return str(value)


def read_coa_notice(pkt: Any) -> NoticeMessage:
    """The notice of a received CoA-Request; WireError (``missing-attribute``) if incomplete."""
    try:
        chunks = pkt.get(NOTICE, [])
        server = _first_text(pkt, SERVER)
        authenticator = _first_text(pkt, AUTHENTICATOR)
        content_type = _first_text(pkt, CONTENT_TYPE) or codec.JSON_TYPE
        payload = b"".join(bytes(chunk) for chunk in chunks)
    except WireError:
        raise
    except Exception as exc:  # whatever an attribute's octets do to pyrad's decoding
        raise WireError("bad-attribute", f"{type(exc).__name__}: {exc}"[:200]) from None
    missing = [
        name
        for name, value in ((NOTICE, chunks), (SERVER, server), (AUTHENTICATOR, authenticator))
        if not value
    ]
    if missing:
        raise WireError("missing-attribute", ", ".join(missing))
    assert server is not None and authenticator is not None
    return NoticeMessage(
        server=server, payload=payload, authenticator=authenticator, content_type=content_type
    )


def error_cause(pkt: Any) -> int | None:
    """The first Error-Cause of a packet as a number, or None."""
    values = pkt.get(ERROR_CAUSE_CODE)
    if not values or len(values[0]) != 4:
        return None
    cause: int = struct.unpack("!I", values[0])[0]
    return cause


def backoff(
    initial_s: float,
    retries: int,
    maximum_s: float,
    rand: Callable[[], float] | None = None,
) -> list[float]:
    """How long to wait after each transmission of a request (RFC 5080 section 2.2.1).

    The first wait is ``initial_s``; each next one doubles, and one that would
    pass ``maximum_s`` is ``maximum_s``; each is spread by ``rand()`` (a value
    in [-0.1, 0.1]; none without ``rand``) as RFC 5080 does against
    synchronised retransmissions. One wait per transmission: ``retries + 1``.
    """
    if initial_s <= 0:
        raise ValueError("initial timeout must be positive")
    if retries < 0:
        raise ValueError("retries must not be negative")
    maximum_s = max(maximum_s, initial_s)
    waits: list[float] = []
    base = initial_s
    for _ in range(retries + 1):
        spread = rand() if rand is not None else 0.0
        waits.append(base + spread * base)
        base = min(2 * base, maximum_s)
    return waits


def rfc5080_rand(rng: random.Random | None = None) -> Callable[[], float]:
    """RAND of RFC 5080: uniform in [-0.1, 0.1]."""
    source = rng or random.Random()
    return lambda: source.uniform(-0.1, 0.1)


# --- ICMP Echo -------------------------------------------------------------

MAGIC = b"AAAF"
FRAME_VERSION = 1
MAX_FRAME = 65_000

_CODECS = {codec.JSON_TYPE: 0, codec.MSGPACK_TYPE: 1}
_CONTENT_TYPES = {number: name for name, number in _CODECS.items()}


def frame(message: NoticeMessage) -> bytes:
    """The Echo data that carries ``message``; WireError if a part does not fit."""
    server = message.server.encode()
    auth = message.authenticator.encode("ascii")
    if message.content_type not in _CODECS:
        raise WireError("bad-content-type", message.content_type)
    if len(server) > 255 or len(auth) > 255:
        raise WireError("too-long", "server id or authenticator over 255 octets")
    data = (
        MAGIC
        + struct.pack("!BBB", FRAME_VERSION, _CODECS[message.content_type], len(server))
        + server
        + struct.pack("!B", len(auth))
        + auth
        + struct.pack("!H", len(message.payload))
        + message.payload
    )
    if len(data) > MAX_FRAME:
        raise WireError("too-long", f"frame of {len(data)} octets exceeds {MAX_FRAME}")
    return data


def is_frame(data: bytes) -> bool:
    """Whether Echo data starts like a notice frame."""
    return data.startswith(MAGIC)


def unframe(data: bytes) -> NoticeMessage:
    """The notice in a frame; WireError (``malformed``, ``bad-version``) otherwise."""
    if not is_frame(data):
        raise WireError("malformed", "no AAAF magic")
    try:
        version, content, server_len = struct.unpack_from("!BBB", data, 4)
        if version != FRAME_VERSION:
            raise WireError("bad-version", str(version))
        at = 7
        server = data[at : at + server_len]
        at += server_len
        (auth_len,) = struct.unpack_from("!B", data, at)
        at += 1
        auth = data[at : at + auth_len]
        at += auth_len
        (notice_len,) = struct.unpack_from("!H", data, at)
        at += 2
        payload = data[at : at + notice_len]
    except struct.error:
        raise WireError("malformed", "frame is truncated") from None
    if len(server) != server_len or len(auth) != auth_len or len(payload) != notice_len:
        raise WireError("malformed", "frame is truncated")
    if at + notice_len != len(data):
        raise WireError("malformed", "octets after the notice")
    if content not in _CONTENT_TYPES:
        raise WireError("malformed", f"content type {content}")
    try:
        return NoticeMessage(
            server=server.decode(),
            payload=payload,
            authenticator=auth.decode("ascii"),
            content_type=_CONTENT_TYPES[content],
        )
    except UnicodeDecodeError:
        raise WireError("malformed", "server id or authenticator is not text") from None
