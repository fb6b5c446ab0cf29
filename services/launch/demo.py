"""`aaa-failover demo`: one overload incident on an embedded farm, end to end.

Starts the embedded nats-server, three reference servers, every service and
simulated clients sending Access-Requests; stalls most of server A's worker
pool (as a hung backend would), prints the timeline as the services detect it,
move A's clients and later readmit them in waves, and ends with a summary.
Needs no configuration and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    FailoverPlan,
    HealthReport,
    Incident,
    ReadmitRequest,
    ReadmitWave,
    ServerControl,
)
from services.launch.farm import write_farm
from services.launch.supervisor import Supervisor
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config

OVERLOADED = "A"

DEMO_SETTINGS: dict[str, Any] = {
    "collector": {"interval_s": 0.5, "status_timeout_s": 0.25},
    "evaluator": {
        "failover_threshold": 0.2,
        "connection_threshold": 0.6,
        "failover_samples": 2,
        "recovery_samples": 3,
    },
    "targeter": {"max_share": 1.0, "step_interval_s": 1.0},
    "notifier": {"ack_timeout_s": 1.0, "retries": 3},
    "readmitter": {"wave_interval_s": 2.0, "retry_after_s": 5.0},
}


class LogFiles:
    """Each service's log lines, in its own file under the demo's folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, line: str) -> None:
        with self._lock:
            handle = self._files.get(name)
            if handle is None:
                handle = self._files[name] = (self.directory / f"{name}.log").open("a")
            handle.write(line + "\n")
            handle.flush()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


@dataclass
class Timeline:
    """What the demo saw on the bus, and the figures of its summary."""

    started: float = field(default_factory=time.time)
    onset: float | None = None
    targeted: set[str] = field(default_factory=set)
    moved_at: dict[str, float] = field(default_factory=dict)
    waves: list[ReadmitWave] = field(default_factory=list)
    incident_states: list[Incident] = field(default_factory=list)
    statuses: dict[str, ClientStatus] = field(default_factory=dict)
    failed_deliveries: int = 0
    decisions: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def say(self, at: float, server: str, text: str) -> None:
        print(f"  {at - self.started:+7.2f}s  {server:<7} {text}", flush=True)

    @property
    def closed(self) -> bool:
        return any(i.state == "closed" for i in self.incident_states)

    def all_home(self, config: Config) -> bool:
        return len(self.statuses) == len(config.clients) and all(
            s.current == s.home for s in self.statuses.values()
        )

    async def on_event(self, event: Any) -> None:
        if isinstance(event, Incident | FailoverPlan | ReadmitWave):
            # a decision sent again until the stream stored it is heard again: once is news
            if event.id in self.decisions:
                return
            self.decisions.add(event.id)
        match event:
            case Incident():
                self.incident_states.append(event)
                self.say(
                    event.time,
                    event.server,
                    f"incident {event.state} (health {event.health:.2f}; {event.reason})",
                )
            case FailoverPlan():
                self.targeted.update(m.client for m in event.moves)
                where = sorted({m.alternates[0] for m in event.moves if m.alternates})
                self.say(
                    event.time,
                    event.server,
                    f"plan: move {len(event.moves)} clients to {', '.join(where) or '-'}"
                    + (f"; {len(event.unplaced)} without an alternate" if event.unplaced else ""),
                )
            case Ack() if event.accepted and event.now_on != event.server:
                if event.client in self.targeted and event.client not in self.moved_at:
                    self.moved_at[event.client] = event.time
                    self.say(event.time, event.server, f"{event.client} moved to {event.now_on}")
            case Ack() if event.accepted:
                self.say(event.time, event.server, f"{event.client} is back home")
            case ReadmitWave() if event.wave > 0 or event.final:
                self.waves.append(event)
                self.say(
                    event.time,
                    event.server,
                    f"readmit wave {event.wave}: {', '.join(event.clients) or '-'}"
                    + (" (final)" if event.final else ""),
                )
            case ReadmitRequest():
                self.say(event.time, event.server, f"{event.client} asks to return")
            case Delivery(outcome="failed"):
                self.failed_deliveries += 1
                self.say(event.time, event.server, f"notice to {event.client} failed")
            case ServerControl():
                self.say(
                    event.time,
                    event.server,
                    f"control: {event.stalled_workers} workers stalled",
                )
            case ClientStatus():
                self.statuses[event.client] = event
            case HealthReport():
                pass
        self.changed.set()

    async def wait_for(self, condition: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return condition()  # type: ignore[no-any-return]
        return True


def demo(clients: int = 20, overload_s: float = 12.0, keep: str | None = None) -> int:
    """Run the demo; 0 when every moved client came home and the incident closed."""
    directory = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="aaa-demo-"))
    try:
        return asyncio.run(_demo(directory, clients, overload_s, keep=bool(keep)))
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


async def _demo(directory: Path, clients: int, overload_s: float, *, keep: bool) -> int:
    config, path = write_farm(
        directory, DEMO_SETTINGS, bus_url=None, clients=clients, client_rate=4.0, probes=True
    )
    logs = LogFiles(directory / "logs")
    supervisor = Supervisor(config, path, sink=logs, grace_s=10.0)
    timeline = Timeline()
    print(f"aaa-failover demo: 3 reference servers, {clients} clients; logs in {logs.directory}")
    try:
        await asyncio.to_thread(supervisor.start)
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus,
                Keyring.from_config(config),
                name="demo",
                stack=stack,
                url=supervisor.bus_url,
            )
            await bus.subscribe(
                bus.subjects.all,
                timeline.on_event,
                types=(
                    Incident,
                    FailoverPlan,
                    Ack,
                    ReadmitWave,
                    ReadmitRequest,
                    Delivery,
                    ServerControl,
                    ClientStatus,
                    HealthReport,
                ),
                accept_clients=True,
            )
            status = await _scenario(config, supervisor, bus, timeline, overload_s)
    finally:
        statuses = await asyncio.to_thread(supervisor.stop)
        logs.close()
        unclean = {name: s for name, s in statuses.items() if s != 0}
        if unclean:
            print(f"services that did not stop cleanly: {unclean}", file=sys.stderr)
    if keep and timeline.incident_states:
        incident = timeline.incident_states[0].incident_id
        print(
            f"\nthe farm and its recorded stream stay in {directory}; look at the incident with"
            f"\n  aaa-failover replay -c {path} --incident {incident}"
            f"\n  aaa-failover report -c {path} --incident {incident} -o incident.png"
        )
    return status


async def _scenario(
    config: Config, supervisor: Supervisor, bus: Bus, timeline: Timeline, overload_s: float
) -> int:
    server = config.server(OVERLOADED)
    assert server.reference is not None
    workers = server.reference.workers
    if not await timeline.wait_for(lambda: len(timeline.statuses) == len(config.clients), 20):
        print("clients did not report in time", file=sys.stderr)
        return 1
    timeline.say(time.time(), "-", "all services up; clients sending Access-Requests")
    await asyncio.sleep(2.0)  # steady traffic before the incident, for the summary

    timeline.onset = time.time()
    stall = ServerControl(server=OVERLOADED, stalled_workers=workers - 1)
    await bus.publish(bus.subjects.control(OVERLOADED), stall)
    await timeline.wait_for(
        lambda: bool(timeline.targeted) and timeline.targeted <= set(timeline.moved_at),
        overload_s,
    )
    remaining = overload_s - (time.time() - timeline.onset)
    if remaining > 0:
        await asyncio.sleep(remaining)  # the backend stays hung for the whole overload
    await bus.publish(
        bus.subjects.control(OVERLOADED), ServerControl(server=OVERLOADED, stalled_workers=0)
    )
    done = await timeline.wait_for(lambda: timeline.closed and timeline.all_home(config), 90)

    await asyncio.to_thread(supervisor.stop_process, "agent")
    await bus.nc.flush()
    _summary(config, timeline)
    return 0 if done and timeline.targeted else 1


def _summary(config: Config, timeline: Timeline) -> None:
    statuses = list(timeline.statuses.values())
    sent = sum(s.sent for s in statuses)
    answered = sum(s.answered + s.rejected for s in statuses)
    lost = sum(s.lost for s in statuses)
    print("\nsummary")
    print(f"  requests sent {sent}, answered {answered}, lost {lost}")
    if timeline.onset is not None and timeline.moved_at:
        last = max(timeline.moved_at.values()) - timeline.onset
        print(
            f"  clients moved: {len(timeline.moved_at)} of {len(timeline.targeted)} targeted;"
            f" last moved {last:.2f}s after overload onset"
        )
    for wave in timeline.waves:
        print(
            f"  wave {wave.wave} at {wave.time - timeline.started:+.2f}s:"
            f" {len(wave.clients)} client{'' if len(wave.clients) == 1 else 's'}"
            + (" (final)" if wave.final else "")
        )
    home = sum(1 for s in statuses if s.current == s.home)
    print(f"  clients on their home server at the end: {home} of {len(config.clients)}")
    print(f"  incident closed: {'yes' if timeline.closed else 'no'}")
    if timeline.failed_deliveries:
        print(f"  failed notice deliveries: {timeline.failed_deliveries}")
    if timeline.incident_states:
        print(f"  incident id: {timeline.incident_states[0].incident_id}")
