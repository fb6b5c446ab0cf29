"""The middleware a subscription's events pass through before their handler.

A middleware takes a verified event and the rest of the chain (``call_next``):
it calls ``call_next`` to go on, returns without calling it to let the event
go by unhandled (an event that is not for this handler: not a drop), or
raises :class:`~schemas.signing.Rejected` to drop it. Every ``Rejected``,
from a middleware or a handler, reaches the bus's one drop path, which counts
it by reason (``aaa_failover_events_dropped``) and logs it once. The model is
FastStream's middlewares: what every handler of a kind checks is written once
and put in front of the handlers.

Guards here: :func:`known_server` ("a server I know?"), :func:`known_client`
("a client I know?"), :func:`guard` for any other check, and :func:`taking` to
let by what a handler does not take. :func:`timed` measures the rest of the
chain; the bus puts it in front of every handler.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from schemas.errors import Rejected
from schemas.events import Event

Next = Callable[[Any], Awaitable[None]]
"""The rest of the chain: the next middleware, or the handler."""

Middleware = Callable[[Any, Next], Awaitable[None]]
"""``async def middleware(event, call_next) -> None``."""


def chain(middleware: Sequence[Middleware], handler: Next) -> Next:
    """``handler`` behind ``middleware``, the first one outermost."""
    call = handler
    for outer in reversed(middleware):
        call = _bind(outer, call)
    return call


def _bind(middleware: Middleware, call_next: Next) -> Next:
    async def call(event: Any) -> None:
        await middleware(event, call_next)

    return call


def _kind(event: Event) -> str:
    """The event's kind in a drop's detail: ``MetricsSample``."""
    return type(event).__name__


def guard(reason: str, ok: Callable[[Any], bool], why: Callable[[Any], str]) -> Middleware:
    """Go on with events ``ok`` accepts; drop the others as ``reason``, ``why`` saying why."""

    async def check(event: Any, call_next: Next) -> None:
        if not ok(event):
            raise Rejected(reason, why(event))
        await call_next(event)

    return check


def known_server(servers: Collection[str]) -> Middleware:
    """Drop (``unknown-server``) an event whose ``server`` is not one of ``servers``."""
    return guard(
        "unknown-server",
        lambda event: event.server in servers,
        lambda event: f"{_kind(event)} of unknown server {event.server!r}",
    )


def known_client(clients: Collection[str]) -> Middleware:
    """Drop (``unknown-client``) an event whose ``client`` is not one of ``clients``."""
    return guard(
        "unknown-client",
        lambda event: event.client in clients,
        lambda event: f"{_kind(event)} of unknown client {event.client!r}",
    )


def taking(wanted: Callable[[Any], bool]) -> Middleware:
    """Let by, unhandled and uncounted, the events ``wanted`` does not take."""

    async def select(event: Any, call_next: Next) -> None:
        if wanted(event):
            await call_next(event)

    return select


def timed(observe: Callable[[str, float], None]) -> Middleware:
    """Time the rest of the chain; ``observe(kind, seconds)`` for each event it handled.

    An event dropped or failed on the way is not observed.
    """

    async def timing(event: Any, call_next: Next) -> None:
        started = time.perf_counter()
        await call_next(event)
        observe(_kind(event), time.perf_counter() - started)

    return timing
