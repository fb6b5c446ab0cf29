"""The chaos harness: the demo's farm as real processes, an incident, and SIGKILLs on cue.

:func:`run_case` writes the demo's farm (three reference servers, 20 clients, the
demo's settings a little faster), runs it, stalls server A (as `aaa-failover demo`
does), and when each :class:`~tests.support.chaos_moments.Kill`'s moment comes,
seen live on the bus, SIGKILLs its target and starts it again ``RESTART_AFTER_S``
later with the same command. It releases the stall after ``HOLD_S``, waits for the
incident to close and every client to be home, reads the whole run back from the
JetStream stream and runs :func:`tests.support.incident_checks.check_incidents`.

The farm runs one of three ways (:func:`farm_for`):

- :class:`ProcessFarm`: the embedded nats-server (its store in the farm's ``.nats``)
  and each process of the registry's plan, every one in its own process group;
- :class:`UpFarm`: `aaa-failover up` runs it all; killing ``up`` kills its children
  (they die with it), and the next ``up`` starts on the same store;
- :class:`ClusterFarm`: each process as :class:`ProcessFarm` has it, on a 3-node
  nats-server cluster (services/runtime/natscluster.py) with ``bus.replicas`` 3; the
  target is one node (the one leading the prefix's stream), killed and started again
  on its ports and store. The stream is read back once that node has caught up.

Every process is started with ``natsserver.spawn`` (it dies with the test's process)
and killed, with its whole group, when the case ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import psutil

from schemas.events import (
    Ack,
    ClientStatus,
    Event,
    FailoverNotice,
    FailoverPlan,
    Incident,
    ReadmitNotice,
    ReadmitWave,
    ServerControl,
)
from schemas.subjects import Subjects
from services.launch import bususers, registry
from services.launch.demo import DEMO_SETTINGS
from services.launch.devca import make_dev_ca
from services.launch.farm import farm_dict, write_config
from services.runtime import busfile
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, load_config
from services.runtime.lifecycle import says_started
from services.runtime.natscluster import ClusterNode, NatsCluster
from services.runtime.natsserver import EmbeddedNats, ServerTls, spawn
from services.runtime.permissions import HARNESS
from services.tools.recording import events_of, read_window
from services.tools.tail import by_reason, skipped
from tests.support.chaos_moments import CLUSTER_NODE, NATS, UP, Kill, reached
from tests.support.incident_checks import (
    Findings,
    check_incidents,
    incident_ids,
    moved_at,
    targeted_by,
)

OVERLOADED = "A"
CLIENTS = 20
HOLD_S = 8.0
"""How long server A stays stalled (from the stall; longer while its clients are moving)."""
RESTART_AFTER_S = 2.0
"""How long a killed target stays down."""
START_TIMEOUT_S = 60.0
MOMENT_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 120.0
"""How long, after the stall is released, the incident may take to close and every client
to be home: generous, the machine is shared; a case that runs out is checked all the same."""

SETTINGS: dict[str, Any] = {
    **DEMO_SETTINGS,
    "readmitter": {
        **DEMO_SETTINGS["readmitter"],
        "sizing": "fixed",
        "wave_size": 3,
        "wave_interval_s": 1.5,
    },
}
"""The demo's settings, waves a little closer together and of a fixed size, so that the
moment before the final wave is known from the clients left (what the waves cost does not
change what a kill may lose: tests/unit/readmitter/test_sizing.py has the sizing)."""
CLIENT_SETTINGS = {"return_after_s": 60.0}
"""A client asks to return on its own only long after a readmission should have brought it
back (a ReadmitRequest fails the case): its own timer is the fallback, not the path."""

CLUSTER_SIZE = 3
REPLICAS = 3
CATCH_UP_TIMEOUT_S = 120.0
"""How long a restarted cluster node may take to hold again all the others hold."""

CLI = [sys.executable, "-m", "services.launch.cli"]

logger = logging.getLogger(__name__)

Notice = FailoverNotice | ReadmitNotice


def _kill_tree(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL ``proc``, its process group and every descendant; wait for ``proc``."""
    if proc is None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    psutil.wait_procs(children, timeout=10)


def _wait_for_line(path: Path, check: Callable[[str], bool], count: int, timeout_s: float) -> bool:
    """Whether ``path`` holds ``count`` lines passing ``check`` within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(errors="replace")
            if sum(1 for line in text.splitlines() if check(line)) >= count:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


class Farm(Protocol):
    """A running farm a case kills parts of."""

    config: Config
    """The farm's config as its processes read it (the bus it is on)."""
    logs: Path

    def start(self) -> None: ...
    def url(self) -> str: ...
    def kill(self, target: str) -> str | None:
        """SIGKILL ``target``; what was killed, in words, when there is more to say."""
        ...

    def restart(self, target: str) -> None: ...
    def whole(self) -> None:
        """Wait until the bus holds again everything it took (a restarted node caught
        up), so that what is read back from it is the whole recording."""
        ...

    def exited(self) -> dict[str, int]:
        """The processes that exited by themselves (not killed by the case) and their
        exit status: nothing starts them again."""
        ...

    def stop(self) -> None:
        """Stop every process (cleanly when it can), leaving nothing running."""
        ...


class ProcessFarm:
    """The embedded nats-server and every process of the farm, each started by the harness."""

    def __init__(self, config: Config, path: Path, logs: Path) -> None:
        self._processes(config, path, logs)
        self.nats: EmbeddedNats = bususers.embedded(config)

    def _processes(self, config: Config, path: Path, logs: Path) -> None:
        self.config = config
        self.path = path
        self.logs = logs
        self.argv: dict[str, list[str]] = {}
        self.service: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def url(self) -> str:
        return self.nats.url

    def _start_bus(self) -> None:
        self.nats.start()

    def _stop_bus(self) -> None:
        self.nats.stop()

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._start_bus()
        for name, service, args in registry.plan(self.config):
            self.argv[name] = registry.run_argv(service, self.path, bus_url=self.url(), args=args)
            self.service[name] = service
            self._start(name)
        for name in self.argv:
            log = self.logs / f"{name}.log"
            if not _wait_for_line(log, says_started, 1, START_TIMEOUT_S):
                raise AssertionError(f"{name} did not start within {START_TIMEOUT_S:.0f}s: {log}")

    def _start(self, name: str) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        self._files.append(out)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs[name] = spawn(
            self.argv[name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
            start_new_session=True,
        )  # type: ignore[assignment]

    def names(self, target: str) -> list[str]:
        """The processes of ``target``: a service's (every agent process for ``agent``)."""
        found = [name for name, service in self.service.items() if service == target]
        if not found:
            raise KeyError(f"no process of {target} in this farm")
        return found

    def kill(self, target: str) -> str | None:
        if target == NATS:
            assert self.nats.proc is not None
            os.kill(self.nats.proc.pid, signal.SIGKILL)
            self.nats.proc.wait(10)
            return None
        for name in self.names(target):
            _kill_tree(self.procs[name])
        return None

    def restart(self, target: str) -> None:
        if target == NATS:
            self.nats.restart()
            return
        for name in self.names(target):
            self._start(name)

    def whole(self) -> None:
        return None  # one server: what it took is in its store

    def exited(self) -> dict[str, int]:
        # a process the case killed was started again: its latest run is the one to ask
        return {
            name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None
        }

    def stop(self) -> None:
        try:
            for proc in reversed(list(self.procs.values())):
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
        finally:
            for proc in self.procs.values():
                _kill_tree(proc)
            self._stop_bus()
            for out in self._files:
                out.close()


class UpFarm:
    """The farm run by `aaa-failover up` (its own embedded bus); ``up`` is the target."""

    def __init__(self, config: Config, path: Path, logs: Path) -> None:
        self.config = config
        self.path = path
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self._files: list[IO[bytes]] = []
        self._children: list[psutil.Process] = []

    def url(self) -> str:
        url = busfile.running_url(self.path)
        if url is None:
            raise AssertionError(f"no running `up` of {self.path} in its bus file")
        return url

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        log = self.logs / f"up-{self.runs}.log"
        out = log.open("ab")
        self._files.append(out)
        self.proc = spawn(
            [*CLI, "up", "-c", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )  # type: ignore[assignment]
        if not _wait_for_line(log, lambda line: "all services started" in line, 1, START_TIMEOUT_S):
            raise AssertionError(f"`up` did not start within {START_TIMEOUT_S:.0f}s: {log}")
        assert self.proc is not None
        self._children = psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self, target: str) -> str | None:
        assert target == UP, target
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        # its children die with it (PR_SET_PDEATHSIG): wait until they have
        _, alive = psutil.wait_procs(self._children, timeout=30)
        assert not alive, f"`up` was killed but its children live on: {alive}"
        return None

    def restart(self, target: str) -> None:
        assert target == UP, target
        self.start()

    def whole(self) -> None:
        return None  # one server: what it took is in its store

    def exited(self) -> dict[str, int]:
        if self.proc is None or self.proc.poll() is None:
            return {}
        return {"up": self.proc.returncode}

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(60)
        finally:
            _kill_tree(self.proc)
            for child in self._children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            for out in self._files:
                out.close()


class ClusterFarm(ProcessFarm):
    """The farm on a 3-node nats-server cluster (``bus.url`` naming every node,
    ``bus.replicas`` 3), each service its own process as in :class:`ProcessFarm`; the
    target is one node, killed with SIGKILL and started again on its ports, store and
    routes.

    The nodes have the farm's users (passwords in ``cluster/auth``) and TLS (a
    development CA in ``cluster/tls``), as the embedded server has them; the config file
    is written again to name them and every node. The node killed is the one leading the
    prefix's stream (as the running nodes' ``/jsz`` report it), else any running one.
    """

    def __init__(self, config: Config, path: Path, logs: Path) -> None:
        home = path.parent / "cluster"
        tls_dir, auth_dir = home / "tls", home / "auth"
        if not (tls_dir / "ca.pem").is_file():
            make_dev_ca(tls_dir)
        users = bususers.server_users(bususers.farm_users(config), auth_dir)
        self.cluster = NatsCluster(
            home / "nodes",
            size=CLUSTER_SIZE,
            name="chaos",
            users=users,
            tls=ServerTls(
                cert=tls_dir / "server.pem", key=tls_dir / "server-key.pem", ca=tls_dir / "ca.pem"
            ),
            start_timeout_s=START_TIMEOUT_S,
        )
        data = tomllib.loads(path.read_text())
        data["bus"] = {
            **data["bus"],
            "url": self.cluster.urls,
            "replicas": REPLICAS,
            "auth": {"dir": str(auth_dir)},
            "tls": {"ca": str(tls_dir / "ca.pem")},
        }
        write_config(path.parent, data, path.name)
        self._processes(load_config(path), path, logs)
        self.stream = Subjects(self.config.bus.prefix).stream_name()
        self.killed: ClusterNode | None = None

    def url(self) -> str:
        return self.cluster.urls

    def _start_bus(self) -> None:
        self.cluster.start()

    def _stop_bus(self) -> None:
        try:
            self.cluster.stop()
        finally:
            self.logs.mkdir(parents=True, exist_ok=True)
            for node in self.cluster.nodes:  # the nodes' logs, beside the services'
                (self.logs / f"{node.name}.log").write_text(node.log_tail(10_000) + "\n")

    def stream_leader(self) -> tuple[ClusterNode, str]:
        """The running node that leads the prefix's stream, and how it was found; any
        running node when no running node names a running leader."""
        running = [node for node in self.cluster.nodes if node.running]
        named: dict[str, list[str]] = {}
        for node in running:
            try:
                detail = node.streams().get(self.stream) or {}
            except Exception as exc:  # a node that does not answer names no one
                logger.info("node %s: no /jsz: %s", node.name, exc)
                continue
            leader = (detail.get("cluster") or {}).get("leader")
            if leader:
                named.setdefault(str(leader), []).append(node.name)
        for leader, by in sorted(named.items(), key=lambda item: -len(item[1])):
            if any(node.name == leader for node in running):
                return self.cluster.node(leader), f"leader of {self.stream} (per {by})"
        assert running, "no cluster node is running"
        return running[0], f"no running leader of {self.stream} named ({named}): any node"

    def kill(self, target: str) -> str | None:
        assert target == CLUSTER_NODE, target
        assert self.killed is None or self.killed.running, "a node is still down"
        node, why = self.stream_leader()
        node.kill()
        self.killed = node
        return f"node {node.name}, {why}"

    def restart(self, target: str) -> None:
        assert target == CLUSTER_NODE, target
        assert self.killed is not None, "no node was killed"
        self.killed.restart()

    def whole(self) -> None:
        if self.killed is not None:
            self.cluster.wait_caught_up(self.killed, CATCH_UP_TIMEOUT_S)


def farm_for(kills: list[Kill], config: Config, path: Path, logs: Path) -> Farm:
    """The way to run the farm that ``kills`` need (`up` and a cluster node each their own)."""
    targets = {k.target for k in kills}
    if UP in targets:
        assert targets == {UP}, "`up` is killed alone: it runs every other target"
        return UpFarm(config, path, logs)
    if CLUSTER_NODE in targets:
        assert targets == {CLUSTER_NODE}, "a cluster node is killed alone"
        return ClusterFarm(config, path, logs)
    return ProcessFarm(config, path, logs)


@dataclass
class Observer:
    """Every event seen on the bus during the case, by id, and a way to wait on them.

    Joins as the operator's harness; :meth:`join` again on another URL (a new `up`
    has its bus on a new port) and :meth:`catch_up` from the stream what was missed.
    """

    config: Config
    events: list[Event] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    bus: Bus | None = None
    _stack: AsyncExitStack | None = None

    def add(self, event: Event) -> None:
        if event.id in self.ids:
            return
        self.ids.add(event.id)
        self.events.append(event)
        self.changed.set()

    async def on_event(self, event: Event) -> None:
        self.add(event)

    async def join(self, url: str) -> Bus:
        await self.leave()
        self._stack = AsyncExitStack()
        self.bus = await Bus.connect(
            self.config.bus,
            Keyring.from_config(self.config),
            name="chaos",
            stack=self._stack,
            url=url,
            user=HARNESS,
        )
        await self.bus.subscribe(
            self.bus.subjects.all, self.on_event, types=(Event,), accept_clients=True
        )
        return self.bus

    async def leave(self) -> None:
        stack, self._stack, self.bus = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def catch_up(self, since: float) -> None:
        """Add what the stream holds since ``since`` and was not seen live."""
        assert self.bus is not None
        for event in events_of(await read_window(self.bus, since, time.time() + 60)):
            self.add(event)
        self.events.sort(key=lambda e: e.time)

    async def until(self, condition: Callable[[], Any], timeout_s: float) -> Any:
        """The first true value of ``condition()`` within ``timeout_s``, else None."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = condition()
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))

    def latest(self) -> dict[str, ClientStatus]:
        out: dict[str, ClientStatus] = {}
        for event in self.events:
            if isinstance(event, ClientStatus):
                out[event.client] = event
        return out

    def statuses_since(self, since: float) -> set[str]:
        return {e.client for e in self.events if isinstance(e, ClientStatus) and e.time > since}

    def closed(self, server: str) -> bool:
        return any(
            isinstance(e, Incident) and e.server == server and e.state == "closed"
            for e in self.events
        )


@dataclass
class Outcome:
    """What one case did and what its recording shows."""

    kills: list[Kill]
    events: list[Event]
    findings: Findings
    fired: dict[str, str]
    """Each kill's text, and what showed its moment (or why it never came)."""
    skipped: Counter[str]
    logs: Path
    seconds: float
    settled: bool
    exited: dict[str, int] = field(default_factory=dict)
    """The processes that exited by themselves before the end, with their exit status."""
    unrecorded: list[Event] = field(default_factory=list)
    """Events the harness heard live that the stream does not hold: a decision among them
    is lost; the others (acks, notices, statuses, deliveries) count with the recording
    (:func:`findings_of`)."""

    def report(self) -> str:
        lines = [
            f"chaos case {', '.join(str(k) for k in self.kills)}: {self.seconds:.1f}s, "
            f"{len(self.events)} events recorded; logs in {self.logs}"
        ]
        lines += [f"  kill {kill}: {what}" for kill, what in self.fired.items()]
        lines += [f"  {line}" for line in summary(self.events, OVERLOADED)]
        if not self.settled:
            lines.append(
                f"  the incident did not close with every client home within "
                f"{SETTLE_TIMEOUT_S:.0f}s of the release"
            )
        if self.exited:
            lines.append(
                "  processes that exited by themselves (not started again): "
                + ", ".join(f"{name} (exit {code})" for name, code in sorted(self.exited.items()))
            )
        if self.unrecorded:
            kinds = Counter(type(e).__name__ for e in self.unrecorded)
            lines.append(
                f"  heard live but not in the stream: {len(self.unrecorded)} events ("
                + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
                + ")"
            )
            for event in self.unrecorded:
                if isinstance(event, Ack | Notice | Incident | FailoverPlan | ReadmitWave):
                    lines.append(f"    - {_describe(event)}")
        if self.skipped:
            lines.append(f"  stored messages that did not verify: {by_reason(self.skipped)}")
        for check, messages in self.findings.items():
            lines.append(f"  check '{check}' failed:")
            lines += [f"    - {message}" for message in messages]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return (
            not self.findings
            and not self.skipped
            and all(not what.startswith("never") for what in self.fired.values())
        )


def _describe(event: Event) -> str:
    """One decision or answer, for a report: its type, id and what it is about."""
    text = f"{type(event).__name__} {event.id}"
    if isinstance(event, Ack):
        return f"{text} of notice {event.notice_id} by {event.client} (again={event.again})"
    if isinstance(event, Notice):
        return f"{text} to {event.client}"
    return text


def summary(events: list[Event], server: str) -> list[str]:
    """One line per incident of ``server``: its clients targeted and moved, its waves, its
    last state."""
    lines = []
    for incident_id in incident_ids(events, server):
        targeted = targeted_by(events, incident_id)
        moved = moved_at(events, incident_id)
        waves = sorted(
            {
                e.wave
                for e in events
                if isinstance(e, ReadmitWave) and e.incident_id == incident_id and e.wave >= 1
            }
        )
        states = [e for e in events if isinstance(e, Incident) and e.incident_id == incident_id]
        last = f"{states[-1].state} (relapses {states[-1].relapses})" if states else "?"
        lines.append(
            f"incident {incident_id}: {len(targeted)} clients targeted, {len(moved)} moved, "
            f"waves {waves}, last {last}"
        )
    return lines


def write_chaos_farm(directory: Path) -> tuple[Config, Path]:
    """The demo's farm (``CLIENTS`` clients sending, probes on) with :data:`SETTINGS` and
    :data:`CLIENT_SETTINGS`, on the embedded bus of its own folder (``.nats``)."""
    data = farm_dict(directory, bus_url=None, clients=CLIENTS, client_rate=4.0, probes=True)
    data.update(SETTINGS)
    for client in data["clients"]:
        client.update(CLIENT_SETTINGS)
    path = write_config(directory, data)
    return load_config(path), path


async def _publish(observer: Observer, event: ServerControl, timeout_s: float) -> None:
    """Publish ``event`` on the bus the observer has joined, retrying while it is away."""
    deadline = time.monotonic() + timeout_s
    while True:
        bus = observer.bus
        try:
            assert bus is not None, "the observer is not on the bus"
            await bus.publish(bus.subjects.control(event.server), event)
            await bus.nc.flush(timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def run_case(directory: Path, kills: list[Kill]) -> Outcome:
    """Run one chaos case: the farm, the incident on server A, ``kills`` on their cue."""
    began = time.monotonic()
    config, path = write_chaos_farm(directory)
    logs = directory / "logs"
    farm = farm_for(kills, config, path, logs)
    config = farm.config  # a cluster's farm names its nodes
    observer = Observer(config)
    fired: dict[str, str] = {}
    started_at = time.time()
    settled = False
    recorded: list[Any] = []
    exited: dict[str, int] = {}
    read_at = 0.0
    try:
        await asyncio.to_thread(farm.start)
        await observer.join(farm.url())
        server = config.server(OVERLOADED)
        assert server.reference is not None
        reported = await observer.until(lambda: len(observer.latest()) == CLIENTS, START_TIMEOUT_S)
        assert reported, f"not every client reported within {START_TIMEOUT_S:.0f}s"
        steady = time.time()
        await observer.until(lambda: len(observer.statuses_since(steady)) == CLIENTS, 30)

        onset = time.time()
        async with asyncio.TaskGroup() as chaos:
            for kill in kills:
                chaos.create_task(_strike(kill, farm, observer, fired, started_at, onset))
            stall = ServerControl(server=OVERLOADED, stalled_workers=server.reference.workers - 1)
            await _publish(observer, stall, 60)
            await _hold(observer, onset)
            await _publish(observer, ServerControl(server=OVERLOADED, stalled_workers=0), 120)
        released = time.time()

        def done() -> bool:
            latest = observer.latest()
            return observer.closed(OVERLOADED) and all(
                s.current == s.home and s.time > released for s in latest.values()
            )

        settled = bool(await observer.until(done, SETTLE_TIMEOUT_S))
        await asyncio.to_thread(farm.whole)  # the stream holds again all it took
        if not settled:
            await observer.catch_up(started_at)  # what the live subscription may have missed
            settled = done()
        ended = time.time()
        await observer.until(lambda: len(observer.statuses_since(ended)) == CLIENTS, 15)
        assert observer.bus is not None
        read_at = time.time()
        recorded = await read_window(observer.bus, started_at, read_at + 60)
    finally:
        await observer.leave()
        with contextlib.suppress(Exception):
            exited = farm.exited()
        await asyncio.to_thread(farm.stop)
    events = events_of(recorded)
    stored = {e.id for e in events}
    # heard a second or more before the stream was read: it had had the time to store it
    unrecorded = [
        e for e in observer.events if e.id not in stored and started_at <= e.time < read_at - 1.0
    ]
    return Outcome(
        kills=kills,
        events=events,
        findings=findings_of(events, unrecorded),
        fired=fired,
        skipped=skipped(recorded),
        logs=logs,
        seconds=time.monotonic() - began,
        settled=settled,
        exited=exited,
        unrecorded=unrecorded,
    )


DECISIONS = (Incident, FailoverPlan, ReadmitWave)
"""What the stream must hold, whatever was killed: each is published until it is stored."""


def findings_of(stored: Sequence[Event], unrecorded: Sequence[Event]) -> Findings:
    """The checks over what the stream holds, with what the clients and the notifier said
    that it missed (an ack or a notice sent while a cluster elects the stream's leader is
    heard, not stored: they are not retried until stored, as decisions are); and any
    decision heard but not stored, which is lost."""
    lost = [e for e in unrecorded if isinstance(e, DECISIONS)]
    heard = [e for e in unrecorded if not isinstance(e, DECISIONS)]
    findings = check_incidents(sorted([*stored, *heard], key=lambda e: e.time), OVERLOADED)
    if lost:
        findings["decisions stored"] = [
            f"{type(e).__name__} {e.id} at {e.time:.3f} was heard, not stored" for e in lost
        ]
    return findings


async def _hold(observer: Observer, onset: float) -> None:
    """Keep A stalled ``HOLD_S`` from ``onset``, and on while its targeted clients move
    (up to ``MOMENT_TIMEOUT_S``)."""

    def moved() -> bool:
        ids = incident_ids([e for e in observer.events if e.time >= onset], OVERLOADED)
        if not ids:
            return False
        if any(
            isinstance(e, Incident) and e.incident_id == ids[0] and e.state == "closed"
            for e in observer.events
        ):
            return True  # over before any plan (`up` killed as it opened restarts A, unstalled)
        targeted = targeted_by(observer.events, ids[0])
        return bool(targeted) and set(targeted) <= set(moved_at(observer.events, ids[0]))

    await observer.until(moved, MOMENT_TIMEOUT_S)
    remaining = onset + HOLD_S - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def _strike(
    kill: Kill,
    farm: Farm,
    observer: Observer,
    fired: dict[str, str],
    started_at: float,
    onset: float,
) -> None:
    """Wait for the moment of ``kill`` (of the incident opened after ``onset``); SIGKILL its
    target, and start it again later."""
    wave_size = observer.config.readmitter.wave_size

    def cue() -> str | None:
        return reached(
            kill.moment,
            observer.events,
            OVERLOADED,
            time.time(),
            wave_size=wave_size,
            since=onset,
        )

    what = await observer.until(cue, MOMENT_TIMEOUT_S)
    if not what:
        fired[str(kill)] = f"never came within {MOMENT_TIMEOUT_S:.0f}s: nothing killed"
        return
    at = time.time() - started_at
    which = await asyncio.to_thread(farm.kill, kill.target)
    fired[str(kill)] = f"{what}; killed {f'{which} ' if which else ''}at +{at:.1f}s"
    await asyncio.sleep(RESTART_AFTER_S)
    await asyncio.to_thread(farm.restart, kill.target)
    fired[str(kill)] += f", running again at +{time.time() - started_at:.1f}s"
    if kill.target == UP:
        await observer.join(farm.url())
        await observer.catch_up(started_at)
