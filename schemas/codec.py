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
    """The event in ``payload``; raises DecodeError for anything else."""
    try:
        if content in (None, "", JSON_TYPE):
            return _json_decoder.decode(payload)
        if content == MSGPACK_TYPE:
            return _msgpack_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(str(exc)) from exc
    raise DecodeError(f"unknown content type {content!r}")
