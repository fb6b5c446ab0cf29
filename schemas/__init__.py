"""The aaa-failover wire contract: events, subjects, codec and signing.

Importable by outside tools with msgspec alone.
"""

from schemas.codec import decode, encode
from schemas.events import EVENT_TYPES, AnyEvent, Event
from schemas.subjects import Subjects

__all__ = ["EVENT_TYPES", "AnyEvent", "Event", "Subjects", "decode", "encode"]
