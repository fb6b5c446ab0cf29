"""Benchmark of readmission: adaptive waves against fixed waves, on the same incident.

Each run gets a fresh farm: an embedded nats-server, three reference servers
``A``, ``B`` and ``C`` (40 workers each, one process each), the collector,
evaluator, targeter, notifier and readmitter, and ONE agent process serving
every client. Every client is homed on ``A`` (alternates ``B``, ``C``) and
its agent sends its own synthetic Access-Requests at ``CLIENT_RATE`` to
whichever server it is on, so a client brought home brings its real load
back to ``A``. ``A``'s capacity is limited: its service time is chosen so
that with every client home a set number of its 40 workers are busy, each
client a quarter to half a thread of it. Two rooms (``ROOMS``), each run with
both sizings:

- **roomy**: 10 busy with every client home, health about 0.75: above the
  connection threshold 0.6 and the adaptive floor 0.7 (threshold + margin);
- **tight** (full mode only): 15 busy, health about 0.625: every client home
  puts A inside the margin, where adaptive waves slow down.

Health is the threads part alone (evaluator rule ``weighted``, weight 1 on
threads and 0 on every other part): the CPU part of a reference server is
the whole machine's (every process of the farm shares its two cores), so it
would follow the benchmark's own load rather than ``A``'s workers. The
reference server reports threads busy as their mean over one second, rounded
to whole threads (services/aaa/pool.py): one thread is 0.025 of health.

The incident, the same in both runs: after a warm-up with every client home,
a ``ServerControl`` stalls all but two of A's workers; the incident opens and
the targeter (``max_share`` 1, ``gain`` 10) moves every client to ``B`` and
``C``. Once every client is off ``A`` (and a short hold), the stall is
released, the evaluator turns the incident ``recovering`` and the readmitter
brings the clients back:

- **fixed**: ``readmitter.sizing = "fixed"``, the default ``wave_size`` (5);
- **adaptive**: ``readmitter.sizing = "adaptive"``, every other sizing
  setting at its default (first wave 2, growth 4x, margin 0.1, 2 reports to
  settle);

both with the same ``wave_interval_s``. From the bus (an operator's
connection) it follows A's Incident, every ReadmitWave (time, number,
clients, reason), every client's ClientStatus (current and home) and A's
HealthReports. Per run it reports: the time from ``recovering`` until every
client is home (by their statuses) and until the incident is closed, the
waves and their sizes (and each one's reason), the lowest health of ``A``
between ``recovering`` and ``closed`` and until ``TAIL_S`` after it (the
incident closes as the last wave's clients arrive, before their load shows in
a report), and the re-overloads: A's incident ``opened`` again after it was
``recovering`` (a relapse, or a new incident), and health reports below the
failover threshold, from ``recovering`` until ``TAIL_S`` after ``closed``.
**Goals** (issue 18), in each room: every client home sooner with adaptive
waves than with fixed ones (ratio under 1), and no re-overload with adaptive
waves.
Writes ``bench/results/readmission.json``; asserts nothing.

Run: ``.venv/bin/python bench/readmission.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    arguments,
    goal_line,
    start_services,
    stop_services,
    table,
    write,
)
from schemas.events import (  # noqa: E402
    ClientStatus,
    HealthReport,
    Incident,
    ReadmitWave,
    ServerControl,
)
from services.launch import registry  # noqa: E402
from services.launch.demo import DEMO_SETTINGS, LogFiles  # noqa: E402
from services.launch.farm import THREADS_ONLY, farm_dict, write_config  # noqa: E402
from services.launch.supervisor import ServiceProcess  # noqa: E402
from services.runtime.bus import Bus, Keyring  # noqa: E402
from services.runtime.config import Config, ReadmitterConfig, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402

NAME = "readmission"
SERVER = "A"
ALTERNATES = ["B", "C"]
WORKERS = 40
STALLED = WORKERS - 2
"""Workers of A the overload holds busy: the two left cannot serve its clients' load."""
CLIENT_RATE = 2.5
"""Each client's own Access-Requests per second (its agent's synthetic load)."""
ROOMS = {"roomy": 10.0, "tight": 15.0}
"""A's busy workers with every client home, by room: the service time is chosen for it."""
HOLD_S = 1.0
"""How long the stall goes on once every client is off A."""
TAIL_S = 2.0
"""How long it watches after the incident closed: the last wave's load shows in full one
busy window (1 s) and a report later, so its lowest health is seen too."""
STEP_TIMEOUT_S = 30.0
"""The longest any one step (every status, the incident opening, every client moved) may take."""

RUNS = ("fixed", "adaptive")

FULL = {
    "clients": 40,
    "wave_interval_s": 2.0,
    "warmup_s": 4.0,
    "settle_max_s": 90.0,
    "rooms": ["roomy", "tight"],
}
QUICK = {
    "clients": 20,
    "wave_interval_s": 1.0,
    "warmup_s": 2.0,
    "settle_max_s": 30.0,
    "rooms": ["roomy"],
}


def service_time_ms(clients: int, room: str) -> float:
    """The service time at which ``clients`` at ``CLIENT_RATE`` keep ``ROOMS[room]``
    workers busy (load x service time = busy workers)."""
    return 1000.0 * ROOMS[room] / (clients * CLIENT_RATE)


def settings(sizing: str, wave_interval_s: float) -> dict[str, Any]:
    """The farm's settings of one run: the demo's, health the threads part alone, every
    client moved at once, and readmission by ``sizing`` (other readmitter settings at
    their defaults)."""
    return {
        **DEMO_SETTINGS,
        "evaluator": {**DEMO_SETTINGS["evaluator"], **THREADS_ONLY},
        "targeter": {**DEMO_SETTINGS["targeter"], "max_share": 1.0, "gain": 10.0},
        "readmitter": {"sizing": sizing, "wave_interval_s": wave_interval_s},
    }


@dataclass
class Observed:
    """What the benchmark saw of one run on the bus."""

    statuses: dict[str, ClientStatus] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    log: list[tuple[float, str, str, str]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    waves: dict[tuple[str, int, bool], dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    health: list[tuple[float, float, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_status(self, event: ClientStatus) -> None:
        self.statuses[event.client] = event
        if event.rate is not None:
            self.rates[event.client] = event.rate
        self.log.append((event.time, event.client, event.current, event.home))

    def on_wave(self, event: ReadmitWave) -> None:
        entry = {
            "time": event.time,
            "incident_id": event.incident_id,
            "wave": event.wave,
            "clients": list(event.clients),
            # its clients' request rates as their latest statuses measured them (what the
            # readmitter sizes by), against CLIENT_RATE each
            "load_rps": round(sum(self.rates.get(c, 0.0) for c in event.clients), 3),
            "deferred": list(event.deferred),
            "final": event.final,
            "health": event.health,
            "reason": event.reason,
        }
        if event.wave == 0:
            self.requests.append(entry)
            return
        # a wave sent again (the final one until the incident is known closed, or one
        # whose publication was retried) is counted once, at its first sending
        self.waves.setdefault((event.incident_id, event.wave, event.final), entry)

    def all_on(self, where: str) -> bool:
        """Whether every client's latest status says it is on ``where`` (home if empty)."""
        return bool(self.statuses) and all(
            s.current == (where or s.home) for s in self.statuses.values()
        )

    def none_on(self, server: str) -> bool:
        return bool(self.statuses) and all(s.current != server for s in self.statuses.values())

    def first_incident(self, state: str, after: float = 0.0) -> float | None:
        """When A's incident was first ``state`` at or after ``after``."""
        times = [i["time"] for i in self.incidents if i["state"] == state and i["time"] >= after]
        return min(times) if times else None

    def home_since(self) -> float | None:
        """From when to the end every client was home (None if not so at the end)."""
        where: dict[str, tuple[str, str]] = {}
        since = None
        for at, client, current, home in sorted(self.log):
            where[client] = (current, home)
            if len(where) < len(self.statuses):
                continue
            if any(c != h for c, h in where.values()):
                since = None
            elif since is None:
                since = at
        return since

    def home_at(self, after: float) -> dict[str, float]:
        """Each client's first status at home after ``after``, following one away."""
        away: set[str] = set()
        home: dict[str, float] = {}
        for at, client, current, client_home in sorted(self.log):
            if current != client_home:
                away.add(client)
            elif client in away and at >= after and client not in home:
                home[client] = at
        return home


def build_config(
    directory: Path, bus_url: str, params: dict[str, Any], sizing: str, room: str
) -> Path:
    """The farm's config file: three reference servers, every client homed on A."""
    data = farm_dict(
        directory,
        bus_url=bus_url,
        prefix="bench",
        clients=params["clients"],
        client_rate=CLIENT_RATE,
        workers=WORKERS,
        service_time_ms=service_time_ms(params["clients"], room),
    )
    for client in data["clients"]:
        client["home"] = SERVER
        client["alternates"] = list(ALTERNATES)
    data.update(settings(sizing, params["wave_interval_s"]))
    return write_config(directory, data)


async def wait_until(observed: Observed, condition: Any, timeout_s: float) -> bool:
    """Wait until ``condition()`` holds (checked at each bus event) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        observed.changed.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(observed.changed.wait(), min(remaining, 0.5))
    return True


async def run(sizing: str, room: str, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One run on a fresh farm and bus; its raw observations and figures."""
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    logs = LogFiles(workdir / "logs")
    processes: list[ServiceProcess] = []
    observed = Observed()
    marks: dict[str, float] = {}
    try:
        path = build_config(workdir / "farm", nats.url, params, sizing, room)
        config = load_config(path)
        processes = await asyncio.to_thread(
            start_services, registry.plan(config), path, nats.url, logs
        )
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench", stack=stack, url=nats.url
            )
            await subscribe(bus, observed)
            await step(
                observed,
                lambda: len(observed.statuses) == len(config.clients) and observed.all_on(""),
                "every client reported itself home",
            )
            marks["started"] = time.time()
            await asyncio.sleep(params["warmup_s"])
            control = bus.subjects.control(SERVER)
            marks["stalled"] = time.time()
            await bus.publish(control, ServerControl(server=SERVER, stalled_workers=STALLED))
            await step(
                observed,
                lambda: observed.first_incident("opened") is not None and observed.none_on(SERVER),
                "the incident opened and every client left A",
            )
            marks["all_off"] = time.time()
            await asyncio.sleep(HOLD_S)
            marks["released"] = time.time()
            await bus.publish(control, ServerControl(server=SERVER, stalled_workers=0))
            await step(
                observed,
                lambda: observed.first_incident("recovering") is not None,
                "the incident is recovering",
            )
            await wait_until(
                observed,
                lambda: (
                    observed.all_on("")
                    and observed.first_incident("closed", marks["released"]) is not None
                ),
                params["settle_max_s"],
            )
            await asyncio.sleep(TAIL_S)
            marks["ended"] = time.time()
    finally:
        statuses = await asyncio.to_thread(stop_all, processes)
        logs.close()
        nats.stop()
    unclean = {k: v for k, v in statuses.items() if v != 0}
    if unclean:
        print(f"{sizing}: services that did not stop cleanly: {unclean}", file=sys.stderr)
    return figures(sizing, config, observed, marks, unclean)


def stop_all(processes: list[ServiceProcess]) -> dict[str, int]:
    """Stop the agent first (its load ends, its requests in flight are answered), then the
    rest; stopped together, the agent would wait out its requests to servers already gone."""
    agents = [p for p in processes if p.name == "agent"]
    others = [p for p in processes if p.name != "agent"]
    return {**stop_services(agents), **stop_services(others)}


async def subscribe(bus: Bus, observed: Observed) -> None:
    """Follow every client's status, A's incidents, waves and health reports."""

    async def on_status(event: ClientStatus) -> None:
        observed.on_status(event)
        observed.changed.set()

    async def on_incident(event: Incident) -> None:
        observed.incidents.append(
            {
                "time": event.time,
                "incident_id": event.incident_id,
                "state": event.state,
                "health": event.health,
                "relapses": event.relapses,
                "reason": event.reason,
            }
        )
        observed.changed.set()

    async def on_wave(event: ReadmitWave) -> None:
        observed.on_wave(event)
        observed.changed.set()

    async def on_health(event: HealthReport) -> None:
        observed.health.append((event.time, event.health, event.state))

    subjects = bus.subjects
    await bus.subscribe(subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True)
    await bus.subscribe(subjects.incident(SERVER), on_incident, types=(Incident,))
    await bus.subscribe(subjects.readmit(SERVER), on_wave, types=(ReadmitWave,))
    await bus.subscribe(subjects.health(SERVER), on_health, types=(HealthReport,))


async def step(observed: Observed, condition: Any, what: str) -> None:
    """Wait until ``condition()``; RuntimeError naming ``what`` if not within the timeout."""
    if not await wait_until(observed, condition, STEP_TIMEOUT_S):
        raise RuntimeError(f"not within {STEP_TIMEOUT_S:g}s: {what}")


def figures(
    sizing: str,
    config: Config,
    observed: Observed,
    marks: dict[str, float],
    unclean: dict[str, int],
) -> dict[str, Any]:
    """The run's figures (``summary``) and what they come from (``raw``)."""
    recovering = observed.first_incident("recovering")
    assert recovering is not None
    closed = observed.first_incident("closed", recovering)
    end = closed if closed is not None else marks["ended"]
    evaluator = config.evaluator
    home = observed.home_since()
    home_at = observed.home_at(recovering)
    waves = sorted(
        (w for w in observed.waves.values() if w["time"] >= recovering and not w["final"]),
        key=lambda w: w["wave"],
    )
    finals = [w for w in observed.waves.values() if w["final"]]
    during = [(t, h) for t, h, _ in observed.health if recovering <= t <= end]
    # to the end of the watch: the health the last waves brought, after the incident closed
    settled = [(t, h) for t, h, _ in observed.health if recovering <= t <= marks["ended"]]
    tail = [h for t, h, _ in observed.health if marks["ended"] - 1.0 <= t <= marks["ended"]]
    # the last 1.5 s of the warm-up: the reports before it hold part of the load only
    before_stall = [
        h for t, h, _ in observed.health if marks["stalled"] - 1.5 <= t < marks["stalled"]
    ]
    relapses = [i for i in observed.incidents if i["state"] == "opened" and i["time"] > recovering]
    below_failover = sum(1 for _, h in settled if h < evaluator.failover_threshold)
    opened = observed.first_incident("opened")
    readmitted = {c for w in waves for c in w["clients"]}
    summary = {
        "sizing": sizing,
        "clients": len(config.clients),
        "every_client_home": home is not None and home >= recovering,
        "readmitted_in_waves": len(readmitted),
        "home_after_recovering": len(home_at),
        "time_home_s": None if home is None else max(0.0, home - recovering),
        "time_closed_s": None if closed is None else closed - recovering,
        "first_wave_after_s": waves[0]["time"] - recovering if waves else None,
        "waves": len(waves),
        "wave_sizes": [len(w["clients"]) for w in waves],
        "requests": len(observed.requests),
        "lowest_health": min((h for _, h in during), default=None),
        "lowest_health_to_end": min((h for _, h in settled), default=None),
        "health_all_home_before": (sum(before_stall) / len(before_stall) if before_stall else None),
        "health_all_home_after": sum(tail) / len(tail) if tail else None,
        "health_reports_readmitting": len(during),
        "health_reports_to_end": len(settled),
        "below_connection_threshold": sum(
            1 for _, h in settled if h < evaluator.connection_threshold
        ),
        "below_failover_threshold": below_failover,
        "relapses": len(relapses),
        "reoverloads": len(relapses) + below_failover,
        "opened_after_stall_s": None if opened is None else opened - marks["stalled"],
        "all_off_after_stall_s": marks["all_off"] - marks["stalled"],
        "recovering_after_release_s": recovering - marks["released"],
        "incident_states": [i["state"] for i in observed.incidents],
        "unclean_stops": sorted(unclean),
    }

    def rel(at: float) -> float:
        return round(at - recovering, 3)

    raw = {
        "waves": [{**w, "at_s": rel(w["time"])} for w in waves],
        "final_waves": [{**w, "at_s": rel(w["time"])} for w in finals],
        "requests": [{**r, "at_s": rel(r["time"])} for r in observed.requests],
        "incidents": [{**i, "at_s": rel(i["time"])} for i in observed.incidents],
        "health": [(rel(t), round(h, 4), state) for t, h, state in observed.health],
        "home_at_s": {c: rel(t) for c, t in sorted(home_at.items())},
        "marks_s": {k: rel(v) for k, v in marks.items()},
    }
    return {"summary": summary, "raw": raw}


def _fmt(value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, float):
        return round(value, 3)
    return value


def goals_of(room: str, fixed: dict[str, Any], adaptive: dict[str, Any]) -> list[dict[str, Any]]:
    """The two goals of issue 18 in ``room``: sooner home, and no re-overload."""
    ratio = ratio_home(fixed, adaptive)
    return [
        {
            "name": f"{room}: adaptive waves bring every client home sooner than fixed waves",
            "target": "time_home(adaptive) / time_home(fixed) < 1",
            "value": ratio if ratio is not None else float("nan"),
            "met": ratio is not None and ratio < 1 and adaptive["every_client_home"],
        },
        {
            "name": f"{room}: adaptive waves: zero re-overloads of A during readmission",
            "target": "relapses + reports below failover threshold == 0",
            "value": adaptive["reoverloads"],
            "met": adaptive["reoverloads"] == 0,
        },
    ]


def ratio_home(fixed: dict[str, Any], adaptive: dict[str, Any]) -> float | None:
    """Time home with adaptive waves over time home with fixed ones (None: one never was)."""
    if adaptive["time_home_s"] is None or not fixed["time_home_s"]:
        return None
    return float(adaptive["time_home_s"] / fixed["time_home_s"])


def print_room(room: str, runs: dict[str, dict[str, Any]]) -> None:
    """The waves of each run in ``room`` with their reasons, then the figures side by side."""
    for sizing in RUNS:
        print(f"{room}, {sizing} waves:")
        for wave in runs[sizing]["raw"]["waves"]:
            print(
                f"  wave {wave['wave']} at {wave['at_s']:.2f}s: {len(wave['clients'])} clients "
                f"(health {_fmt(wave['health'])}): {wave['reason']}"
            )
    fixed, adaptive = runs["fixed"]["summary"], runs["adaptive"]["summary"]
    rows = [
        (
            label,
            _fmt(fixed[key]) if not isinstance(fixed[key], list) else fixed[key],
            _fmt(adaptive[key]) if not isinstance(adaptive[key], list) else adaptive[key],
        )
        for label, key in (
            ("health, every client home, before the stall", "health_all_home_before"),
            ("every client home after recovering (s)", "time_home_s"),
            ("incident closed after recovering (s)", "time_closed_s"),
            ("first wave after recovering (s)", "first_wave_after_s"),
            ("waves", "waves"),
            ("wave sizes", "wave_sizes"),
            ("lowest health, recovering to closed", "lowest_health"),
            (f"lowest health, recovering to {TAIL_S:g}s after closed", "lowest_health_to_end"),
            ("health, every client home, at the end", "health_all_home_after"),
            ("reports below connection threshold", "below_connection_threshold"),
            ("reports below failover threshold", "below_failover_threshold"),
            ("relapses", "relapses"),
            ("readmission requests answered (wave 0)", "requests"),
        )
    ]
    print(table(f"room {room}", ("", "fixed", "adaptive"), rows))
    print(f"{room}: time home, adaptive / fixed: {_fmt(ratio_home(fixed, adaptive))}")


def main(argv: list[str] | None = None) -> int:
    """Run both sizings on the same incident in each room, write ``readmission.json``,
    print the goals."""
    args = arguments((__doc__ or "").splitlines()[0], argv)
    params = dict(QUICK if args.quick else FULL)
    defaults = ReadmitterConfig()
    print(
        f"readmission: {params['clients']} clients on A x {CLIENT_RATE:g}/s, A {WORKERS} "
        f"workers; busy with every client home: "
        + ", ".join(f"{room} {ROOMS[room]:g}" for room in params["rooms"])
        + f"; waves every {params['wave_interval_s']:g}s; fixed: {defaults.wave_size} a wave; "
        f"adaptive: first {defaults.first_wave_size}, growth {defaults.growth:g}x, margin "
        f"{defaults.margin:g}, {defaults.settle_reports} reports to settle"
    )
    rooms: dict[str, dict[str, dict[str, Any]]] = {}
    for room in params["rooms"]:
        rooms[room] = {}
        for sizing in RUNS:
            tmp = Path(tempfile.mkdtemp(prefix=f"aaa-bench-readmission-{room}-{sizing}-"))
            try:
                rooms[room][sizing] = asyncio.run(run(sizing, room, params, tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    goals = [
        goal
        for room, runs in rooms.items()
        for goal in goals_of(room, runs["fixed"]["summary"], runs["adaptive"]["summary"])
    ]
    results = {
        "parameters": {
            **params,
            "quick": args.quick,
            "server": SERVER,
            "workers": WORKERS,
            "client_rate": CLIENT_RATE,
            "rooms": {
                room: {
                    "full_load_threads": ROOMS[room],
                    "service_time_ms": service_time_ms(params["clients"], room),
                }
                for room in params["rooms"]
            },
            "stalled_workers": STALLED,
            "hold_s": HOLD_S,
            "readmitter_defaults": {
                "wave_size": defaults.wave_size,
                "first_wave_size": defaults.first_wave_size,
                "growth": defaults.growth,
                "margin": defaults.margin,
                "settle_reports": defaults.settle_reports,
                "max_wave_size": defaults.max_wave_size,
            },
            "settings": {sizing: settings(sizing, params["wave_interval_s"]) for sizing in RUNS},
            "baseline": "fixed waves (readmitter.sizing = fixed, the default wave_size)",
        },
        "samples": {
            room: {sizing: run["raw"] for sizing, run in runs.items()}
            for room, runs in rooms.items()
        },
        "summary": {
            room: {
                **{sizing: run["summary"] for sizing, run in runs.items()},
                "ratio_time_home": ratio_home(
                    runs["fixed"]["summary"], runs["adaptive"]["summary"]
                ),
            }
            for room, runs in rooms.items()
        },
        "goals": goals,
    }
    path = write(args.out, NAME, results)
    for room, runs in rooms.items():
        print_room(room, runs)
    for goal in goals:
        print(goal_line(goal))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
