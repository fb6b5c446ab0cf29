"""Where each client is: its home, and the server the clients' own events put it on.

One answer for every reader: the targeter's registry and core, the
readmitter (each client's home), what-if (through the targeter's core) and
the incident report. A client starts on its home, from the config; a
``ClientStatus`` says the server it is on (``current``); an accepted ``Ack``
the server it moved to (``now_on``). Readers that keep more (the registry:
rates, the age of what it heard, only servers of the config) apply their own
rules on top of :func:`now_on`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from schemas.events import Ack, ClientStatus, Event
from services.runtime.config import Config


def homes(config: Config) -> dict[str, str]:
    """Each client of ``config`` and its home server."""
    return {c.id: c.home for c in config.clients}


def now_on(event: Event) -> tuple[str, str] | None:
    """The client ``event`` places and the server it says that client is on now, or None.

    A ClientStatus naming its ``current`` server, or an accepted Ack naming
    the server the client is ``now_on``; anything else places no one.
    """
    if isinstance(event, ClientStatus) and event.current:
        return event.client, event.current
    if isinstance(event, Ack) and event.accepted and event.now_on:
        return event.client, event.now_on
    return None


class Placement:
    """Where each client is, followed event by event."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self.where = dict(where)

    @classmethod
    def start(cls, config: Config | None, events: Iterable[Event] = ()) -> Placement:
        """Every client of ``config`` on its home; a client the config lacks (or, without a
        config, any client) on the home its first ClientStatus in ``events`` names."""
        where = homes(config) if config is not None else {}
        for event in events:
            if isinstance(event, ClientStatus) and event.client not in where and event.home:
                where[event.client] = event.home
        return cls(where)

    def follow(self, event: Event) -> tuple[str, str | None, str] | None:
        """Move the client ``event`` places; ``(client, before, after)`` if it moved, else None."""
        placed = now_on(event)
        if placed is None:
            return None
        client, after = placed
        before = self.where.get(client)
        if before == after:
            return None
        self.where[client] = after
        return client, before, after
