"""`aaa-failover tail`: every event on the bus, one line each, and whether it verified.

A message is checked as a service would check it (:meth:`Bus.check` with the
clients' keys accepted, so the replay guard marks a repeat ``replayed``) and
then shown whatever the outcome: a forged or undecodable event is exactly what
an operator tails the bus to find. :class:`Seen` is one message as received;
:func:`format_line`, :func:`json_line` and :func:`matches` are pure functions
of it. :func:`tail` wires them to a raw subscription.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec
from nats.aio.msg import Msg

from schemas import codec
from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverNotice,
    FailoverPlan,
    HealthReport,
    Incident,
    MetricsSample,
    ReadmitNotice,
    ReadmitRequest,
    ReadmitWave,
    ServerControl,
)
from schemas.signing import AUTH_HEADER, KEY_HEADER, SERVER_HEADER, Rejected
from schemas.subjects import CLIENT_KINDS, SERVER_KINDS
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from services.runtime.lifecycle import ShutdownTrigger, wait_for_shutdown

logger = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Seen:
    """One message as the tail received it, and what checking it found.

    ``event`` is the decoded event, also when the check rejected it (a forged
    event still decodes); it is None only if the payload is not an event.
    ``reason`` and ``detail`` come from :class:`Rejected`; both are empty when
    ``verified``.
    """

    subject: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    event: Event | None = None
    verified: bool = False
    reason: str = ""
    detail: str = ""
    received: float = 0.0


def decode_for_display(payload: bytes, headers: Mapping[str, str]) -> Event | None:
    """The event in ``payload`` whatever its signature, or None if it is not one."""
    try:
        return codec.decode(payload, headers.get(codec.CONTENT_TYPE))
    except codec.DecodeError:
        return None


def checked(msg: Msg, check: Callable[[Msg], Event], received: float) -> Seen:
    """``msg`` as ``check`` finds it (an event, or Rejected), kept either way.

    Never raises: a failure of the check that is not a Rejected (none is
    known; the codec and the signature check turn everything into one) is
    kept as ``unreadable``, so that no stored or live message stops a tool.
    """
    headers: Mapping[str, str] = msg.headers or {}
    try:
        event = check(msg)
    except Rejected as rejected:
        reason, detail = rejected.reason, rejected.detail
    except Exception as exc:
        reason, detail = "unreadable", f"{type(exc).__name__}: {exc}"[:200]
    else:
        return Seen(msg.subject, msg.data, headers, event, True, received=received)
    return Seen(
        msg.subject,
        msg.data,
        headers,
        decode_for_display(msg.data, headers),
        False,
        reason,
        detail,
        received,
    )


def skipped(seen: Iterable[Seen]) -> Counter[str]:
    """How many of ``seen`` failed their check, by reason (``undecodable``,
    ``bad-signature``, ...): what the tools that act on events leave out."""
    return Counter(s.reason for s in seen if not s.verified)


def by_reason(counts: Counter[str]) -> str:
    """``counts`` in words, by reason: ``2 undecodable, 1 bad-signature``."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def inspect(bus: Bus, msg: Msg, now: float | None = None) -> Seen:
    """Check ``msg`` as a service with the clients' keys would, and keep it either way."""
    return checked(
        msg, lambda m: bus.check(m, accept_clients=True), time.time() if now is None else now
    )


def utc_ms(timestamp: float) -> str:
    """``timestamp`` as ISO 8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z.

    A time no calendar holds (NaN, infinite, past year 9999: what an unsigned or
    forged event may carry) is shown as the number it is, never raised.
    """
    try:
        whole = int(timestamp)
        millis = int((timestamp - whole) * 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
    except (OverflowError, ValueError, OSError):
        return f"time={timestamp!r}"


def subject_party(subject: str, prefix: str) -> tuple[str, str]:
    """The kind (``health``, ``ack``...) and the server or client token of ``subject``."""
    rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else subject
    kind, _, token = rest.partition(".")
    return kind, token


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _short(event_id: str) -> str:
    return event_id[:8]


def _metrics(e: MetricsSample) -> str:
    threads = f"{_opt(e.threads_active)}/{_opt(e.threads_total)}"
    if e.threads_max is not None:
        threads += f" max={e.threads_max}"
    parts = [
        f"seq={e.seq}",
        f"status_ok={e.status_ok}",
        f"queue={_opt(e.queue_len)}",
        f"threads={threads}",
        f"cpu={_num(e.cpu_percent, 1)}",
        f"mem={_num(e.memory_percent, 1)}",
    ]
    if e.probes:
        parts.append(f"probes={e.probes_slow}/{e.probes} slow")
    if e.outstanding is not None:
        parts.append(f"outstanding={e.outstanding}")
    down = [s.name for s in e.services if not s.ok]
    if down:
        parts.append("down=" + ",".join(down))
    if e.errors:
        parts.append(f"errors={len(e.errors)}")
    return " ".join(parts)


def _health(e: HealthReport) -> str:
    return f"health={_num(e.health)} limiting={e.limiting or '-'} state={e.state}"


def _incident(e: Incident) -> str:
    text = f"state={e.state} health={_num(e.health)} incident={_short(e.incident_id)}"
    return text + (f" relapses={e.relapses}" if e.relapses else "")


def _plan(e: FailoverPlan) -> str:
    text = f"moves={len(e.moves)} unplaced={len(e.unplaced)} step={e.step}"
    if e.parts > 1:
        text += f" part={e.part}/{e.parts}"
    return text + f" health={_num(e.health)} incident={_short(e.incident_id)}"


def _failover_notice(e: FailoverNotice) -> str:
    to = ",".join(e.alternates) or "-"
    return f"client={e.client} from={e.server} to={to} seq={e.seq}"


def _readmit_notice(e: ReadmitNotice) -> str:
    return f"client={e.client} home={e.server} granted={e.granted} wave={e.wave} seq={e.seq}"


def _delivery(e: Delivery) -> str:
    text = f"outcome={e.outcome} {e.notice_type} attempts={e.attempts}"
    return text + (f" latency={e.latency_s:.3f}s" if e.latency_s is not None else "")


def _ack(e: Ack) -> str:
    text = f"accepted={e.accepted} now_on={e.now_on or '-'} notice={_short(e.notice_id)}"
    return text + (f" reason={e.reason}" if e.reason else "")


def _request(e: ReadmitRequest) -> str:
    return f"client={e.client} home={e.server} reason={e.reason}"


def _status(e: ClientStatus) -> str:
    text = (
        f"home={e.home} current={e.current} rate={_num(e.rate, 1)} "
        f"sent={e.sent} answered={e.answered} lost={e.lost}"
    )
    if e.relayed:
        text += f" relayed={e.relayed} relayed_lost={e.relayed_lost}"
    for up in e.upstreams:
        if up.answers or up.timeouts or up.state != "alive":
            p90 = f",p90={up.p90_s:.3f}s" if up.p90_s is not None else ""
            text += f" {up.server}=[{up.state},ok={up.answers},late={up.timeouts}{p90}]"
    for change in e.changes:
        text += f" {change.server}:{change.before}->{change.after}({change.reason})"
    return text


def _wave(e: ReadmitWave) -> str:
    text = f"wave={e.wave} clients={len(e.clients)} deferred={len(e.deferred)}"
    return text + (" final" if e.final else "")


def _control(e: ServerControl) -> str:
    return f"stalled_workers={_opt(e.stalled_workers)} service_time_ms={_opt(e.service_time_ms)}"


_SUMMARIES: dict[type[Event], Callable[[Any], str]] = {
    MetricsSample: _metrics,
    HealthReport: _health,
    Incident: _incident,
    FailoverPlan: _plan,
    FailoverNotice: _failover_notice,
    ReadmitNotice: _readmit_notice,
    Delivery: _delivery,
    Ack: _ack,
    ReadmitRequest: _request,
    ClientStatus: _status,
    ReadmitWave: _wave,
    ServerControl: _control,
}


def summary(event: Event) -> str:
    """The few fields of ``event`` that matter for its type."""
    describe = _SUMMARIES.get(type(event))
    return describe(event) if describe is not None else ""


def event_type(event: Event) -> str:
    """The ``type`` tag of ``event``."""
    return str(type(event).__struct_config__.tag)


def is_notice(seen: Seen) -> bool:
    """Whether ``seen`` is a notice to a client (which carries an authenticator)."""
    return isinstance(seen.event, FailoverNotice | ReadmitNotice)


def verdict(seen: Seen) -> str:
    """``ok`` or ``REJECTED <reason>``."""
    return "ok" if seen.verified else f"REJECTED {seen.reason}"


def format_line(seen: Seen, prefix: str) -> str:
    """One human-readable line: time, subject's party, type, fields, verdict."""
    kind, token = subject_party(seen.subject, prefix)
    where = f"{kind}.{token}" if token else kind
    event = seen.event
    if event is None:
        when = utc_ms(seen.received)
        what = "?"
        fields = f"undecodable {len(seen.payload)} bytes"
    else:
        when = utc_ms(event.time)
        what = event_type(event)
        fields = summary(event)
    if is_notice(seen):
        auth = "present" if seen.headers.get(AUTH_HEADER) else "missing"
        fields += f" auth={auth} auth_server={seen.headers.get(SERVER_HEADER, '-')}"
    return f"{when}  {where:<16} {what:<16} {fields}  [{verdict(seen)}]"


def to_json(seen: Seen) -> dict[str, Any]:
    """``seen`` as a JSON-ready object.

    ``event`` holds the decoded event (its fields, ``type`` included; nested so
    that an event's own ``reason`` field is not confused with the check's);
    an undecodable payload is in ``raw`` (text) or ``raw_base64`` instead.
    ``reason`` is the rejection reason, null when ``verified``.
    """
    out: dict[str, Any] = {
        "subject": seen.subject,
        "verified": seen.verified,
        "reason": None if seen.verified else seen.reason,
        "detail": seen.detail or None,
        "key": seen.headers.get(KEY_HEADER),
        "received": seen.received,
    }
    if is_notice(seen):
        out["auth"] = bool(seen.headers.get(AUTH_HEADER))
        out["auth_server"] = seen.headers.get(SERVER_HEADER)
    if seen.event is not None:
        out["event"] = msgspec.to_builtins(seen.event)
    else:
        try:
            out["raw"] = seen.payload.decode()
        except UnicodeDecodeError:
            out["raw_base64"] = base64.b64encode(seen.payload).decode()
    return out


def json_line(seen: Seen) -> str:
    """:func:`to_json` as one line of JSON."""
    return _json.encode(to_json(seen)).decode()


def matches(seen: Seen, prefix: str, server: str | None, client: str | None) -> bool:
    """Whether ``seen`` names ``server`` and ``client`` (None: any).

    The event's own ``server`` / ``client`` field decides; for a payload that
    is not an event, the token of a subject of that kind does.
    """
    kind, token = subject_party(seen.subject, prefix)
    for wanted, name, kinds in ((server, "server", SERVER_KINDS), (client, "client", CLIENT_KINDS)):
        if wanted is None:
            continue
        if seen.event is not None:
            have = getattr(seen.event, name, None)
        else:
            have = token if kind in kinds else None
        if have != wanted:
            return False
    return True


async def tail(
    config: Config,
    *,
    subject: str | None = None,
    server: str | None = None,
    client: str | None = None,
    as_json: bool = False,
    out: TextIO,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Print every message on ``subject`` (default: all of the prefix) until shutdown.

    ``ready`` is set once the subscription is in place on the server. Stops
    early, quietly, if ``out`` is closed (a pipe to `head`).
    """
    prefix = config.bus.prefix
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(
            config.bus, Keyring.from_config(config), name="tail", stack=stack, url=bus_url
        )
        closed = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            if closed.is_set():
                return
            seen = inspect(bus, msg)
            if not matches(seen, prefix, server, client):
                return
            try:
                out.write((json_line(seen) if as_json else format_line(seen, prefix)) + "\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                closed.set()

        watched = subject or bus.subjects.all
        await bus.subscribe_raw(watched, on_message)
        await bus.nc.flush()
        logger.info("tail of %s started", watched)
        if ready is not None:
            ready.set()
        shutdown = asyncio.ensure_future(wait_for_shutdown(shutdown_trigger))
        output_closed = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({shutdown, output_closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (shutdown, output_closed):
                waiter.cancel()
            await asyncio.gather(shutdown, output_closed, return_exceptions=True)
        await bus.stop_receiving()
