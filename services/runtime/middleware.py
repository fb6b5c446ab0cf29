"""The guards a subscription's events pass, in order, before their handler.

A guard looks at a verified event and says whether the handler takes it:
True to go on, False to let it go by unhandled (an event that is not for
this handler: not a drop), or it raises :class:`~schemas.errors.Rejected` to
drop it. Every ``Rejected``, from a guard or a handler, reaches the bus's one
drop path, which counts it by reason (``aaa_failover_events_dropped``) and
logs it once. As FastStream's middlewares, what every handler of a kind
checks is written once and put in front of the handlers; guards are plain
functions, not coroutines wrapped round each other, because they run on every
event of the hot subscriptions (a sample per server per interval).

Here: :func:`known_server` ("a server I know?"), :func:`known_client` ("a
client I know?"), :func:`guard` for any other check, and :func:`taking` to
let by what a handler does not take. :func:`admits` runs a subscription's
guards; the bus times the handler itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from schemas.errors import Rejected

Guard = Callable[[Any], bool]
"""``guard(event) -> bool``: go on (True), let by unhandled (False), or raise Rejected."""


def admits(guards: Sequence[Guard], event: Any) -> bool:
    """Whether every guard, in order, lets ``event`` on to the handler; the first that
    does not stops the others. Rejected propagates."""
    for g in guards:  # noqa: SIM110 (a loop, not all() over a generator: it runs per event)
        if not g(event):
            return False
    return True


def kind(event: Any) -> str:
    """The event's kind in a drop's detail and the handler timings: ``MetricsSample``."""
    return type(event).__name__


def guard(reason: str, ok: Callable[[Any], bool], why: Callable[[Any], str]) -> Guard:
    """Go on with events ``ok`` accepts; drop the others as ``reason``, ``why`` saying why."""

    def check(event: Any) -> bool:
        if not ok(event):
            raise Rejected(reason, why(event))
        return True

    return check


def known_server(servers: Collection[str]) -> Guard:
    """Drop (``unknown-server``) an event whose ``server`` is not one of ``servers``."""

    def check(event: Any) -> bool:
        if event.server not in servers:
            raise Rejected("unknown-server", f"{kind(event)} of unknown server {event.server!r}")
        return True

    return check


def known_client(clients: Collection[str]) -> Guard:
    """Drop (``unknown-client``) an event whose ``client`` is not one of ``clients``."""

    def check(event: Any) -> bool:
        if event.client not in clients:
            raise Rejected("unknown-client", f"{kind(event)} of unknown client {event.client!r}")
        return True

    return check


def taking(wanted: Callable[[Any], bool]) -> Guard:
    """Let by, unhandled and uncounted, the events ``wanted`` does not take."""
    return wanted
