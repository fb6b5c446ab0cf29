"""Encoding of events on the wire: JSON by default, msgpack as an option.

The encoding travels in the ``Content-Type`` header so a receiver decodes
whatever a publisher chose. Encoders and decoders are built once and reused.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.errors import AaaFailoverError
from schemas.events import AnyEvent, Event

CodecName = Literal["json", "msgpack"]

CONTENT_TYPE = "Content-Type"
JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"

_json_encoder = msgspec.json.Encoder()
_json_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)


class DecodeError(AaaFailoverError, ValueError):
    """The payload is not a valid event in the encoding it claims.

    Not a :class:`schemas.errors.Rejected` itself: each receiver rejects it
    under its own reason (``undecodable`` on the bus and at the agent), with
    this message as the detail.
    """


def content_type(codec: CodecName) -> str:
    return JSON_TYPE if codec == "json" else MSGPACK_TYPE


def encode(event: Event, codec: CodecName = "json") -> bytes:
    """The wire bytes of ``event``."""
    if codec == "json":
        return _json_encoder.encode(event)
    return _msgpack_encoder.encode(event)


def decode(payload: bytes, content: str | None = JSON_TYPE) -> AnyEvent:
    """The event in ``payload``; raises DecodeError for anything else.

    Whatever the bytes do to the decoder is a DecodeError: not only msgspec's
    own errors but a RecursionError (arrays or objects nested deeper than the
    interpreter's recursion limit, in an unknown field that is skipped as much
    as in a known one), a ValueError or TypeError of an event's own checks, a
    MemoryError of a claimed length. Nothing else leaves this function, so a
    receiver counts the payload as undecodable and carries on.
    """
    if content in (None, "", JSON_TYPE):
        decoder: msgspec.json.Decoder[AnyEvent] | msgspec.msgpack.Decoder[AnyEvent] = _json_decoder
    elif content == MSGPACK_TYPE:
        decoder = _msgpack_decoder
    else:
        raise DecodeError(f"unknown content type {_shown(content)}")
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(_clipped(str(exc))) from None
    except RecursionError:
        raise DecodeError("nested too deeply") from None
    except Exception as exc:
        raise DecodeError(_clipped(f"{type(exc).__name__}: {exc}")) from None


DETAIL_LIMIT = 200
"""The most characters of a decoding error kept for the log: a path into a deeply nested
payload (``$.a[0][0]...``) is as long as the payload is deep."""


def _clipped(text: str, limit: int = DETAIL_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(text: object) -> str:
    """``text`` for a log line: repr'd and clipped."""
    return _clipped(repr(text), 64)
