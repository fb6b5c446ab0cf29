"""A service's state in its JetStream KV bucket: values of one msgspec type, by key.

Values are stored msgspec-JSON encoded. A stored value that does not decode
to the type, whatever the reason (not JSON, the wrong type, nested deeper than
the interpreter's recursion limit, failing the type's own checks), is never
fatal: it is counted as ``bad-state`` on the bus's drop counters, logged once
(per key and revision, however often it is read), and read as missing, so the
service starts with the rest of its state. A write that fails is logged and
reported by its result, so a service carries on from memory when the store is
away.
"""

from __future__ import annotations

import logging
from typing import Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from services.runtime.bus import Bus, DropCounters

logger = logging.getLogger(__name__)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class StateStore(Generic[T]):
    """Values of one msgspec type in a service's KV bucket, by key."""

    def __init__(self, kv: KeyValue, kind: type[T], counters: DropCounters, bucket: str) -> None:
        self.kv = kv
        self.kind = kind
        self.what = getattr(kind, "__name__", None) or str(kind)
        """The values' type, as logged (a union of types has no name of its own)."""
        self.counters = counters
        self.bucket = bucket
        self._decoder = msgspec.json.Decoder(kind)
        self._reported: set[tuple[str, int | None]] = set()

    @classmethod
    async def open(cls, bus: Bus, bucket: str, kind: type[T]) -> StateStore[T]:
        """The store of ``kind`` values in ``bus``'s bucket ``bucket`` (created if missing)."""
        return cls(await bus.kv(bucket), kind, bus.counters, bucket)

    def _decode(self, key: str, data: bytes, revision: int | None = None) -> T | None:
        """``data`` as a value of the type, or None (counted and logged) if it is not one.

        Any failure of the decoder is a bad value, not only msgspec's own errors:
        a RecursionError (too deeply nested), a ValueError or TypeError of the
        type's checks, and whatever else the bytes provoke.
        """
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            why = str(exc)
        except RecursionError:
            why = "nested too deeply"
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.bad(key, why if len(why) <= 200 else why[:197] + "...", revision)
        return None

    def bad(self, key: str, why: str, revision: int | None = None) -> None:
        """Count and log the value stored under ``key`` (at ``revision``) as unusable.

        Once per key and revision: the same bad value read again is neither
        counted nor logged again.
        """
        seen = (key, revision)
        if seen in self._reported:
            return
        self._reported.add(seen)
        self.counters.drop("bad-state")
        logger.warning("ignoring stored %s %r in %s: %s", self.what, key, self.bucket, why)

    async def get(self, key: str) -> T | None:
        """The value under ``key``; None if there is none or it is bad.

        Errors of the store itself (other than a missing key) are raised.
        """
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return self._decode(key, entry.value, entry.revision)

    async def load_all(self) -> dict[str, T]:
        """Every good value in the bucket, by key (bad ones are counted and left out)."""
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return {}
        values: dict[str, T] = {}
        for key in keys:
            value = await self.get(key)
            if value is not None:
                values[key] = value
        return values

    async def put(self, key: str, value: T) -> bool:
        """Store ``value`` under ``key``; False (and logged) if the store failed."""
        try:
            await self.kv.put(key, _encoder.encode(value))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.error("could not store %r in %s: %s", key, self.bucket, exc)
            return False
        return True

    async def delete(self, key: str) -> None:
        """Remove ``key`` and its history; a failure is logged."""
        try:
            await self.kv.purge(key)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not remove %r from %s: %s", key, self.bucket, exc)
