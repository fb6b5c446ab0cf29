"""What the stream recorded: a window of events read back from JetStream.

Every event on ``<prefix>.>`` is captured by the stream of the prefix (see
:meth:`Bus.ensure_stream`). :func:`read_window` reads the messages stored
between two times through a short-lived consumer and checks each one's
signature as a service would, but not its age: a recorded event is old by
nature. A stored message that does not verify or decode (forged, or bytes no
decoder takes, such as arrays nested past the recursion limit) never stops a
tool: it is kept with its reason, left out of the events, and counted
(:attr:`Loaded.skipped`, logged by :func:`load`). :func:`find_incident` finds
when an incident opened and ended, and :func:`incident_window` the window
around it that replay, what-if and report read. :func:`parse_time` reads the
times an operator types.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas.events import Event, Incident
from services.runtime.bus import Bus, Keyring, verify_event
from services.runtime.config import Config
from services.runtime.natsserver import EmbeddedNats, NatsServerError
from services.tools.errors import ToolError
from services.tools.tail import Seen, by_reason, checked, skipped

logger = logging.getLogger(__name__)

FETCH_BATCH = 512
FETCH_TIMEOUT_S = 1.0

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RecordingError(ToolError):
    """What an operator asked of the recording cannot be answered (one line)."""


def parse_time(text: str, now: float | None = None) -> float:
    """A UNIX time from ``text``: ISO 8601 (UTC unless it says otherwise),
    UNIX seconds, ``now``, or a time before now such as ``-90s``, ``-15m``, ``-2h``."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise RecordingError(
            f"time {text!r}: expected ISO 8601, UNIX seconds, 'now' or -N[smhd]"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def check_recorded(bus: Bus, msg: Msg, stored_at: float) -> Seen:
    """``msg`` as read from the stream: its signature checked, its age not."""
    keys = bus.keyring.verification_keys(True)
    return checked(
        msg,
        lambda m: verify_event(keys, m.headers, m.subject, m.data, bus.keyring.may_sign),
        stored_at,
    )


async def read_window(bus: Bus, start: float, end: float, subject: str | None = None) -> list[Seen]:
    """Every message stored from ``start`` to ``end`` on ``subject`` (default: all of
    the prefix), oldest first, each checked by :func:`check_recorded`.

    ``Seen.received`` is when the stream stored it. Raises RecordingError if
    the prefix has no stream.
    """
    if end < start:
        raise RecordingError("the window ends before it starts")
    stream = bus.subjects.stream_name()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.datetime.fromtimestamp(start, datetime.UTC),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
    )
    try:
        sub = await bus.js.pull_subscribe(subject or bus.subjects.all, stream=stream, config=config)
    except nats.js.errors.NotFoundError:
        raise RecordingError(f"no stream {stream} on this bus: nothing was recorded") from None
    seen: list[Seen] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                batch = await sub.fetch(min(FETCH_BATCH, pending), timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                break
            for msg in batch:
                meta = msg.metadata
                pending = meta.num_pending
                stored_at = meta.timestamp.timestamp()
                if stored_at > end:
                    pending = 0
                    break
                seen.append(check_recorded(bus, msg, stored_at))
    finally:
        await sub.unsubscribe()
        try:
            # pull_subscribe names the ephemeral consumer in the config it is given
            await bus.js.delete_consumer(stream, str(config.name))
        except nats.errors.Error as exc:
            logger.debug("consumer of the window left to expire: %s", exc)
    return seen


def events_of(seen: Sequence[Seen]) -> list[Event]:
    """The verified events of ``seen``, in the order they were made (``event.time``)."""
    events = [s.event for s in seen if s.verified and s.event is not None]
    return sorted(events, key=lambda event: event.time)


@dataclass(frozen=True)
class IncidentSpan:
    """When one incident opened and (if it did) closed, and whose it was."""

    incident_id: str
    server: str
    opened_at: float
    ended_at: float
    closed: bool
    relapses: int


async def find_incident(bus: Bus, incident_id: str) -> IncidentSpan:
    """The span of ``incident_id``, from its Incident events in the stream."""
    stored = await read_window(bus, 0.0, time.time() + 60, bus.subjects.incident("*"))
    mine = [
        s.event
        for s in stored
        if s.verified and isinstance(s.event, Incident) and s.event.incident_id == incident_id
    ]
    if not mine:
        known = sorted({s.event.incident_id for s in stored if isinstance(s.event, Incident)})
        listing = ", ".join(known[-5:]) or "none"
        raise RecordingError(
            f"no incident {incident_id!r} in the stream (the latest recorded: {listing})"
        )
    mine.sort(key=lambda e: e.time)
    closed = [e for e in mine if e.state == "closed"]
    last = closed[0] if closed else mine[-1]
    return IncidentSpan(
        incident_id=incident_id,
        server=mine[0].server,
        opened_at=mine[0].opened_at,
        ended_at=last.time,
        closed=bool(closed),
        relapses=max(e.relapses for e in mine),
    )


def incident_window(span: IncidentSpan, before_s: float, after_s: float) -> tuple[float, float]:
    """The window around ``span``: ``before_s`` ahead of the opening (to see health
    fall) to ``after_s`` past the close (to see clients settle)."""
    return span.opened_at - before_s, span.ended_at + after_s


@dataclass(frozen=True)
class WindowSpec:
    """The window an operator asked for: an incident, times, or both (times win)."""

    incident: str | None = None
    start: float | None = None
    end: float | None = None
    before_s: float = 30.0
    after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.incident is None and self.start is None:
            raise RecordingError("name an incident (--incident) or a start time (--from)")
        if self.before_s < 0 or self.after_s < 0:
            raise RecordingError("--before and --after must not be negative")


async def resolve(bus: Bus, spec: WindowSpec) -> tuple[float, float, IncidentSpan | None]:
    """The start and end of ``spec`` on this bus, and its incident's span if it names one."""
    span = await find_incident(bus, spec.incident) if spec.incident is not None else None
    start, end = (
        incident_window(span, spec.before_s, spec.after_s) if span is not None else (0.0, 0.0)
    )
    start = spec.start if spec.start is not None else start
    end = spec.end if spec.end is not None else (end if span is not None else time.time())
    if end < start:
        raise RecordingError("the window ends before it starts")
    return start, end, span


@dataclass(frozen=True)
class Loaded:
    """A window read back: what was stored, its verified events, and where it lies.

    ``skipped`` counts, by reason, the stored messages left out of ``events``
    because they did not verify or decode.
    """

    seen: list[Seen]
    events: list[Event]
    start: float
    end: float
    span: IncidentSpan | None
    skipped: Counter[str] = field(default_factory=Counter)


async def connect(
    config: Config, stack: AsyncExitStack, *, name: str, bus_url: str | None = None
) -> Bus:
    """A bus to read the recording from, closed with ``stack``.

    ``bus_url`` (the command line passes ``--bus-url``, or the bus of an
    ``aaa-failover up`` running the config: services/runtime/busfile.py) or
    the config's ``bus.url``; a config with neither is an embedded farm that
    has stopped (``up`` or ``demo --keep`` with no bus), whose stream is read
    from its stored folder by a nats-server of its own.
    """
    url = bus_url or config.bus.url
    if url is None:
        store = config.path(".nats")
        if not store.is_dir():
            raise RecordingError(
                f"no bus.url, --bus-url, running `aaa-failover up` or stored stream in {store}"
            )
        try:
            url = stack.enter_context(EmbeddedNats(store)).url
        except NatsServerError as exc:
            raise RecordingError(f"cannot open the stored stream in {store}: {exc}") from None
    return await Bus.connect(
        config.bus, Keyring.from_config(config), name=name, stack=stack, url=url
    )


async def load(config: Config, spec: WindowSpec, *, bus_url: str | None = None) -> Loaded:
    """Connect with ``config``'s keys and read the window ``spec`` names."""
    async with AsyncExitStack() as stack:
        bus = await connect(config, stack, name="recording", bus_url=bus_url)
        start, end, span = await resolve(bus, spec)
        seen = await read_window(bus, start, end)
    left_out = skipped(seen)
    if left_out:
        logger.warning(
            "skipped %d of %d stored messages in the window: they did not verify or decode (%s)",
            sum(left_out.values()),
            len(seen),
            by_reason(left_out),
        )
    return Loaded(seen, events_of(seen), start, end, span, left_out)
