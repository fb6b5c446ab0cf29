"""Benchmark of one overload incident: client-side failover alone, then with aaa-failover.

Each scenario gets a fresh farm: an embedded nats-server, three reference
servers ``A``, ``B`` and ``C`` (``python -m services.launch.cli run aaa --only X``,
one process each) and ONE agent process serving every client, each client
with a ``proxy`` section on its own loopback address. A load generator in
this process plays the NAS devices: it sends Access-Requests at a steady
total rate, round robin over the clients' proxies, and waits for each as a
NAS does (``NAS_TIMEOUT_S`` per try, ``NAS_RETRIES`` retransmissions); a
request still unanswered then is lost. After a warm-up, a ``ServerControl``
stalls all but one of A's workers and raises its service time, so that its
queue fills and requests to A time out; after the overload it restores A.

- **client-side**: nothing else runs. Each proxy behaves like a FreeRADIUS
  home-server pool with the ``ProxyConfig`` defaults (response window,
  zombie, Status-Server checks, answers to alive); that is all that acts.
- **aaa-failover**: the same, plus collector, evaluator, targeter, notifier
  and readmitter, each its own process.

It samples A's Status-Server statistics every ``SAMPLE_S`` (requests
received, threads busy) and follows every client's ``ClientStatus`` and A's
``Incident`` events on the bus. It reports, per scenario: requests sent and
lost, the p99 latency of requests sent during the overload, the time from
onset until every client is off A and until A gets no more requests, how
often A is overloaded again after it recovered, and the time until every
client is home. Writes ``bench/results/incident.json``; asserts nothing.

With ``--scale`` the farm has 10,000 clients (``--clients N`` another
number), a third of them homed on A, every one an agent client of one agent
process (notices, acks, timers, a ``ClientStatus`` every
``SCALE_STATUS_INTERVAL_S``); the NAS traffic goes through the proxies of
100 of them (every hundredth client), at the full mode's rate, and the others
carry none. It writes ``incident_10k.json`` and adds, per scenario, the
clients on A at onset, how many left it, when the last of them did, and the
plans, notices and readmission waves of the incident.

Run: ``.venv/bin/python bench/incident.py [--quick] [--scale] [--clients N] [--out DIR]
[--logs DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Collection
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS,
    percentile,
    start_services,
    stop_services,
    summary,
    table,
    write,
)
from schemas.events import (  # noqa: E402
    ClientStatus,
    Delivery,
    FailoverPlan,
    Incident,
    ReadmitWave,
    ServerControl,
)
from services.launch import registry  # noqa: E402
from services.launch.demo import DEMO_SETTINGS, LogFiles  # noqa: E402
from services.launch.farm import farm_dict, free_udp_port, write_config  # noqa: E402
from services.launch.supervisor import ServiceProcess  # noqa: E402
from services.radius.client import RadiusClient, RadiusTimeout, query_status  # noqa: E402
from services.radius.packet import ACCESS_ACCEPT, access_request  # noqa: E402
from services.runtime.bus import Bus, Keyring  # noqa: E402
from services.runtime.config import Config, ProxyConfig, Secret, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402

logger = logging.getLogger(__name__)

NAME = "incident"
OVERLOADED = "A"
WORKERS = 8
SERVICE_TIME_MS = 5.0
OVERLOAD_SERVICE_TIME_MS = 2000.0
"""A's service time during the overload: its one free worker serves a request every 2 s."""
NAS_IP = "127.0.3.1"
NAS_SECRET = "bench-nas-secret"
NAS_TIMEOUT_S = 1.0
NAS_RETRIES = 2
"""The NAS waits 1 s per try and retransmits twice: a request unanswered after 3 s is lost."""
AGENT_RATE = 1.0
"""Each agent's own simulated load (per second), so the targeter knows every client's rate."""
SAMPLE_S = 0.25
TAIL_S = 1.0
SETTLE_MIN_S = 4.0
"""Time at least watched after the recovery: a zombie upstream takes 3 probes to be alive."""
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

FULL = {"clients": 100, "rate": 2.0, "warmup_s": 5.0, "overload_s": 25.0, "settle_max_s": 40.0}
QUICK = {"clients": 21, "rate": 2.0, "warmup_s": 1.5, "overload_s": 4.0, "settle_max_s": 10.0}

SCALE_NAME = "incident_10k"
SCALE = {
    "clients": 10_000,
    "traffic_clients": 100,
    "rate": 2.0,
    "warmup_s": 5.0,
    "overload_s": 25.0,
    "settle_max_s": 150.0,
}
"""``--scale``: the full mode's NAS traffic (100 proxies x 2/s) in a farm of 10,000 clients."""
SCALE_QUICK = {
    **SCALE,
    "clients": 2_000,
    "traffic_clients": 21,
    "warmup_s": 1.5,
    "overload_s": 4.0,
    "settle_max_s": 60.0,
}
"""``--scale --quick``: 2,000 clients (a minute, for ``make bench QUICK=1``)."""
SCALE_STATUS_INTERVAL_S = 10.0
"""Each client's ``ClientStatus`` interval at scale (1,000 a second from 10,000 clients); a
change of server is still reported at once. At the default 1 s, 10,000 clients ask for
10,000 signed statuses a second, more than one agent process on 2 cores publishes."""
SCALE_READY_TIMEOUT_S = 120.0
SCALE_STOP_TIMEOUT_S = 30.0
SCALE_CLIENT_NET = 1
"""Scale clients are on 127.<1 + n // 65536>.<n // 256 % 256>.<n % 256>, clear of the
servers (127.0.0.x), the collector's probes (127.0.2.11) and the NAS (127.0.3.1)."""

SCENARIOS = ("client-side", "aaa-failover")

SETTINGS: dict[str, Any] = DEMO_SETTINGS
"""The demo's settings; readmission in adaptive waves (the default), which grow with the
farm's five times the demo's clients as A shows room for them."""


def proxy_defaults() -> dict[str, float | int]:
    """The ``ProxyConfig`` defaults every client's proxy runs with."""
    proxy = ProxyConfig(nas_secret=Secret(file="nas"))
    return {
        "response_window_s": proxy.response_window_s,
        "check_interval_s": proxy.check_interval_s,
        "check_timeout_s": proxy.check_timeout_s,
        "answers_to_alive": proxy.answers_to_alive,
    }


@dataclass
class Request:
    """One NAS request: when it was sent (UNIX time), to which client, and its latency."""

    sent: float
    client: int
    latency_s: float | None = None
    accepted: bool = False


@dataclass
class Observed:
    """What the benchmark saw of a scenario on the bus and in A's statistics.

    Every figure about clients is computed in one pass over the statuses in
    time order, with counts kept as it goes, so that it costs the same per
    status with 10,000 clients as with 20.
    """

    statuses: dict[str, ClientStatus] = field(default_factory=dict)
    log: list[tuple[float, str, str, str]] = field(default_factory=list)
    away: int = 0
    """Clients whose latest status is not on their home server."""
    onset: float | None = None
    recovered: float | None = None
    relapses: int = 0
    incidents: list[tuple[float, str, int]] = field(default_factory=list)
    plans: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)
    """A's failover plans: (plan id, part) -> (time, moves)."""
    deliveries: list[tuple[float, str, str, float | None]] = field(default_factory=list)
    """Every notice's delivery events of A: (time, notice type, outcome, latency)."""
    waves: list[tuple[float, int, int, int, bool]] = field(default_factory=list)
    """A's readmission waves and answers to requests (number 0): (time, number, clients,
    deferred, final)."""
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    sample_errors: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_status(self, event: ClientStatus) -> None:
        before = self.statuses.get(event.client)
        if before is not None:
            self.away -= before.current != before.home
        self.away += event.current != event.home
        self.statuses[event.client] = event
        self.log.append((event.time, event.client, event.current, event.home))

    def all_home(self) -> bool:
        return bool(self.statuses) and self.away == 0

    def _counts(
        self, until: float | None, only: Collection[str] | None = None
    ) -> list[tuple[float, int, int]]:
        """(time, clients on A, clients away from home) after each status, in time order,
        once every client (of ``only``, else of all that reported) is known; up to ``until``."""
        total = len(self.statuses) if only is None else len(only)
        where: dict[str, tuple[str, str]] = {}
        on_a = away = 0
        out = []
        for at, client, current, home in sorted(self.log):
            if until is not None and at > until:
                break
            if only is not None and client not in only:
                continue
            old = where.get(client)
            if old is not None:
                on_a -= old[0] == OVERLOADED
                away -= old[0] != old[1]
            where[client] = (current, home)
            on_a += current == OVERLOADED
            away += current != home
            if len(where) == total:
                out.append((at, on_a, away))
        return out

    def off_a_since(self, only: Collection[str] | None = None) -> float | None:
        """From when until the recovery no client (of ``only``) was on A (None if never so)."""
        assert self.recovered is not None
        since = None
        for at, on_a, _ in self._counts(self.recovered, only):
            if on_a:
                since = None
            elif since is None:
                since = at
        return since

    def home_since(self) -> float | None:
        """From when until the end every client was home (None if not at the end)."""
        since = None
        for at, _, away in self._counts(None):
            if away:
                since = None
            elif since is None:
                since = at
        return since

    def moved_off_a(self) -> tuple[int, dict[str, float], int]:
        """The clients on A at onset (by their latest status before it), when each of them
        that left A during the overload first did, and the clients on A at the recovery."""
        assert self.onset is not None and self.recovered is not None
        where: dict[str, str] = {}
        at_onset: set[str] | None = None
        left: dict[str, float] = {}
        for at, client, current, _ in sorted(self.log):
            if at > self.recovered:
                break
            if at >= self.onset and at_onset is None:
                at_onset = {c for c, now_on in where.items() if now_on == OVERLOADED}
            if at_onset is not None and current != OVERLOADED and client in at_onset:
                left.setdefault(client, at)
            where[client] = current
        if at_onset is None:
            at_onset = {c for c, now_on in where.items() if now_on == OVERLOADED}
        on_a_at_recovery = sum(1 for now_on in where.values() if now_on == OVERLOADED)
        return len(at_onset), left, on_a_at_recovery

    def returns_to_a(self) -> int:
        """How often a client went back to A during the overload."""
        assert self.onset is not None and self.recovered is not None
        where: dict[str, str] = {}
        count = 0
        for at, client, current, _ in sorted(self.log):
            if self.onset < at < self.recovered and current == OVERLOADED:
                count += where.get(client, OVERLOADED) != OVERLOADED
            where[client] = current
        return count


def build_config(directory: Path, bus_url: str, clients: int) -> tuple[Config, Path]:
    """The farm: three reference servers and ``clients`` proxied clients; the config file."""
    data = farm_dict(
        directory,
        bus_url=bus_url,
        prefix="bench",
        clients=clients,
        client_rate=AGENT_RATE,
        workers=WORKERS,
        service_time_ms=SERVICE_TIME_MS,
    )
    (directory / "secrets" / "nas").write_text(NAS_SECRET + "\n")
    for client in data["clients"]:
        client["proxy"] = {
            "ip": client["ip"],
            "auth_port": free_udp_port(client["ip"]),
            "nas_secret": {"file": "secrets/nas"},
        }
    data.update(SETTINGS)
    path = write_config(directory, data)
    return load_config(path), path


def scale_client_ip(index: int) -> str:
    """The loopback address of the scale farm's client ``index`` (0-based)."""
    n = index + 1
    return f"127.{SCALE_CLIENT_NET + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def traffic_indexes(clients: int, traffic_clients: int, servers: int = 3) -> set[int]:
    """The clients (0-based, client ``i`` homed on server ``i % servers``) whose proxies carry
    the NAS traffic: one every ``clients // traffic_clients``, so that their homes go round
    the servers, counted back from the last client homed on A, so that A's clients ranked
    last by the targeter (equal priorities are ranked by id) carry load too, and a plan that
    sheds all of A's load moves every one of A's clients."""
    if traffic_clients >= clients:
        return set(range(clients))
    step = max(1, clients // traffic_clients)
    if step % servers == 0:
        step -= 1
    last_on_a = (clients - 1) // servers * servers
    return {last_on_a - k * step for k in range(traffic_clients) if last_on_a - k * step >= 0}


def build_scale_config(
    directory: Path, bus_url: str, clients: int, traffic_clients: int
) -> tuple[Config, Path]:
    """The scale farm: three reference servers and ``clients`` clients homed in turn on A, B
    and C; ``traffic_clients`` of them with a ``[clients.proxy]`` and the agent's own load,
    the others with neither. Written as text (a TOML library takes seconds for 10,000)."""
    data = farm_dict(
        directory,
        bus_url=bus_url,
        prefix="bench",
        clients=0,
        workers=WORKERS,
        service_time_ms=SERVICE_TIME_MS,
    )
    del data["clients"]
    data.update(SETTINGS)
    data["agent"] = {"status_interval_s": SCALE_STATUS_INTERVAL_S}
    secret_dir = directory / "secrets"
    (secret_dir / "nas").write_text(NAS_SECRET + "\n")
    servers = [server["id"] for server in data["servers"]]
    parts = [tomli_w.dumps(data)]
    traffic = traffic_indexes(clients, traffic_clients, len(servers))
    for i in range(clients):
        cid = f"nas-{i + 1:05d}"
        ip = scale_client_ip(i)
        home = servers[i % len(servers)]
        alternates = ", ".join(f'"{s}"' for s in servers if s != home)
        (secret_dir / f"client-{cid}").write_text(secrets.token_hex(16) + "\n")
        carries = i in traffic
        parts.append(
            f'\n[[clients]]\nid = "{cid}"\nip = "{ip}"\n'
            f'secret = {{ file = "secrets/client-{cid}" }}\n'
            f'home = "{home}"\nalternates = [{alternates}]\n'
            f"rate = {AGENT_RATE if carries else 0.0}\n"
        )
        if carries:
            parts.append(
                f'[clients.proxy]\nip = "{ip}"\nauth_port = {free_udp_port(ip)}\n'
                f'nas_secret = {{ file = "secrets/nas" }}\n'
            )
    path = directory / "config.toml"
    path.write_text("".join(parts))
    return load_config(path), path


def start_control(
    config: Config,
    path: Path,
    bus_url: str,
    with_control: bool,
    sink: LogFiles,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> list[ServiceProcess]:
    """The reference servers, the control services if asked, and the agent, started and ready."""
    names = None if with_control else ("aaa", "agent")
    return start_services(
        registry.plan(config, names), path, bus_url, sink, ready_timeout_s=ready_timeout_s
    )


class Load:
    """The NAS devices: Access-Requests at ``rate`` in total, round robin over the proxies."""

    def __init__(self, proxies: list[tuple[str, int]], rate: float) -> None:
        self.proxies = proxies
        self.rate = rate
        self.requests: list[Request] = []
        self.stop = asyncio.Event()
        self._clients: list[RadiusClient] = []

    async def run(self) -> None:
        secret = NAS_SECRET.encode()
        for address in self.proxies:
            self._clients.append(await RadiusClient.open(address, secret, bind_ip=NAS_IP))
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        next_at = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        try:
            while not self.stop.is_set():
                record = Request(time.time(), i % len(self._clients))
                self.requests.append(record)
                task = asyncio.create_task(self._one(self._clients[record.client], record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
            if tasks:
                await asyncio.wait(set(tasks), timeout=NAS_TIMEOUT_S * (NAS_RETRIES + 1) + 1)
        finally:
            for task in tasks:
                task.cancel()
            for client in self._clients:
                client.close()

    async def _one(self, client: RadiusClient, record: Request) -> None:
        pkt = access_request(NAS_SECRET.encode(), "alice", "wonderland")
        started = time.perf_counter()
        try:
            reply = await client.send(pkt, timeout_s=NAS_TIMEOUT_S, retries=NAS_RETRIES)
        except RadiusTimeout:
            return
        except RuntimeError as exc:
            logger.warning("request not sent: %s", exc)
            return
        record.latency_s = time.perf_counter() - started
        record.accepted = reply.code == ACCESS_ACCEPT


async def sample_a(config: Config, observed: Observed, stop: asyncio.Event) -> None:
    """A's Status-Server statistics every ``SAMPLE_S``: (time, requests, threads busy, total)."""
    server = config.server(OVERLOADED)
    address = (server.ip, server.auth_port)
    secret = config.read_secret(server.status_secret)
    while not stop.is_set():
        try:
            values = await query_status(address, secret, timeout_s=SAMPLE_S)
            observed.samples.append(
                (
                    time.time(),
                    int(values.get("FreeRADIUS-Total-Access-Requests", 0)),
                    int(values.get("FreeRADIUS-Stats-Threads-Active", 0)),
                    int(values.get("FreeRADIUS-Stats-Threads-Total", WORKERS)),
                )
            )
        except (RadiusTimeout, OSError):
            observed.sample_errors += 1
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


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


async def scenario(name: str, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one scenario on a fresh farm and bus; its raw figures."""
    with_control = name == "aaa-failover"
    scale = bool(params.get("scale"))
    ready_timeout_s = SCALE_READY_TIMEOUT_S if scale else READY_TIMEOUT_S
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    logs = LogFiles(workdir / "logs")
    processes: list[ServiceProcess] = []
    observed = Observed()
    timings: dict[str, float] = {}
    try:
        began = time.monotonic()
        if scale:
            config, path = build_scale_config(
                workdir / "farm", nats.url, params["clients"], params["traffic_clients"]
            )
        else:
            config, path = build_config(workdir / "farm", nats.url, params["clients"])
        timings["config_s"] = time.monotonic() - began
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench", stack=stack, url=nats.url
            )

            async def on_status(event: ClientStatus) -> None:
                observed.on_status(event)
                observed.changed.set()

            async def on_incident(event: Incident) -> None:
                if event.server == OVERLOADED:
                    observed.incidents.append((event.time, event.state, event.relapses))
                    observed.relapses = max(observed.relapses, event.relapses)
                observed.changed.set()

            async def on_plan(event: FailoverPlan) -> None:
                if event.server == OVERLOADED:
                    observed.plans[(event.plan_id, event.part)] = (event.time, len(event.moves))

            async def on_delivery(event: Delivery) -> None:
                if event.server == OVERLOADED:
                    observed.deliveries.append(
                        (event.time, event.notice_type, event.outcome, event.latency_s)
                    )

            async def on_wave(event: ReadmitWave) -> None:
                if event.server == OVERLOADED:
                    sizes = len(event.clients), len(event.deferred)
                    observed.waves.append((event.time, event.wave, *sizes, event.final))

            await bus.subscribe(
                bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
            )
            await bus.subscribe(bus.subjects.incident("*"), on_incident, types=(Incident,))
            await bus.subscribe(bus.subjects.plan(OVERLOADED), on_plan, types=(FailoverPlan,))
            await bus.subscribe(bus.subjects.delivery("*"), on_delivery, types=(Delivery,))
            await bus.subscribe(bus.subjects.readmit(OVERLOADED), on_wave, types=(ReadmitWave,))
            # heard from the start: the first status of every client comes as its agent starts
            began = time.monotonic()
            processes = await asyncio.to_thread(
                start_control, config, path, nats.url, with_control, logs, ready_timeout_s
            )
            timings["start_s"] = time.monotonic() - began
            if not await wait_until(
                observed,
                lambda: len(observed.statuses) == len(config.clients),
                max(ready_timeout_s, 3 * config.agent.status_interval_s),
            ):
                raise RuntimeError(
                    f"{name}: {len(observed.statuses)} of {len(config.clients)} clients "
                    "reported their status"
                )
            timings["statuses_s"] = time.monotonic() - began - timings["start_s"]
            proxies = [
                (client.proxy.ip, client.proxy.auth_port)
                for client in config.clients
                if client.proxy is not None
            ]
            load = Load(proxies, len(proxies) * params["rate"])
            stop_sampling = asyncio.Event()
            tasks = [
                asyncio.create_task(load.run()),
                asyncio.create_task(sample_a(config, observed, stop_sampling)),
            ]
            try:
                started = time.time()
                await asyncio.sleep(params["warmup_s"])
                control = bus.subjects.control(OVERLOADED)
                observed.onset = time.time()
                await bus.publish(
                    control,
                    ServerControl(
                        server=OVERLOADED,
                        stalled_workers=WORKERS - 1,
                        service_time_ms=OVERLOAD_SERVICE_TIME_MS,
                    ),
                )
                await asyncio.sleep(params["overload_s"])
                observed.recovered = recovered_at = time.time()
                await bus.publish(
                    control,
                    ServerControl(
                        server=OVERLOADED, stalled_workers=0, service_time_ms=SERVICE_TIME_MS
                    ),
                )
                await wait_until(
                    observed,
                    lambda: (
                        observed.all_home()
                        and time.time() - recovered_at >= SETTLE_MIN_S
                        and (
                            not with_control
                            or any(
                                s == "closed" and at > recovered_at
                                for at, s, _ in observed.incidents
                            )
                        )
                    ),
                    params["settle_max_s"],
                )
                await asyncio.sleep(TAIL_S)
            finally:
                load.stop.set()
                stop_sampling.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            ended = time.time()
            used = resources(processes)
            if nats.proc is not None:
                used.update(resources_of({"nats-server": nats.proc.pid}))
            streams = await stream_counts(bus)
    finally:
        began = time.monotonic()
        stop_timeout_s = SCALE_STOP_TIMEOUT_S if scale else STOP_TIMEOUT_S
        statuses = (
            await asyncio.to_thread(stop_services, processes, stop_timeout_s) if processes else {}
        )
        timings["stop_s"] = time.monotonic() - began
        logs.close()
        nats.stop()
    unclean = {k: v for k, v in statuses.items() if v != 0}
    if unclean:
        print(f"{name}: services that did not stop cleanly: {unclean}", file=sys.stderr)
    traffic = {c.id for c in config.clients if c.proxy is not None}
    out = figures(name, observed, load.requests, started, ended)
    out.update(scale_figures(observed, traffic, len(config.clients)))
    out.update(timings)
    out["unclean_stops"] = unclean
    out["processes"] = used
    out["streams"] = streams
    return out


def resources(processes: list[ServiceProcess]) -> dict[str, dict[str, float]]:
    """Each service process's CPU seconds (user and system) and resident memory so far."""
    return resources_of({p.name: p.proc.pid for p in processes if p.proc is not None})


def resources_of(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """CPU seconds (user and system) and resident memory so far of each named process."""
    used = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            cpu = proc.cpu_times()
            used[name] = {"cpu_s": cpu.user + cpu.system, "rss_mib": proc.memory_info().rss / 2**20}
        except psutil.Error:
            continue
    return used


async def stream_counts(bus: Bus) -> dict[str, dict[str, int]]:
    """Per JetStream stream (the event stream, each KV bucket): messages ever stored (the last
    sequence number: every put of a bucket, whatever it keeps) and the bytes it holds."""
    counts = {}
    for info in await bus.nc.jetstream().streams_info():
        counts[info.config.name or ""] = {
            "stored": info.state.last_seq,
            "bytes": info.state.bytes,
        }
    return counts


def figures(
    name: str, observed: Observed, requests: list[Request], started: float, ended: float
) -> dict[str, Any]:
    """The scenario's report figures from its raw observations."""
    assert observed.onset is not None and observed.recovered is not None
    onset, recovered = observed.onset, observed.recovered
    off_a = observed.off_a_since()
    home = observed.home_since()
    sent = len(requests)
    lost = sum(1 for r in requests if r.latency_s is None)
    during = [r for r in requests if onset <= r.sent < recovered]
    during_lat = [r.latency_s for r in during if r.latency_s is not None]
    answered_lat = [r.latency_s for r in requests if r.latency_s is not None]
    # the last sample during the overload at which A had received more requests
    last_growth = None
    previous = None
    for at, count, _, _ in observed.samples:
        if previous is not None and onset < at <= recovered and count > previous:
            last_growth = at
        previous = count
    # overload episodes of A (every thread busy) that begin after it recovered
    reoverloads = 0
    busy_before = True
    for at, _, active, total in observed.samples:
        busy = active >= total
        if at > recovered and busy and not busy_before:
            reoverloads += 1
        if at > recovered:
            busy_before = busy
    return {
        "scenario": name,
        "sent": sent,
        "lost": lost,
        "lost_percent": 100.0 * lost / sent if sent else 0.0,
        "lost_during_overload": sum(1 for r in during if r.latency_s is None),
        "rejected": sum(1 for r in requests if r.latency_s is not None and not r.accepted),
        "late_over_1s": sum(1 for r in answered_lat if r > NAS_TIMEOUT_S),
        "p50_ms": percentile(answered_lat, 0.50) * 1e3 if answered_lat else 0.0,
        "p99_incident_ms": percentile(during_lat, 0.99) * 1e3 if during_lat else 0.0,
        "sent_during_overload": len(during),
        "all_off_a_s": None if off_a is None else max(0.0, off_a - onset),
        "returns_to_a": observed.returns_to_a(),
        "last_request_at_a_s": None if last_growth is None else last_growth - onset,
        "reoverloads_sampled": reoverloads,
        "incident_relapses": observed.relapses,
        "incident_states": [s for _, s, _ in observed.incidents],
        "all_home_s": None if home is None else max(0.0, home - recovered),
        "overload_s": recovered - onset,
        "duration_s": ended - started,
        "a_samples": len(observed.samples),
        "a_sample_errors": observed.sample_errors,
    }


def scale_figures(observed: Observed, traffic: Collection[str], clients: int) -> dict[str, Any]:
    """What tells how the loop copes with the farm's size: the clients on A and when the last
    of them left it, and A's plans, notices and readmission waves (aaa-failover only)."""
    assert observed.onset is not None and observed.recovered is not None
    onset, recovered = observed.onset, observed.recovered
    on_a, left, on_a_at_recovery = observed.moved_off_a()
    traffic_off = observed.off_a_since(traffic) if traffic else None
    plans = sorted(observed.plans.values())
    outcomes: dict[str, dict[str, int]] = {}
    for _, kind, outcome, _ in observed.deliveries:
        by_kind = outcomes.setdefault(kind, {})
        by_kind[outcome] = by_kind.get(outcome, 0) + 1
    failover = [d for d in observed.deliveries if d[1].startswith("notice.failover")]
    failover_acked = [at for at, _, outcome, _ in failover if outcome == "acked"]
    ack_latency = [lat for _, _, outcome, lat in failover if outcome == "acked" and lat is not None]
    opened = [at for at, state, _ in observed.incidents if state == "opened" and at >= onset]
    closed = [at for at, state, _ in observed.incidents if state == "closed" and at > recovered]
    waves = sorted(w for w in observed.waves if w[1] > 0)
    answers = [w for w in observed.waves if w[1] == 0]
    return {
        "clients": clients,
        "traffic_clients": len(traffic),
        "clients_on_a": on_a,
        "moved_off_a": len(left),
        "on_a_at_recovery": on_a_at_recovery,
        "last_moved_off_a_s": max(left.values()) - onset if left else None,
        "traffic_all_off_a_s": None if traffic_off is None else max(0.0, traffic_off - onset),
        "statuses_heard": len(observed.log),
        "incident_opened_s": opened[0] - onset if opened else None,
        "incidents_before_onset": sum(
            1 for at, state, _ in observed.incidents if state == "opened" and at < onset
        ),
        "plan_parts": len(plans),
        "plan_moves": sum(moves for _, moves in plans),
        "first_plan_s": plans[0][0] - onset if plans else None,
        "last_plan_s": plans[-1][0] - onset if plans else None,
        "deliveries": outcomes,
        "last_failover_ack_s": max(failover_acked) - onset if failover_acked else None,
        "failover_ack_latency_s": summary(ack_latency),
        "waves": [
            {"after_recovery_s": at - recovered, "wave": number, "clients": size, "final": final}
            for at, number, size, _, final in waves
        ],
        "requests_answered": {
            "granted": sum(size for _, _, size, _, _ in answers),
            "deferred": sum(deferred for _, _, _, deferred, _ in answers),
        },
        "incident_closed_s": closed[-1] - recovered if closed else None,
    }


def _fmt(value: Any) -> Any:
    return "-" if value is None else value


def _notices(run: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for kind, outcomes in run["deliveries"].items():
        if kind.startswith("notice.failover"):
            counts = outcomes
    return f"{counts.get('sent', 0)} / {counts.get('retried', 0)}"


def _ack_latency(run: dict[str, Any]) -> str:
    latency = run["failover_ack_latency_s"]
    return "-" if not latency.get("n") else f"{latency['median']:.2f} / {latency['max']:.2f}"


def _startup(run: dict[str, Any]) -> str:
    return f"{run['start_s']:.1f}, {run['statuses_s']:.1f}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line: ``--quick`` and ``--out`` as every benchmark, ``--scale``,
    ``--clients`` and ``--logs``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small, fast version")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--scale",
        action="store_true",
        help=f"10,000 clients, the NAS traffic through 100 of them (writes {SCALE_NAME}.json)",
    )
    parser.add_argument("--clients", type=int, help="this many clients instead of the mode's")
    parser.add_argument("--logs", type=Path, help="keep every service's log in DIR/<scenario>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, write ``incident.json``, print the table and the goals."""
    args = parse(argv)
    name = SCALE_NAME if args.scale else NAME
    if args.scale:
        params: dict[str, Any] = dict(SCALE_QUICK if args.quick else SCALE, scale=True)
    else:
        params = dict(QUICK if args.quick else FULL)
    if args.clients is not None:
        params["clients"] = args.clients
    traffic = params.setdefault("traffic_clients", params["clients"])
    traffic = params["traffic_clients"] = min(traffic, params["clients"])
    defaults = proxy_defaults()
    if args.scale:
        print(
            f"incident at scale: {params['clients']:,} clients (one agent process, a status "
            f"every {SCALE_STATUS_INTERVAL_S:g}s each), the NAS traffic through {traffic} of "
            f"them x {params['rate']:g}/s, A overloaded {params['overload_s']:g}s; NAS timeout "
            f"{NAS_TIMEOUT_S:g}s x {NAS_RETRIES + 1} tries"
        )
    else:
        print(
            f"incident: {params['clients']} clients x {params['rate']:g}/s through their "
            f"proxies, A overloaded {params['overload_s']:g}s; NAS timeout {NAS_TIMEOUT_S:g}s x "
            f"{NAS_RETRIES + 1} tries"
        )
    print("client-side failover (ProxyConfig defaults): " + ", ".join(
        f"{k}={v}" for k, v in defaults.items()
    ))  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    for scenario_name in SCENARIOS:
        tmp = Path(tempfile.mkdtemp(prefix=f"aaa-bench-incident-{scenario_name}-"))
        try:
            runs[scenario_name] = asyncio.run(scenario(scenario_name, params, tmp))
        finally:
            if args.logs is not None and (tmp / "logs").is_dir():
                shutil.copytree(tmp / "logs", args.logs / scenario_name, dirs_exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    a, b = runs["client-side"], runs["aaa-failover"]
    ratio = b["lost"] / a["lost"] if a["lost"] else (0.0 if b["lost"] == 0 else float(b["lost"]))
    b_reoverloads = b["incident_relapses"] + b["reoverloads_sampled"]
    goals = [
        {
            "name": "aaa-failover loses under 0.1 % of requests",
            "target": "< 0.1 %",
            "value": b["lost_percent"],
            "met": b["lost_percent"] < 0.1,
        },
        {
            "name": "aaa-failover loses under a tenth of what client-side failover loses",
            "target": "lost(b) / lost(a) < 0.1",
            "value": ratio,
            "met": a["lost"] > 0 and b["lost"] * 10 < a["lost"],
        },
        {
            "name": "aaa-failover: zero re-overloads of A during readmission",
            "target": "relapses + sampled re-overloads == 0",
            "value": b_reoverloads,
            "met": b_reoverloads == 0,
        },
    ]
    results = {
        "parameters": {
            **params,
            "quick": args.quick,
            "servers": 3,
            "workers": WORKERS,
            "service_time_ms": SERVICE_TIME_MS,
            "overload": {
                "stalled_workers": WORKERS - 1,
                "service_time_ms": OVERLOAD_SERVICE_TIME_MS,
            },
            "nas_timeout_s": NAS_TIMEOUT_S,
            "nas_retries": NAS_RETRIES,
            "agent_rate": AGENT_RATE,
            "proxy_defaults": defaults,
            "settings": SETTINGS,
            "baseline": "client-side failover only (agent proxies, no aaa-failover services)",
            **(
                {
                    "status_interval_s": SCALE_STATUS_INTERVAL_S,
                    "agent_processes": 1,
                    "traffic": (
                        f"NAS traffic through the proxies of {traffic} clients (every "
                        f"{max(1, params['clients'] // traffic)}th), {params['rate']:g}/s each, "
                        f"and their own load of {AGENT_RATE:g}/s each; the other "
                        f"{params['clients'] - traffic} clients have no proxy and no load"
                    ),
                }
                if args.scale
                else {}
            ),
        },
        "samples": runs,
        "summary": {
            **{name: dict(run) for name, run in runs.items()},
            "lost_ratio": ratio,
        },
        "goals": goals,
    }
    path = write(args.out, name, results)
    rows = [
        ("requests sent", a["sent"], b["sent"]),
        ("lost (count)", a["lost"], b["lost"]),
        ("lost (%)", round(a["lost_percent"], 3), round(b["lost_percent"], 3)),
        ("answered after > 1 s", a["late_over_1s"], b["late_over_1s"]),
        ("p99 latency in the overload (ms)", a["p99_incident_ms"], b["p99_incident_ms"]),
        ("every client off A after (s)", _fmt(a["all_off_a_s"]), _fmt(b["all_off_a_s"])),
        (
            "last request reached A after (s)",
            _fmt(a["last_request_at_a_s"]),
            _fmt(b["last_request_at_a_s"]),
        ),
        ("clients going back to A in the overload", a["returns_to_a"], b["returns_to_a"]),
        ("A overloaded again after recovery", a["reoverloads_sampled"], b["reoverloads_sampled"]),
        ("incident relapses", "-", b["incident_relapses"]),
        ("all home after recovery (s)", _fmt(a["all_home_s"]), _fmt(b["all_home_s"])),
    ]
    if args.scale:
        rows += [
            ("clients (carrying the NAS traffic)", a["clients"], a["traffic_clients"]),
            ("clients on A at onset", a["clients_on_a"], b["clients_on_a"]),
            ("of them left A in the overload", a["moved_off_a"], b["moved_off_a"]),
            (
                "last client moved off A after (s)",
                _fmt(a["last_moved_off_a_s"]),
                _fmt(b["last_moved_off_a_s"]),
            ),
            (
                "every traffic client off A after (s)",
                _fmt(a["traffic_all_off_a_s"]),
                _fmt(b["traffic_all_off_a_s"]),
            ),
            ("clients still on A at recovery", a["on_a_at_recovery"], b["on_a_at_recovery"]),
            ("incident opened after (s)", "-", _fmt(b["incident_opened_s"])),
            ("plan parts / moves", "-", f"{b['plan_parts']} / {b['plan_moves']}"),
            ("last failover notice acked after (s)", "-", _fmt(b["last_failover_ack_s"])),
            ("failover notices sent / retried", "-", _notices(b)),
            ("notice to ack p50 / max (s)", "-", _ack_latency(b)),
            ("readmission waves", "-", " ".join(str(w["clients"]) for w in b["waves"]) or "-"),
            ("start-up: services, every status (s)", _startup(a), _startup(b)),
            ("stop (s)", a["stop_s"], b["stop_s"]),
        ]
    print(table("", ("", "client-side", "aaa-failover"), rows))
    for goal in goals:
        state = "met" if goal["met"] else "NOT met"
        print(f"goal {goal['name']} ({goal['target']}): {state} ({goal['value']:.4g})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
