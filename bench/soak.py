"""Soak: the whole farm at ten times its normal event rate, beside the same farm at the
normal rate; memory growth per service and every event lost.

The farm is the demo's (``services/launch/farm.py``): an embedded nats-server, three
reference servers ``A``, ``B``, ``C`` of 8 workers with the collector's latency probes,
and 21 clients, 7 homed on each server. Every service is its own process
(``python -m services.launch.cli run <service>``): the three reference servers
(``aaa --only X``), collector, evaluator, targeter, notifier, readmitter, and three
agents of 7 clients each, so that each process's memory is its own.

**The normal rate** (1x) is the product's defaults, which the demo also runs with:

- collector every 0.5 s (Status-Server timeout 0.25 s), 10 latency probes per interval
  to each server: 2 samples and 20 probes a second per server;
- each agent's status every 1 s per client (``agent.status_interval_s``);
- each client's own load 2 Access-Requests a second (``DEFAULT_CLIENT_RATE``): 42 a
  second for the farm.

**Ten times** (10x) divides both intervals by ten and multiplies the request rate by ten:
collector every 0.05 s (timeout 0.025 s, 200 probes a second per server), a status every
0.1 s per client (210 a second), 20 Access-Requests a second per client (420 a second).
The rest of the settings (the demo's thresholds, steps and waves) are the same in both.

Throughout each run, every ``INCIDENT_EVERY_S``, one server in turn (A, B, C, A, ...)
has 7 of its 8 workers stalled by a ``ServerControl`` for ``STALL_S`` (as the demo's
incident) and is then restored: the incident opens, its clients move, and it closes
with every client home, so the decision paths run, not only the samples.

Measured, per process (the nats-server too):

- **RSS**, with psutil every ``sample_s``: after the warm-up (the median of the first
  three samples from then on), at the end (the median of the last three), the growth
  in %, and the least-squares slope over every sample after the warm-up in MiB/hour;
  and the CPU it used after the warm-up, as a share of one core;
- **events lost**: every process, as it stops, reports its bus counters (published,
  received, dropped by reason, handler errors; the ``<service> stopped:`` line of
  ``services/runtime/lifecycle.py``, the same counters as its /metrics). The
  benchmark hears every subject of the prefix on one more connection, subscribed before
  any service starts, so it knows how many messages went on each subject. What a
  process should have received is the messages on the subjects it subscribes to
  (``services/runtime/permissions.py`` ``USES``, restricted to the servers or clients
  of its ``--only``; of the kinds it consumes from the stream, one per ``Nats-Msg-Id``,
  as the stream keeps an event sent again once) heard before it was told to stop;
  lost is what it did not
  receive of those (those heard later are shown apart, as ``after stop``). Besides,
  every message published (by every process and the benchmark) must have been heard.
  So that nothing is published to a service that does not listen yet, each group of
  processes starts once the one before is ready: reference servers, deciding
  services, agents, collector (last, so that no incident and no notice comes before
  every client listens). At the end, the publishers at the edge (agents and
  collector) stop first and the rest once the bus has been quiet for a second;
- **requests**: each client's Access-Requests sent, answered, rejected and lost, from
  its last ``ClientStatus`` (sent when its agent stops, after its requests in flight);
- **incidents**: each stall's incident, whether it opened, closed and left every
  client home, and any incident opened outside a stall.

**Baseline**: the same farm at the normal rate for the same time, in the same run,
measured the same way. A leak shows as memory that grows with the events handled, so a
service whose growth at 10x is about its growth at 1x grows by its warm-up or its
allocator, not per event; one whose growth is about ten times that leaks per event. The
ratio (slope at 10x / slope at 1x) is given where the baseline's slope is positive.

Modes: the default runs 150 s per rate (about 6 minutes in all), ``--quick`` 20 s
(about a minute and a half), ``--long`` an hour per rate (two hours), ``--duration S``
any length; ``--no-baseline`` skips the 1x run. Writes ``bench/results/soak.json``
(or ``--out DIR``) and prints the tables and goals; asserts nothing.

Run: ``.venv/bin/python bench/soak.py [--quick | --long | --duration S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, goal_line, start_services, stop_services, table, write  # noqa: E402
from schemas.events import ClientStatus, Incident, ServerControl  # noqa: E402
from schemas.subjects import kind_of  # noqa: E402
from services.launch.demo import DEMO_SETTINGS, LogFiles  # noqa: E402
from services.launch.farm import write_farm  # noqa: E402
from services.launch.supervisor import ServiceProcess  # noqa: E402
from services.runtime.bus import Bus, Keyring  # noqa: E402
from services.runtime.config import (  # noqa: E402
    DEFAULT_CLIENT_RATE,
    AgentConfig,
    CollectorConfig,
    Config,
)
from services.runtime.natsserver import EmbeddedNats  # noqa: E402
from services.runtime.permissions import USES  # noqa: E402

NAME = "soak"
MSG_ID = "Nats-Msg-Id"
CONSUMED = frozenset(kind for use in USES.values() for kind in use.consumes)
"""Kinds of subject some service reads from the stream (a durable consumer), not as sent."""
FACTOR = 10
SERVERS = ("A", "B", "C")
CLIENTS = 21
AGENTS = 3
WORKERS = 8

NORMAL: dict[str, float] = {
    "collector_interval_s": CollectorConfig().interval_s,
    "status_timeout_s": CollectorConfig().status_timeout_s,
    "agent_status_interval_s": AgentConfig().status_interval_s,
    "client_rate": DEFAULT_CLIENT_RATE,
}
"""The normal rate: the product's defaults (collector, agent) and the default client load."""

INCIDENT_EVERY_S = 30.0
STALL_S = 4.0
SETTLE_MAX_S = 60.0
"""The longest an incident may take to close, with every client home, after its stall."""
QUIET_S = 1.0
"""The bus is quiet once nothing was heard for this long (the edge publishers stopped)."""
QUIET_MAX_S = 20.0
READY_TIMEOUT_S = 30.0
MiB = float(1 << 20)

DECIDING = ("evaluator", "targeter", "notifier", "readmitter")
START_ORDER: tuple[tuple[str, ...], ...] = (("aaa",), DECIDING, ("agent",), ("collector",))
"""The registry's order but for the collector, last instead of before the agents: with no
sample, no incident and no notice before every client listens."""
BUS_PROCESS = "nats-server"
"""Measured too, and outside the growth goal: its memory holds the stream's latest
messages, up to ``bus.stream_max_bytes``, so it grows until the stream is full."""
DURATIONS = {"quick": 20.0, "default": 150.0, "long": 3600.0}
GROWTH_GOAL_PCT = 5.0


@dataclass(frozen=True)
class Mode:
    """How long each rate runs, its warm-up, how often RSS is read and the first stall."""

    duration_s: float
    warmup_s: float
    sample_s: float
    first_stall_s: float

    @classmethod
    def lasting(cls, duration_s: float) -> Mode:
        """A run of ``duration_s``: warm-up a fifth of it (5 s to 300 s), RSS read about
        a hundred times (every 1 s to 10 s), the first stall half-way through the warm-up."""
        warmup = min(300.0, max(5.0, duration_s / 5))
        return cls(duration_s, warmup, min(10.0, max(1.0, duration_s / 100)), warmup / 2)


def settings(factor: float) -> dict[str, Any]:
    """The farm's settings at ``factor`` times the normal rate (the demo's otherwise)."""
    return {
        **DEMO_SETTINGS,
        "collector": {
            "interval_s": NORMAL["collector_interval_s"] / factor,
            "status_timeout_s": NORMAL["status_timeout_s"] / factor,
        },
        "agent": {"status_interval_s": NORMAL["agent_status_interval_s"] / factor},
    }


def build_farm(directory: Path, bus_url: str, factor: float) -> tuple[Config, Path]:
    """The demo's farm at ``factor`` times the normal rate, on the bus at ``bus_url``."""
    return write_farm(
        directory,
        settings(factor),
        bus_url=bus_url,
        servers=SERVERS,
        clients=CLIENTS,
        client_rate=NORMAL["client_rate"] * factor,
        workers=WORKERS,
        probes=True,
    )


@dataclass(frozen=True)
class Planned:
    """One process of the farm: its name, service and ``--only`` (None: the whole farm)."""

    name: str
    service: str
    only: tuple[str, ...] | None = None

    def argv(self) -> list[str]:
        return [arg for token in self.only or () for arg in ("--only", token)]


def plan(config: Config) -> list[Planned]:
    """Every process of the farm, in start order, each service its own process."""
    servers = [Planned(f"aaa-{s.id}", "aaa", (s.id,)) for s in config.servers]
    deciding = [Planned(name, name) for name in DECIDING]
    ids = [c.id for c in config.clients]
    agents = [
        Planned(f"agent-{i + 1}", "agent", tuple(ids[i::AGENTS])) for i in range(AGENTS) if ids
    ]
    return [*servers, *deciding, *agents, Planned("collector", "collector")]


def ranks(planned: Sequence[Planned]) -> list[list[Planned]]:
    """The processes in ``START_ORDER``'s groups: each group starts once the one before is
    ready (subscribed), so that nothing is published before its subscribers listen."""
    return [[p for p in planned if p.service in group] for group in START_ORDER]


class Logs(LogFiles):
    """Each process's log in its own file, and the bus counters it reports as it stops."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.stopped: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, line: str) -> None:
        super().__call__(name, line)
        stats = stopped_stats(line)
        if stats is not None:
            self.stopped[name] = stats


def stopped_stats(line: str) -> dict[str, Any] | None:
    """The bus counters of a ``<service> stopped: {...}`` log line, else None."""
    try:
        message = json.loads(line).get("msg", "")
    except (ValueError, AttributeError):
        return None
    head, sep, tail = message.partition(" stopped: {")
    if not sep or " " in head:
        return None
    try:
        stats = ast.literal_eval("{" + tail)
    except (ValueError, SyntaxError):
        return None
    return stats if isinstance(stats, dict) and "received" in stats else None


@dataclass
class Stall:
    """One overload of a server: when it began and ended, and what became of its incident."""

    server: str
    began: float
    released: float | None = None
    incident: str | None = None
    opened_after_s: float | None = None
    closed_after_s: float | None = None
    all_home: bool = False


@dataclass(frozen=True)
class Heard:
    """Messages heard per subject, and per subject of a kind consumed from the stream the
    messages the stream keeps (one per ``Nats-Msg-Id``: it stores an event sent again once)."""

    subjects: Mapping[str, int]
    stored: Mapping[str, int]


@dataclass
class Watch:
    """What the benchmark heard on the bus: messages per subject, statuses, incidents."""

    config: Config
    subjects: Counter[str] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)
    ids: dict[str, set[str]] = field(default_factory=dict)
    statuses: dict[str, ClientStatus] = field(default_factory=dict)
    incidents: dict[str, list[Incident]] = field(default_factory=dict)
    heard_at: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, msg: Any) -> None:
        self.subjects[msg.subject] += 1
        self.heard_at = time.monotonic()
        if kind_of(msg.subject) in CONSUMED:
            seen = self.ids.setdefault(msg.subject, set())
            msg_id = (msg.headers or {}).get(MSG_ID) or str(len(seen))
            if msg_id not in seen:
                seen.add(msg_id)
                self.stored[msg.subject] += 1

    def snapshot(self) -> Heard:
        """The messages heard so far per subject, and those the stream keeps."""
        return Heard(Counter(self.subjects), Counter(self.stored))

    async def on_status(self, event: ClientStatus) -> None:
        self.statuses[event.client] = event
        self.changed.set()

    async def on_incident(self, event: Incident) -> None:
        self.incidents.setdefault(event.incident_id, []).append(event)
        self.changed.set()

    def all_home(self) -> bool:
        return len(self.statuses) == len(self.config.clients) and all(
            s.current == s.home for s in self.statuses.values()
        )

    def open_incidents(self) -> list[str]:
        return [i for i, events in self.incidents.items() if events[-1].state != "closed"]

    def opened_on(self, server: str, since: float) -> str | None:
        """The first incident of ``server`` open at ``since`` (UNIX time) or opened after."""
        for incident_id, events in self.incidents.items():
            first, closed = events[0], self.closed(incident_id)
            if (
                first.server == server
                and first.state == "opened"
                and (first.time >= since or closed is None or closed >= since)
            ):
                return incident_id
        return None

    def closed(self, incident_id: str) -> float | None:
        """When ``incident_id`` closed, or None."""
        for event in self.incidents.get(incident_id, []):
            if event.state == "closed":
                return event.time
        return None

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``condition()`` holds (checked at each status or incident)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
        return True

    async def quiet(self) -> bool:
        """Wait until nothing was heard for ``QUIET_S``; False after ``QUIET_MAX_S``."""
        deadline = time.monotonic() + QUIET_MAX_S
        while time.monotonic() - self.heard_at < QUIET_S:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True


@dataclass
class Memory:
    """Each process's RSS over time, and its CPU seconds from the warm-up to the end."""

    pids: dict[str, int]
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    cpu_from: dict[str, float] = field(default_factory=dict)
    cpu_to: dict[str, float] = field(default_factory=dict)

    def read(self, at: float) -> None:
        for name, pid in self.pids.items():
            with suppress(psutil.Error):
                self.rss.setdefault(name, []).append((at, psutil.Process(pid).memory_info().rss))

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            with suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                out[name] = times.user + times.system
        return out

    async def run(self, started: float, mode: Mode, stop: asyncio.Event) -> None:
        """Read every ``sample_s`` until ``stop``; CPU at the warm-up's end and at the last."""
        while not stop.is_set():
            at = time.monotonic() - started
            if not self.cpu_from and at >= mode.warmup_s:
                self.cpu_from = self.cpu()
            self.read(at)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), mode.sample_s)
        self.read(time.monotonic() - started)
        self.cpu_to = self.cpu()


async def overload(bus: Bus, watch: Watch, server: str) -> Stall:
    """Stall all workers but one of ``server`` for ``STALL_S``, restore it, and wait
    until its incident closed with every client home."""
    subject = bus.subjects.control(server)
    stall = Stall(server, time.time())
    await bus.publish(subject, ServerControl(server=server, stalled_workers=WORKERS - 1))
    await asyncio.sleep(STALL_S)
    await bus.publish(subject, ServerControl(server=server, stalled_workers=0))
    stall.released = time.time()
    stall.incident = watch.opened_on(server, stall.began)
    if stall.incident is None:
        return stall
    incident = stall.incident
    stall.opened_after_s = watch.incidents[incident][0].time - stall.began
    stall.all_home = await watch.until(
        lambda: watch.closed(incident) is not None and watch.all_home(), SETTLE_MAX_S
    )
    closed = watch.closed(incident)
    stall.closed_after_s = None if closed is None else closed - stall.released
    return stall


async def incidents(
    bus: Bus, watch: Watch, started: float, mode: Mode, stalls: list[Stall]
) -> None:
    """A stall every ``INCIDENT_EVERY_S`` from ``first_stall_s``, servers in turn, as long
    as it begins before the run's end less ``STALL_S``."""
    at = mode.first_stall_s
    while at + STALL_S <= mode.duration_s:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        stalls.append(await overload(bus, watch, SERVERS[len(stalls) % len(SERVERS)]))
        at = max(at + INCIDENT_EVERY_S, time.monotonic() - started)


def expected(heard: Heard, prefix: str, planned: Planned) -> int:
    """Of the messages ``heard``, those ``planned`` should receive: on the subjects it
    subscribes to, and of those it consumes from the stream the ones the stream keeps."""
    use = USES[planned.service]
    total = 0
    for subject, count in heard.subjects.items():
        kind, _, token = subject[len(prefix) + 1 :].partition(".")
        if planned.only is not None and token not in planned.only:
            continue
        if kind in use.consumes:
            total += heard.stored.get(subject, 0)
        elif kind in use.subscribes:
            total += count
    return total


def events(
    watch: Watch,
    processes: Sequence[Planned],
    stopped: Mapping[str, Any],
    told_to_stop: Mapping[str, Heard],
) -> dict[str, Any]:
    """Per process: the messages on its subjects heard before it was told to stop (it
    must have received each), those heard after (it may have), what it received, lost
    and dropped."""
    prefix = watch.config.bus.prefix
    per: dict[str, dict[str, Any]] = {}
    for planned in processes:
        stats = stopped.get(planned.name)
        if stats is None:
            per[planned.name] = {"reported": False}
            continue
        should = expected(told_to_stop.get(planned.name, watch.snapshot()), prefix, planned)
        later = expected(watch.snapshot(), prefix, planned) - should
        per[planned.name] = {
            "reported": True,
            "published": stats["published"],
            "expected": should,
            "after_stop": later,
            "received": stats["received"],
            "lost": max(0, should - stats["received"]),
            "extra": max(0, stats["received"] - should - later),
            "dropped": dict(stats["dropped"]),
            "handler_errors": stats["handler_errors"],
            "handled": dict(stats["handled"]),
        }
    return {"processes": per}


def kinds(subjects: Mapping[str, int], prefix: str) -> dict[str, int]:
    """Messages per kind of subject, of messages per subject."""
    out: Counter[str] = Counter()
    for subject, count in subjects.items():
        out[subject[len(prefix) + 1 :].partition(".")[0]] += count
    return dict(sorted(out.items()))


def requests(watch: Watch) -> dict[str, int]:
    """The clients' Access-Requests from their last status: sent, answered, rejected, lost."""
    statuses = list(watch.statuses.values())
    sent = sum(s.sent for s in statuses)
    answered = sum(s.answered for s in statuses)
    rejected = sum(s.rejected for s in statuses)
    lost = sum(s.lost for s in statuses)
    return {
        "sent": sent,
        "answered": answered,
        "rejected": rejected,
        "lost": lost,
        "unfinished": sent - answered - rejected - lost,
    }


def slope_mib_per_h(points: Sequence[tuple[float, int]]) -> float | None:
    """The least-squares slope of RSS over time, in MiB per hour (None under 3 points)."""
    if len(points) < 3:
        return None
    xs = [t for t, _ in points]
    ys = [r / MiB for _, r in points]
    return statistics.linear_regression(xs, ys).slope * 3600.0


def growth(points: Sequence[tuple[float, int]], warmup_s: float) -> dict[str, Any]:
    """RSS after the warm-up and at the end (medians of three samples), growth and slope."""
    after = [p for p in points if p[0] >= warmup_s]
    if len(after) < 2:
        return {"samples": len(after)}
    start = statistics.median(r for _, r in after[:3]) / MiB
    end = statistics.median(r for _, r in after[-3:]) / MiB
    return {
        "samples": len(after),
        "warm_mib": start,
        "end_mib": end,
        "peak_mib": max(r for _, r in after) / MiB,
        "growth_mib": end - start,
        "growth_pct": 100.0 * (end - start) / start,
        "slope_mib_per_h": slope_mib_per_h(after),
    }


def memory_figures(memory: Memory, mode: Mode, measured_s: float) -> dict[str, Any]:
    """Per process: its RSS growth, and the CPU it used after the warm-up (share of a core)."""
    out = {}
    for name, points in memory.rss.items():
        used = memory.cpu_to.get(name, 0.0) - memory.cpu_from.get(name, 0.0)
        out[name] = {
            **growth(points, mode.warmup_s),
            "cpu_core_share": used / measured_s if measured_s > 0 and memory.cpu_from else None,
        }
    return out


def stall_figures(stalls: Sequence[Stall], watch: Watch) -> dict[str, Any]:
    """Each stall's incident, and the incidents opened outside every stall."""
    ours = {s.incident for s in stalls if s.incident is not None}
    others = [
        {
            "server": events[0].server,
            "time": events[0].time,
            "health": events[0].health,
            "reason": events[0].reason,
            "state": events[-1].state,
        }
        for incident_id, events in watch.incidents.items()
        if incident_id not in ours
    ]
    return {
        "stalls": [vars(s) for s in stalls],
        "opened": sum(1 for s in stalls if s.incident is not None),
        "closed_all_home": sum(1 for s in stalls if s.all_home),
        "outside_stalls": others,
        "left_open": len(watch.open_incidents()),
    }


async def follow(bus: Bus, watch: Watch) -> None:
    """Hear every subject of the prefix; follow the clients' statuses and the incidents."""
    await bus.nc.subscribe(
        bus.subjects.all, cb=watch.on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    await bus.subscribe(
        bus.subjects.status("*"), watch.on_status, types=(ClientStatus,), accept_clients=True
    )
    await bus.subscribe(bus.subjects.incident("*"), watch.on_incident, types=(Incident,))


@dataclass
class Loaded:
    """What a run under load gave: its stalls, the seconds measured after the warm-up, the
    messages per kind of subject and Access-Requests per second while it ran, and the
    machine's load average at its end (other work on the machine shows there)."""

    stalls: list[Stall]
    measured_s: float
    rates: dict[str, float]
    load_average: tuple[float, float, float]


def rates(
    watch: Watch, before: Mapping[str, int], sent_before: int, seconds: float
) -> dict[str, float]:
    """Messages per kind of subject and Access-Requests per second since ``before``."""
    prefix = watch.config.bus.prefix
    now, then = kinds(watch.subjects, prefix), kinds(before, prefix)
    out = {kind: (count - then.get(kind, 0)) / seconds for kind, count in now.items()}
    out["access-requests"] = (requests(watch)["sent"] - sent_before) / seconds
    return out


async def load(bus: Bus, watch: Watch, mode: Mode, memory: Memory) -> Loaded:
    """Run for ``mode.duration_s`` (and the last incident to its end) while reading memory."""
    started = time.monotonic()
    before, sent_before = Counter(watch.subjects), requests(watch)["sent"]
    stalls: list[Stall] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(memory.run(started, mode, stop))
    try:
        await incidents(bus, watch, started, mode, stalls)
        await asyncio.sleep(max(0.0, started + mode.duration_s - time.monotonic()))
        await watch.until(lambda: not watch.open_incidents() and watch.all_home(), SETTLE_MAX_S)
    finally:
        stop.set()
        await sampler
    elapsed = time.monotonic() - started
    measured = rates(watch, before, sent_before, elapsed)
    return Loaded(stalls, elapsed - mode.warmup_s, measured, os.getloadavg())


async def stop_in_order(
    watch: Watch,
    processes: Sequence[ServiceProcess],
    edge: set[str],
    told_to_stop: dict[str, Heard],
) -> dict[str, int]:
    """Stop the edge publishers, wait until the bus is quiet, then stop the rest; each
    process's exit status. ``told_to_stop`` gets the messages heard per subject when each
    process was told to stop."""
    first = [p for p in processes if p.name in edge]
    rest = [p for p in processes if p.name not in edge]
    statuses: dict[str, int] = {}
    for group in (first, rest):
        if group is rest and not await watch.quiet():
            print("soak: the bus was not quiet after the agents and collector stopped")
        heard = watch.snapshot()
        told_to_stop.update((p.name, heard) for p in group)
        statuses |= await asyncio.to_thread(stop_services, group)
    return statuses


async def phase(label: str, factor: float, mode: Mode, workdir: Path) -> dict[str, Any]:
    """One run of the farm at ``factor`` times the normal rate; its figures."""
    nats = EmbeddedNats(workdir / "nats")
    logs = Logs(workdir / "logs")
    processes: list[ServiceProcess] = []
    told_to_stop: dict[str, Heard] = {}
    try:
        nats.start()
        assert nats.proc is not None
        config, path = build_farm(workdir / "farm", nats.url, factor)
        planned = plan(config)
        watch = Watch(config)
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="soak", stack=stack, url=nats.url
            )
            await follow(bus, watch)  # before any service starts: every message is heard
            await bus.nc.flush()
            # started in this thread, so that an interrupt finds every process to stop
            for rank in ranks(planned):
                argvs = [(p.name, p.service, p.argv()) for p in rank]
                processes += start_services(argvs, path, nats.url, logs)
            memory = Memory(
                {BUS_PROCESS: nats.proc.pid} | {p.name: p.proc.pid for p in processes if p.proc}
            )
            if not await watch.until(lambda: watch.all_home(), READY_TIMEOUT_S):
                raise RuntimeError(f"{label}: not every client reported its status")
            loaded = await load(bus, watch, mode, memory)
            edge = {p.name for p in planned if p.service in ("agent", "collector")}
            exits = await stop_in_order(watch, processes, edge, told_to_stop)
            await bus.nc.flush()
            await watch.quiet()
            published_here = bus.counters.published
    finally:
        stop_services([p for p in processes if p.exited is None])
        logs.close()
        nats.stop()
    prefix = config.bus.prefix
    counted = events(watch, planned, logs.stopped, told_to_stop)
    published = published_here + sum(p.get("published", 0) for p in counted["processes"].values())
    heard = sum(watch.subjects.values())
    return {
        "phase": label,
        "factor": factor,
        "exits": exits,
        "memory": memory_figures(memory, mode, loaded.measured_s),
        "rss": {name: points for name, points in memory.rss.items()},
        "events": {
            **counted,
            "published": published,
            "heard": heard,
            "unheard": max(0, published - heard),
            "per_kind": kinds(watch.subjects, prefix),
        },
        "requests": requests(watch),
        "incidents": stall_figures(loaded.stalls, watch),
        "rates": loaded.rates,
        "load_average": loaded.load_average,
        "measured_s": loaded.measured_s,
    }


def lost_events(run: Mapping[str, Any]) -> int:
    """Every event lost in a run: not heard on the bus, or not received by a subscriber."""
    processes = run["events"]["processes"].values()
    unreported = sum(1 for p in processes if not p["reported"])
    unheard: int = run["events"]["unheard"]
    return int(unheard + unreported + sum(p.get("lost", 0) for p in processes))


def dropped(run: Mapping[str, Any]) -> dict[str, int]:
    """Every event dropped in a run, by reason, over every process."""
    total: Counter[str] = Counter()
    for p in run["events"]["processes"].values():
        total.update(p.get("dropped", {}))
    return dict(total)


def ratios(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Per process, its RSS slope at 10x over its slope at 1x (None: baseline not positive)."""
    if "1x" not in runs:
        return {}
    out: dict[str, float | None] = {}
    for name, fast in runs["10x"]["memory"].items():
        slow = runs["1x"]["memory"].get(name, {}).get("slope_mib_per_h")
        mine = fast.get("slope_mib_per_h")
        out[name] = mine / slow if mine is not None and slow else None
        if slow is not None and slow <= 0:
            out[name] = None
    return out


def goals(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The soak's goals, on the 10x run."""
    fast = runs["10x"]
    lost = lost_events(fast)
    errors = sum(p.get("handler_errors", 0) for p in fast["events"]["processes"].values())
    inc = fast["incidents"]
    unclosed = len(inc["stalls"]) - inc["closed_all_home"] + inc["left_open"]
    growths = [
        m["growth_pct"]
        for name, m in fast["memory"].items()
        if "growth_pct" in m and name != BUS_PROCESS
    ]
    worst = max(growths, default=float("nan"))
    return [
        {
            "name": "no event lost at 10x",
            "target": "lost + handler errors == 0",
            "value": lost + errors,
            "met": lost + errors == 0,
        },
        {
            "name": "no Access-Request lost at 10x",
            "target": "lost == 0",
            "value": fast["requests"]["lost"],
            "met": fast["requests"]["lost"] == 0 and fast["requests"]["sent"] > 0,
        },
        {
            "name": "every stall's incident closed with every client home at 10x",
            "target": "not closed + left open == 0",
            "value": unclosed,
            "met": unclosed == 0 and inc["opened"] == len(inc["stalls"]) > 0,
        },
        {
            "name": f"every service grows under {GROWTH_GOAL_PCT:g} % RSS after warm-up at 10x",
            "target": f"max growth < {GROWTH_GOAL_PCT:g} %",
            "value": worst,
            "met": bool(growths) and worst < GROWTH_GOAL_PCT,
        },
    ]


def _f(value: Any, digits: int = 1) -> str:
    return (
        "-" if value is None else f"{value:+.{digits}f}" if isinstance(value, float) else str(value)
    )


def memory_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """RSS per process: 10x warm and end, growth, slope; 1x growth and slope; the ratio."""
    fast = runs["10x"]["memory"]
    slow = runs.get("1x", {}).get("memory", {})
    ratio = ratios(runs)
    rows = []
    for name, m in fast.items():
        b = slow.get(name, {})
        rows.append(
            (
                name,
                f"{m.get('warm_mib', 0):.1f}",
                f"{m.get('end_mib', 0):.1f}",
                _f(m.get("growth_pct"), 2),
                _f(m.get("slope_mib_per_h"), 2),
                f"{(m.get('cpu_core_share') or 0) * 100:.0f}",
                _f(b.get("growth_pct"), 2),
                _f(b.get("slope_mib_per_h"), 2),
                "-" if ratio.get(name) is None else f"{ratio[name]:.2f}",
            )
        )
    header = ("process", "MiB warm", "MiB end", "%", "MiB/h", "CPU %", "1x %", "1x MiB/h", "ratio")
    return table("RSS after the warm-up, 10x (and 1x)", header, rows)


def events_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Per process at 10x: messages it should have received, received, lost, dropped."""
    rows = []
    for name, p in runs["10x"]["events"]["processes"].items():
        drops = ", ".join(f"{k} {v}" for k, v in sorted(p.get("dropped", {}).items())) or "-"
        rows.append(
            (name, p.get("published", "-"), p.get("expected", "-"), p.get("received", "-"),
             p.get("lost", "-"), p.get("after_stop", "-"), p.get("handler_errors", "-"), drops)
        )  # fmt: skip
    header = (
        "process", "published", "expected", "received", "lost", "after stop", "errors", "dropped"
    )  # fmt: skip
    return table("events at 10x", header, rows)


def rates_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Messages per kind of subject and Access-Requests per second under load, each run."""
    names = list(runs["10x"]["rates"])
    rows = [(kind, *(f"{r['rates'].get(kind, 0.0):.1f}" for r in runs.values())) for kind in names]
    return table("per second under load", ("", *runs), rows)


def summary_lines(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per run: requests, events, incidents."""
    lines = []
    for label, run in runs.items():
        req, ev, inc = run["requests"], run["events"], run["incidents"]
        lines.append(
            f"{label}: {run['duration_s']:.0f}s, load average {run['load_average'][1]:.1f}; "
            f"requests sent {req['sent']}, answered {req['answered']}, "
            f"rejected {req['rejected']}, lost {req['lost']}; events "
            f"published {ev['published']}, heard {ev['heard']}, lost {lost_events(run)}, "
            f"dropped {dropped(run) or 0}; stalls {len(inc['stalls'])}, incidents opened "
            f"{inc['opened']}, closed with every client home {inc['closed_all_home']}, "
            f"outside stalls {len(inc['outside_stalls'])}"
        )
    return lines


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_true", help="20 s per rate")
    length.add_argument("--long", action="store_true", help="an hour per rate")
    length.add_argument("--duration", type=float, metavar="S", help="S seconds per rate")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 1x run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def chosen_mode(args: argparse.Namespace) -> Mode:
    if args.duration is not None:
        return Mode.lasting(args.duration)
    return Mode.lasting(DURATIONS["quick" if args.quick else "long" if args.long else "default"])


def run_phase(label: str, factor: float, mode: Mode) -> dict[str, Any]:
    """One run in a fresh temporary folder, removed afterwards (kept with its logs if the
    run failed, removed if it was interrupted)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"aaa-bench-soak-{label}-"))
    started = time.monotonic()
    try:
        result = asyncio.run(phase(label, factor, mode, tmp))
    except Exception:
        print(f"{label}: failed; its logs stay in {tmp / 'logs'}", file=sys.stderr, flush=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result["duration_s"] = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """Run 10x and (unless told not to) 1x, write ``soak.json``, print tables and goals."""
    args = parse(argv)
    mode = chosen_mode(args)
    print(
        f"soak: {len(SERVERS)} servers, {CLIENTS} clients, {AGENTS} agents; "
        f"{mode.duration_s:g}s per rate, warm-up {mode.warmup_s:g}s, RSS every "
        f"{mode.sample_s:g}s; a {STALL_S:g}s stall every {INCIDENT_EVERY_S:g}s",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    for label, factor in (("10x", FACTOR), ("1x", 1)):
        if label == "1x" and args.no_baseline:
            continue
        print(f"{label}: running", flush=True)
        try:
            runs[label] = run_phase(label, factor, mode)
        except KeyboardInterrupt:
            print(f"{label}: interrupted; every process of the farm was stopped", flush=True)
            return 130
    checked = goals(runs)
    results = {
        "parameters": {
            "quick": args.quick,
            "long": args.long,
            "mode": vars(mode),
            "factor": FACTOR,
            "normal": NORMAL,
            "settings": {label: settings(f) for label, f in (("10x", FACTOR), ("1x", 1))},
            "servers": len(SERVERS),
            "clients": CLIENTS,
            "agents": AGENTS,
            "workers": WORKERS,
            "incident_every_s": INCIDENT_EVERY_S,
            "stall_s": STALL_S,
            "baseline": "the same farm at the normal (1x) rate for the same time",
        },
        "samples": {label: {"rss": run["rss"]} for label, run in runs.items()},
        "summary": {
            **{label: {k: v for k, v in run.items() if k != "rss"} for label, run in runs.items()},
            "slope_ratio": ratios(runs),
            "lost_events": {label: lost_events(run) for label, run in runs.items()},
            "dropped_events": {label: dropped(run) for label, run in runs.items()},
        },
        "goals": checked,
    }
    path = write(args.out, NAME, results)
    print(memory_table(runs))
    print(events_table(runs))
    print(rates_table(runs))
    for line in summary_lines(runs):
        print(line)
    for goal in checked:
        print(goal_line(goal))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
