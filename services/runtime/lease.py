"""Exactly one replica acts: a lease in the bus's ``leases`` bucket.

A service of which exactly one copy may act (the collector, the evaluator,
the targeter, the readmitter: each keeps one state machine per server) holds
the lease of its role, a key of the bucket ``<PREFIX>_leases`` whose entries
expire ``bus.lease_s`` after they were last written. The holder writes it
again every third of that; a replica that finds it held waits, looking every
:data:`LOOK_S`, and takes it once its holder has not written it for
``lease_s`` (its holder died) or it is deleted (its holder stopped).

A standby does not wait for the server to remove the expired key: nats-server
removes a key with a 1 s time to live about 1.25 s after its last write, and
a standby then took over up to ``lease_s`` + 0.5 s after its holder died. It
times the entry itself, by its own monotonic clock from the first look that
saw the entry's revision, and takes the lease over with a write conditional
on that revision once it has seen it unchanged for ``lease_s``: about
``lease_s`` + one look after the holder's last write (at most two), and never
before ``lease_s`` after it, whatever the hosts' clocks say. A holder that cannot
write its lease for ``lease_s``, or finds it taken, has lost it:
:class:`LeaseLost` stops the service, and its supervisor starts it again as
a standby.

A holder is named by its host and ``AAA_FAILOVER_REPLICA`` (default ``1``):
restarted on the same host as the same replica, a service takes back its own
lease at once rather than waiting for it to expire. Two replicas on one host
need different ``AAA_FAILOVER_REPLICA`` values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from schemas.errors import AaaFailoverError

logger = logging.getLogger(__name__)

BUCKET = "leases"
LOOK_S = 0.25
"""How often a standby looks whether the lease is free."""


class LeaseLost(AaaFailoverError):
    """This replica no longer holds its lease: it must stop acting."""


def role(service: str, only: Sequence[str] | None = None) -> str:
    """The lease key of ``service`` (of the servers ``only`` names, for a replica split)."""
    return service if not only else f"{service}.{'.'.join(sorted(only))}"


def holder_name() -> str:
    """This replica's name: its host and ``AAA_FAILOVER_REPLICA``."""
    return f"{socket.gethostname()}/{os.environ.get('AAA_FAILOVER_REPLICA', '1')}"


class Lease:
    """The lease of ``key`` in ``kv`` (a bucket whose entries live ``lease_s``), for
    ``holder``."""

    def __init__(self, kv: KeyValue, key: str, holder: str, lease_s: float) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.lease_s = lease_s
        self.revision: int | None = None
        self._seen: tuple[int, float] | None = None
        """Another holder's entry: its revision, and when (monotonic) a look first saw it."""

    async def try_take(self) -> bool:
        """Take the lease if it is free or already this holder's; whether it is held now."""
        try:
            self.revision = await self.kv.create(self.key, self.holder.encode())
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return False  # it expired in between: the next look takes it
        if entry.value is None or entry.value.decode(errors="replace") != self.holder:
            return entry.revision is not None and await self._take_over_if_stale(entry.revision)
        try:
            self.revision = await self.kv.update(
                self.key, self.holder.encode(), last=entry.revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _take_over_if_stale(self, revision: int) -> bool:
        """Take over another holder's entry at ``revision`` once this replica has seen it
        unchanged for ``lease_s``; whether it holds the lease now."""
        now = time.monotonic()
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, now)
            return False
        if now - self._seen[1] < self.lease_s:
            return False
        try:
            self.revision = await self.kv.update(self.key, self.holder.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # written (renewed, removed, taken) since that look
        logger.info("lease of %s: not written for %.2fs, taken over", self.key, now - self._seen[1])
        return True

    async def current_holder(self) -> str | None:
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else entry.value.decode(errors="replace")

    async def take(self) -> None:
        """Wait until this replica holds the lease."""
        said = False
        while True:
            try:
                if await self.try_take():
                    logger.info("%s holds the lease of %s", self.holder, self.key)
                    return
                if not said:
                    logger.info(
                        "standby: %s holds the lease of %s", await self.current_holder(), self.key
                    )
                    said = True
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                logger.debug("lease of %s: %r", self.key, exc)
            await asyncio.sleep(LOOK_S)

    async def keep(self) -> None:
        """Write the lease again every third of its life until cancelled; raise LeaseLost
        when another holder has it or it could not be written for its whole life."""
        written = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                self.revision = await self.kv.update(
                    self.key, self.holder.encode(), last=self.revision
                )
                written = time.monotonic()
            except nats.js.errors.KeyWrongLastSequenceError:
                raise LeaseLost(f"the lease of {self.key} was taken by another replica") from None
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if time.monotonic() - written >= self.lease_s:
                    raise LeaseLost(
                        f"the lease of {self.key} could not be renewed for {self.lease_s}s: {exc!r}"
                    ) from None
                logger.warning("lease of %s not renewed yet: %r", self.key, exc)

    async def release(self) -> None:
        """Give the lease up (a clean stop), so a standby takes it at once."""
        if self.revision is None:
            return
        try:
            await self.kv.delete(self.key, last=self.revision)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            logger.info("lease of %s not released (it expires by itself): %r", self.key, exc)
        self.revision = None
