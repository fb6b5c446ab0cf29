"""The client registry: every client the targeter may move, and where it is now.

Static facts come from the config (address, device group, site, priority,
alternates, expected request rate); live ones from the clients' agents,
which announce themselves with signed ``ClientStatus`` events (the server a
client is on now, its measured request rate). The registry is kept in the
JetStream KV bucket ``registry`` so a restarted targeter has it at once. A
client must be in the config: the services hold its secret, which is how its
announcements are verified.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

import msgspec

from schemas.events import ClientStatus
from services.runtime.config import ClientConfig, Config


class ClientRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One registered client."""

    id: str
    ip: str
    home: str
    current: str
    group: str = ""
    site: str = ""
    priority: int = 100
    alternates: tuple[str, ...] = ()
    alternates_from: Literal["client", "notice"] = "client"
    rate: float = 0.0
    measured_rate: float | None = None
    updated: float = 0.0

    @property
    def load(self) -> float:
        """The request rate this client brings: measured if known, else expected."""
        return self.rate if self.measured_rate is None else self.measured_rate


def record_from_config(client: ClientConfig) -> ClientRecord:
    """A client as the config describes it, on its home server."""
    return ClientRecord(
        id=client.id,
        ip=client.ip,
        home=client.home,
        current=client.home,
        group=client.group,
        site=client.site,
        priority=client.priority,
        alternates=tuple(client.alternates),
        alternates_from=client.alternates_from,
        rate=client.own_rate,
    )


def merge(config: Config, stored: Mapping[str, ClientRecord]) -> dict[str, ClientRecord]:
    """The registry of ``config``'s clients: static fields from the config, live ones stored.

    A stored client that left the config is dropped; one whose stored server
    is no longer in the config is taken to be home.
    """
    servers = {s.id for s in config.servers}
    merged: dict[str, ClientRecord] = {}
    for client in config.clients:
        fresh = record_from_config(client)
        old = stored.get(client.id)
        if old is not None and old.current in servers:
            fresh = msgspec.structs.replace(
                fresh,
                current=old.current,
                measured_rate=old.measured_rate,
                updated=old.updated,
            )
        merged[client.id] = fresh
    return merged


def apply_status(
    record: ClientRecord, status: ClientStatus, servers: Collection[str]
) -> ClientRecord | None:
    """The record after an agent's announcement; None if it changes nothing worth storing.

    Announcements older than what is recorded, or naming a server the
    config does not know, change nothing; nor does a measured rate within
    ``RATE_TOLERANCE`` of the recorded one, so steady clients cost no writes.
    """
    if status.time < record.updated or status.current not in servers:
        return None
    rate = record.measured_rate
    if status.rate is not None and (rate is None or _differs(status.rate, rate)):
        rate = status.rate
    if status.current == record.current and rate == record.measured_rate:
        return None
    return msgspec.structs.replace(
        record, current=status.current, measured_rate=rate, updated=status.time
    )


RATE_TOLERANCE = 0.2


def _differs(new: float, old: float) -> bool:
    return abs(new - old) > RATE_TOLERANCE * max(abs(old), 1e-9)


def moved(record: ClientRecord, server: str, when: float) -> ClientRecord:
    """The record of a client that acked a move to ``server`` at ``when``."""
    if when < record.updated:
        return record
    return msgspec.structs.replace(record, current=server, updated=when)
