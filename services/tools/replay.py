"""`aaa-failover replay`: a recorded window as a timeline, or re-run in a sandbox.

Without ``--sandbox`` the window is printed, one line per event as `tail`
prints it, then a summary of what it held (events and bytes by type: the
figures for sizing the stream). With ``--sandbox PREFIX`` the recorded events
of the input kinds are published again, byte for byte, under ``PREFIX``
instead of the live prefix, each signed anew for its sandbox subject with the
sandbox's own key (a signature binds its subject, and the live side refuses
the sandbox's key), paced as they were recorded (``speed`` times faster) or as fast
as possible. A second copy of the services started with ``--sandbox PREFIX``
re-derives every decision from them; only such services accept events of any
age. By default what clients said after the first recorded plan (statuses,
acks) is left out: it answered the live decisions, not the sandbox's.
Nothing is ever published on the live prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TextIO

from schemas.subjects import Subjects, overlaps
from services.runtime.bus import Bus
from services.runtime.config import Config, ConfigError
from services.tools.recording import WindowSpec, connect, read_window, resolve
from services.tools.tail import (
    Seen,
    by_reason,
    event_type,
    format_line,
    json_line,
    matches,
    subject_party,
)

KINDS = (
    "metrics",
    "health",
    "incident",
    "plan",
    "notice",
    "delivery",
    "ack",
    "status",
    "request",
    "readmit",
    "control",
)
# What comes into the decision services from outside them: the collector's
# samples and the clients' own words. The sandbox's services make the rest.
INPUT_KINDS = ("metrics", "status", "ack", "request")
# What clients say in answer to decisions: after the first recorded plan it
# answers the live services' decisions, which the sandbox's may not repeat.
REACTION_KINDS = ("status", "ack")


def choose_kinds(asked: Sequence[str] | None) -> tuple[str, ...]:
    """The subject kinds to replay: ``asked`` (``all`` for every one), else the inputs."""
    if not asked:
        return INPUT_KINDS
    if "all" in asked:
        return KINDS
    unknown = sorted(set(asked) - set(KINDS))
    if unknown:
        raise ConfigError(f"replay: unknown kinds {unknown}; known: {', '.join(KINDS)}, all")
    return tuple(k for k in KINDS if k in asked)


def parse_speed(text: str) -> float:
    """``10x`` or ``10`` as 10.0; ConfigError unless positive."""
    try:
        speed = float(text.lower().removesuffix("x"))
    except ValueError:
        raise ConfigError(f"--speed {text!r}: expected a factor such as 10x") from None
    if not speed > 0:
        raise ConfigError("--speed must be positive")
    return speed


@dataclass(frozen=True)
class Selection:
    """The messages a replay sends, and how many it leaves out and why."""

    send: list[Seen]
    other_kinds: int
    rejected: int
    reactions: int


def select(
    seen: Sequence[Seen], prefix: str, kinds: Sequence[str], *, cut_reactions: bool
) -> Selection:
    """The verified messages of ``kinds`` in ``seen``, in stored order.

    With ``cut_reactions``, client statuses and acks stored after the first
    recorded FailoverPlan are left out: they answer the live decisions, and a
    sandbox that decided otherwise would be told clients moved that it never
    moved. A message that failed verification is never sent.
    """
    first_plan = next(
        (s.received for s in seen if subject_party(s.subject, prefix)[0] == "plan"), None
    )
    send: list[Seen] = []
    other_kinds = rejected = reactions = 0
    for item in seen:
        kind = subject_party(item.subject, prefix)[0]
        if kind not in kinds:
            other_kinds += 1
        elif not item.verified:
            rejected += 1
        elif (
            cut_reactions
            and kind in REACTION_KINDS
            and first_plan is not None
            and item.received >= first_plan
        ):
            reactions += 1
        else:
            send.append(item)
    return Selection(send, other_kinds, rejected, reactions)


def schedule(stored: Sequence[float], speed: float | None) -> list[float]:
    """When to publish each message, in seconds after the replay starts.

    The gaps between the stored times, divided by ``speed``; all zero when
    ``speed`` is None (as fast as possible).
    """
    if not stored or speed is None:
        return [0.0] * len(stored)
    first = stored[0]
    return [(t - first) / speed for t in stored]


@dataclass
class Sizes:
    """How many events of each type a window held and how many bytes they took."""

    events: Counter[str] = field(default_factory=Counter)
    payload_bytes: Counter[str] = field(default_factory=Counter)
    header_bytes: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, seen: Seen) -> None:
        kind = event_type(seen.event) if seen.event is not None else "?"
        self.events[kind] += 1
        self.payload_bytes[kind] += len(seen.payload)
        self.header_bytes[kind] += sum(len(k) + len(v) + 4 for k, v in seen.headers.items())
        if not seen.verified:
            self.rejected += 1
            self.reasons[seen.reason] += 1

    def lines(self, seconds: float) -> list[str]:
        """A table: type, count, mean bytes per event (payload + headers), total.

        The first line says how many failed verification and why (``?`` is the
        type of what did not decode): what replay into a sandbox, what-if and
        report skip."""
        total = sum(self.events.values())
        out = [f"{total} events over {seconds:.1f} s, {self.rejected} failed verification"]
        if self.rejected:
            out[0] += f" and are skipped ({by_reason(self.reasons)})"
        out.append(f"  {'type':<18} {'events':>8} {'bytes/event':>12} {'bytes':>10}")
        for kind, count in sorted(self.events.items()):
            size = self.payload_bytes[kind] + self.header_bytes[kind]
            out.append(f"  {kind:<18} {count:>8} {size / count:>12.0f} {size:>10}")
        return out


def sizes_of(seen: Iterable[Seen]) -> Sizes:
    sizes = Sizes()
    for item in seen:
        sizes.add(item)
    return sizes


def print_timeline(
    seen: Sequence[Seen],
    prefix: str,
    out: TextIO,
    *,
    server: str | None = None,
    client: str | None = None,
    as_json: bool = False,
) -> int:
    """Print the window; return how many events were shown."""
    shown = [s for s in seen if matches(s, prefix, server, client)]
    for item in shown:
        out.write((json_line(item) if as_json else format_line(item, prefix)) + "\n")
    if not as_json:
        span = (seen[-1].received - seen[0].received) if seen else 0.0
        out.write("\n".join(sizes_of(shown).lines(span)) + "\n")
    return len(shown)


@dataclass(frozen=True)
class Replayed:
    """What a replay into a sandbox did."""

    selection: Selection
    seconds: float

    def describe(self, sandbox: str, kinds: Sequence[str]) -> str:
        chosen = self.selection
        text = (
            f"replayed {len(chosen.send)} events of {', '.join(kinds)} into {sandbox}.> "
            f"in {self.seconds:.1f} s ({chosen.other_kinds} of other kinds left out, "
            f"{chosen.rejected} failed verification and were not replayed"
        )
        if chosen.reactions:
            text += f", {chosen.reactions} client statuses and acks after the first plan left out"
        return text + ")"


async def republish(
    bus: Bus,
    seen: Sequence[Seen],
    sandbox: str,
    *,
    kinds: Sequence[str] = INPUT_KINDS,
    cut_reactions: bool = True,
    speed: float | None = None,
    retention: tuple[float, int] | None = None,
) -> Replayed:
    """Publish what :func:`select` picks of ``seen`` again under ``sandbox``.

    Payloads are the recorded ones, signed again with the sandbox's key for
    their sandbox subjects. With ``retention`` (max age, max bytes) the sandbox
    gets its own stream.
    """
    live = bus.subjects
    if overlaps(sandbox, live.prefix):
        raise ConfigError(f"sandbox prefix {sandbox!r} overlaps the live prefix {live.prefix!r}")
    target = Bus(bus.nc, Subjects(sandbox), bus.keyring.for_sandbox(sandbox))
    if retention is not None:
        max_age_s, max_bytes = retention
        await target.ensure_stream(max_age_s=max_age_s, max_bytes=max_bytes)
    selection = select(seen, live.prefix, kinds, cut_reactions=cut_reactions)
    to_send = selection.send
    started = time.monotonic()
    for item, due in zip(to_send, schedule([s.received for s in to_send], speed), strict=True):
        wait = started + due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await target.publish_encoded(*target.resign(live.rehome(item.subject, sandbox), item))
    await bus.nc.flush()
    return Replayed(selection, time.monotonic() - started)


async def replay(
    config: Config,
    window: WindowSpec,
    *,
    out: TextIO,
    sandbox: str | None = None,
    kinds: Sequence[str] | None = None,
    speed: float | None = 1.0,
    server: str | None = None,
    client: str | None = None,
    as_json: bool = False,
    bus_url: str | None = None,
) -> int:
    """Read the window from the stream, then print it or replay it into ``sandbox``."""
    chosen = choose_kinds(kinds)
    if sandbox is not None and not (bus_url or config.bus.url):
        raise ConfigError(
            "a replay into a sandbox needs the live bus: set bus.url or --bus-url, "
            "or run it while `aaa-failover up` runs this config"
        )
    async with AsyncExitStack() as stack:
        bus = await connect(config, stack, name="replay", bus_url=bus_url)
        start, end, _ = await resolve(bus, window)
        seen = await read_window(bus, start, end)
        if sandbox is None:
            print_timeline(
                seen, config.bus.prefix, out, server=server, client=client, as_json=as_json
            )
            return 0
        if server is not None or client is not None:
            raise ConfigError("--server and --client only filter a printed timeline")
        done = await republish(
            bus,
            seen,
            sandbox,
            kinds=chosen,
            cut_reactions=not kinds,
            speed=speed,
            retention=(config.bus.stream_max_age_s, config.bus.stream_max_bytes),
        )
        out.write(done.describe(sandbox, chosen) + "\n")
        return 0
