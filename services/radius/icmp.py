"""ICMP Echo messages (RFC 792) and the raw sockets they need: what carries a framed notice.

The notifier sends a notice frame (:func:`services.radius.notice.frame`) as
the data of an Echo Request (:func:`echo_request`); the agent picks Echo
Requests out of IPv4 datagrams read off a raw socket
(:func:`parse_echo_request`). A raw ICMP socket needs root or CAP_NET_RAW
(:func:`open_raw_icmp`, :class:`IcmpUnavailable`); ``ICMP_FILTER`` keeps the
ICMP types a socket does not want out of its receive queue.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from schemas.errors import AaaFailoverError
from services.radius.notice import WireError

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, data: bytes) -> bytes:
    """An ICMP Echo Request message (RFC 792) carrying ``data``."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    total = checksum(header + data)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, total, ident & 0xFFFF, seq & 0xFFFF) + data


@dataclass(frozen=True)
class Echo:
    """An Echo Request read off a raw IPv4 socket."""

    source: str
    destination: str
    ident: int
    seq: int
    data: bytes


def parse_echo_request(datagram: bytes) -> Echo | None:
    """The Echo Request in an IPv4 datagram, or None for any other ICMP message.

    Raises WireError (``malformed``, ``bad-checksum``) for a broken one.
    """
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        raise WireError("malformed", "not an IPv4 datagram")
    header_len = (datagram[0] & 0x0F) * 4
    if header_len < 20 or len(datagram) < header_len + 8:
        raise WireError("malformed", "truncated")
    if datagram[9] != 1:
        return None
    icmp = datagram[header_len:]
    kind, code, _, ident, seq = struct.unpack_from("!BBHHH", icmp)
    if kind != ICMP_ECHO_REQUEST or code != 0:
        return None
    if checksum(icmp) != 0:
        raise WireError("bad-checksum")
    return Echo(
        source=str(ipaddress.IPv4Address(datagram[12:16])),
        destination=str(ipaddress.IPv4Address(datagram[16:20])),
        ident=ident,
        seq=seq,
        data=icmp[8:],
    )


class IcmpUnavailable(AaaFailoverError):
    """A raw ICMP socket cannot be opened here (it needs root or CAP_NET_RAW)."""


ICMP_FILTER = 1
SOL_RAW = 255


def icmp_filter(*allowed_types: int) -> bytes:
    """The Linux ICMP_FILTER option value that lets only ``allowed_types`` through."""
    mask = 0xFFFFFFFF
    for kind in allowed_types:
        mask &= ~(1 << kind)
    return struct.pack("=I", mask)


def open_raw_icmp() -> socket.socket:
    """A non-blocking raw IPv4 ICMP socket; OSError (PermissionError) if not allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock
