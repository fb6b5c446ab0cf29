"""Decisions that survive a crash: durable JetStream consumers and acknowledged publishes.

An incident, a plan or a wave is a decision: lost, it strands clients. So a
service takes them from the stream through a durable consumer of its own
(``<service>-<kind>``, or ``<service>-<kind>-<server>`` for a replica given
``--only``) rather than a plain subscription: a message published while the
service was down waits for it, and one it was handling when it died comes
again. A message is acknowledged only once its handler has returned, that is
once the service's state is written; a handler that fails has it offered
again after :data:`RETRY_S`. Replicas that pull from the same consumer share
its messages, as a queue group shares a subject's.

What is offered again must be harmless twice: handlers are idempotent by
event id (a plan's notices, a wave's, an incident's state). The checks are
the bus's, except the replay window, which is measured from the moment the
stream stored the message, not from now: a decision that waited for a
restart is still fresh, while one an attacker publishes again later is stale
(within the stream's duplicate window, the same ``Nats-Msg-Id`` is not even
stored twice).

:func:`publish_stored` publishes a decision and waits for the stream's
acknowledgement, trying again (same id, so stored once) while the bus is
away. A service publishes a decision first and stores its own state after:
the stream is the log, and a service that stopped in between finds its last
decision there at start (:func:`last_stored`) and brings its state up to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas.events import Event
from schemas.signing import Rejected
from services.runtime.bus import Bus, Handler, settled, verify_event
from services.runtime.config import ConfigError
from services.runtime.middleware import Guard

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

ACK_WAIT_S = 5.0
"""How long a delivered message may go unacknowledged before the stream offers it again
(a handler still at work says so every :data:`PROGRESS_S`)."""
PROGRESS_S = 2.0
RETRY_S = 1.0
"""After a handler failed, when its message is offered again."""
MAX_DELIVER = 20
"""How often one message is offered before the stream gives it up (a handler that fails on
it every time is logged each time and counted in ``handler_errors``)."""
FETCH_WAIT_S = 1.0
PUBLISH_TIMEOUT_S = 2.0
PUBLISH_GIVE_UP_S = 60.0


def check_stored(event_time: float, stored_at: float, window_s: float) -> None:
    """Raise Rejected unless the event was stamped within ``window_s`` of the moment the
    stream stored it (``stale`` before, ``future`` after)."""
    if not event_time >= stored_at - window_s:  # NaN too
        raise Rejected("stale", f"stamped {stored_at - event_time:.1f}s before it was stored")
    if event_time > stored_at + window_s:
        raise Rejected("future", f"stamped {event_time - stored_at:.1f}s after it was stored")


class Consumer:
    """One durable consumer: fetch, check, handle, then acknowledge, until stopped."""

    def __init__(
        self,
        bus: Bus,
        name: str,
        handler: Handler[E],
        types: tuple[type[E], ...],
        guards: Sequence[Guard],
        accept_clients: bool,
        in_flight: int = 1,
    ) -> None:
        if in_flight < 1:
            raise ValueError("a consumer handles at least one message at a time")
        self.bus = bus
        self.name = name
        self.handler = handler
        self.types = types
        self.guards = guards
        self.accept_clients = accept_clients
        self.in_flight = in_flight
        self.stopping = asyncio.Event()
        self.sub: nats.js.JetStreamContext.PullSubscription | None = None

    def check(self, msg: Msg) -> Event:
        """The bus's checks of a stored message (see the module's docstring)."""
        bus = self.bus
        event = bus.verify(msg, self.accept_clients)
        if bus.guard.check_time:
            try:
                stored_at = msg.metadata.timestamp.timestamp()
            except Exception as exc:  # not a JetStream delivery's reply subject
                raise Rejected("bad-metadata", f"{msg.reply!r}: {exc}") from None
            check_stored(event.time, stored_at, bus.guard.window_s)
        return event

    async def handle(self, msg: Msg) -> None:
        """Handle one message and acknowledge it; offer it again if the handler failed.

        A handler still at work after :data:`PROGRESS_S` tells the stream so, and again
        every :data:`PROGRESS_S`, so the message is not offered to another replica
        meanwhile."""
        loop = asyncio.get_running_loop()
        progress: list[asyncio.Future[None]] = []

        def still_working() -> None:
            progress.append(asyncio.ensure_future(_quietly(msg.in_progress())))
            ticking[0] = loop.call_later(PROGRESS_S, still_working)

        ticking = [loop.call_later(PROGRESS_S, still_working)]
        try:
            done = await self.bus.deliver(msg, self.handler, self.types, self.guards, self.check)
        finally:
            ticking[0].cancel()
        if progress:
            await asyncio.gather(*progress)
        if done:
            await _quietly(msg.ack())
        else:
            await _quietly(msg.nak(delay=RETRY_S))

    async def run(self) -> None:
        """Fetch and handle messages until :meth:`stop`: one at a time, or up to
        ``in_flight`` side by side, each acknowledged when its own handler returns;
        stopped, it finishes those in hand first."""
        assert self.sub is not None
        busy: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping.is_set():
                room = self.in_flight - len(busy)
                if room == 0:
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    # one at a time even with room for more: with nats-py's batched fetch,
                    # parts of a plan went unhandled for over 20 s (bench/fanout.py)
                    msgs = await self.sub.fetch(1, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    if self.bus.nc.is_closed:
                        return
                    logger.debug("consumer %s: %r", self.name, exc)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    if self.in_flight == 1:
                        await self.handle(msg)
                        continue
                    task = asyncio.create_task(self.handle(msg))
                    busy.add(task)
                    task.add_done_callback(busy.discard)
                # the handler starts before the next fetch's request is sent: on the
                # path from a decision to a client's notice, that request can wait
                await asyncio.sleep(0)
        finally:
            if busy:
                await asyncio.wait(busy)

    def stop(self) -> None:
        self.stopping.set()


async def _quietly(reply: object) -> None:
    """Send an acknowledgement; one lost (the bus away) only means the message comes again."""
    try:
        await reply  # type: ignore[misc]
    except (nats.errors.Error, OSError) as exc:
        logger.debug("acknowledgement not sent: %r", exc)


async def consume(
    bus: Bus,
    subject: str,
    handler: Handler[E],
    *,
    types: tuple[type[E], ...],
    durable: str,
    accept_clients: bool = False,
    guards: Sequence[Guard] = (),
    in_flight: int = 1,
) -> Consumer:
    """Create (or find again) the durable consumer ``durable`` of ``subject`` on the prefix's
    stream, and start handling its messages (stopped with the bus's other subscriptions).

    A consumer made for the first time starts with what is published from now on;
    found again, with the first message it has not acknowledged. Messages are
    handled in the order stored, one at a time, unless ``in_flight`` lets that
    many be handled side by side (for a handler whose messages do not depend
    on each other: the parts of a plan, each about other clients).
    """
    stream = bus.subjects.stream_name()
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=ACK_WAIT_S,
        max_deliver=MAX_DELIVER,
    )
    # made before, it is updated to these settings where nats-server allows, and keeps
    # its place; where it does not (another deliver policy), the error says so
    try:
        await bus.js.add_consumer(stream, config)
    except nats.js.errors.BadRequestError as exc:
        raise ConfigError(
            f"durable consumer {durable} of stream {stream} exists with settings that cannot "
            f"change ({exc.description}): delete it (nats consumer rm {stream} {durable}) "
            "to start it afresh"
        ) from None
    consumer = Consumer(bus, durable, handler, types, guards, accept_clients, in_flight)
    consumer.sub = await bus.js.pull_subscribe_bind(durable=durable, stream=stream)
    bus.adopt(consumer.sub._sub, consumer.stop, asyncio.ensure_future(consumer.run()))
    return consumer


async def publish_stored(
    bus: Bus,
    subject: str,
    event: Event,
    *,
    give_up_s: float = PUBLISH_GIVE_UP_S,
) -> None:
    """Publish ``event`` on ``subject`` and wait until the stream has stored it.

    While the stream does not answer (the bus away, a cluster electing a
    leader), the same bytes go again, every second, for up to ``give_up_s``;
    the stream stores them once (``Nats-Msg-Id`` is the event's id). Then the
    last error is raised.
    """
    payload, headers = bus.encode(subject, event)
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            await bus.js.publish(subject, payload, timeout=PUBLISH_TIMEOUT_S, headers=headers)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("%s not stored yet (%r): trying again", subject, exc)
            await asyncio.sleep(RETRY_S)
            continue
        bus.counters.published += 1
        return


async def last_stored(bus: Bus, subject: str, types: tuple[type[E], ...]) -> E | None:
    """The last event the stream holds on ``subject``, verified as the bus verifies a live
    one (signature, signer's rights, subject); None if there is none, or if it does not
    verify or is not of ``types`` (then dropped through the bus's drop path)."""
    stream = bus.subjects.stream_name()
    try:
        stored = await settled(
            f"the last event on {subject}", lambda: bus.js.get_last_msg(stream, subject)
        )
    except nats.js.errors.NotFoundError:
        return None
    try:
        event = verify_event(
            bus.keyring.verification_keys(False),
            stored.headers,
            subject,
            stored.data or b"",
            bus.keyring.may_sign,
        )
        if not isinstance(event, types):
            raise Rejected("unexpected-type", type(event).__name__)
    except Rejected as rejected:
        bus.drop(rejected.reason, f"stored {rejected.detail}", subject=subject)
        return None
    return event
