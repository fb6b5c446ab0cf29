"""RADIUS packets as the project builds and reads them, on pyrad: no sockets.

The project's dictionary (FreeRADIUS statistics and the vendor
``aaa-failover`` attributes, in ``dictionary`` beside this module), the
packet codes the services use, the requests they send (Access-Request with a
PAP password, Status-Server asking for statistics), the one check of a reply
(:func:`verified_reply`) and :class:`Dropped`, what a RADIUS packet that is
not answered or relayed raises.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pyrad import packet
from pyrad.dictionary import Dictionary

from schemas.errors import Rejected

logger = logging.getLogger(__name__)

DICTIONARY_PATH = Path(__file__).with_name("dictionary")

ACCESS_REQUEST = packet.AccessRequest
ACCESS_ACCEPT = packet.AccessAccept
ACCESS_REJECT = packet.AccessReject
ACCESS_CHALLENGE = packet.AccessChallenge
ACCOUNTING_REQUEST = packet.AccountingRequest
ACCOUNTING_RESPONSE = packet.AccountingResponse
STATUS_SERVER = packet.StatusServer


class Dropped(Rejected):
    """A RADIUS packet is not answered or relayed; ``reason`` is a short counter label."""


@functools.cache
def dictionary() -> Dictionary:
    """The project's RADIUS dictionary, loaded once."""
    return Dictionary(str(DICTIONARY_PATH))


def verified_reply(request: packet.Packet, data: bytes, addr: Any = None) -> packet.Packet | None:
    """``data`` decoded as the reply to ``request``, or None if it does not verify
    (Response Authenticator, Message-Authenticator) or does not decode."""
    try:
        reply = request.CreateReply(packet=data)
        if request.VerifyReply(reply, data):
            return reply
    except Exception as exc:
        logger.debug("undecodable reply from %s: %s", addr, exc)
    return None


def access_request(secret: bytes, user: str, password: str, **attributes: Any) -> packet.AuthPacket:
    """An Access-Request with PAP password and Message-Authenticator."""
    pkt = packet.AuthPacket(code=ACCESS_REQUEST, secret=secret, dict=dictionary())
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    for name, value in attributes.items():
        pkt[name.replace("_", "-")] = value
    pkt.add_message_authenticator()
    return pkt


def status_request(secret: bytes, statistics: str = "All") -> packet.AuthPacket:
    """A Status-Server request asking for FreeRADIUS statistics."""
    pkt = packet.AuthPacket(code=STATUS_SERVER, secret=secret, dict=dictionary())
    pkt["FreeRADIUS-Statistics-Type"] = statistics
    pkt.add_message_authenticator()
    return pkt


def reply_values(reply: packet.Packet) -> dict[str, Any]:
    """The first decoded value of each attribute of a reply, keyed by attribute name.

    Attributes the dictionary does not name, or that do not decode, are left out.
    """
    values: dict[str, Any] = {}
    # pyrad's keys() names the attributes; iterating the packet gives raw codes
    for key in reply.keys():  # noqa: SIM118
        if not isinstance(key, str):
            continue
        try:
            decoded = reply[key]
        except Exception as exc:
            logger.debug("undecodable %s in a reply: %s", key, exc)
            continue
        if decoded:
            values[key] = decoded[0]
    return values
