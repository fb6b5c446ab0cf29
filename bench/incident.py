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

Run: ``.venv/bin/python bench/incident.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import asyncio
import logging
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
    percentile,
    start_services,
    stop_services,
    table,
    write,
)
from schemas.events import ClientStatus, Incident, ServerControl  # noqa: E402
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

FULL = {"clients": 100, "rate": 2.0, "warmup_s": 5.0, "overload_s": 25.0, "settle_max_s": 40.0}
QUICK = {"clients": 21, "rate": 2.0, "warmup_s": 1.5, "overload_s": 4.0, "settle_max_s": 10.0}

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
    """What the benchmark saw of a scenario on the bus and in A's statistics."""

    statuses: dict[str, ClientStatus] = field(default_factory=dict)
    log: list[tuple[float, str, str, str]] = field(default_factory=list)
    onset: float | None = None
    recovered: float | None = None
    relapses: int = 0
    incidents: list[tuple[float, str, int]] = field(default_factory=list)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    sample_errors: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_status(self, event: ClientStatus) -> None:
        self.statuses[event.client] = event
        self.log.append((event.time, event.client, event.current, event.home))

    def all_home(self) -> bool:
        return bool(self.statuses) and all(s.current == s.home for s in self.statuses.values())

    def off_a_since(self) -> float | None:
        """From when until the recovery no client was on A (None if never so)."""
        assert self.recovered is not None
        since = None
        for at, everyone in self._states(until=self.recovered):
            if any(current == OVERLOADED for current, _ in everyone):
                since = None
            elif since is None:
                since = at
        return since

    def home_since(self) -> float | None:
        """From when until the end every client was home (None if not at the end)."""
        since = None
        for at, everyone in self._states(until=None):
            if any(current != home for current, home in everyone):
                since = None
            elif since is None:
                since = at
        return since

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

    def _states(self, until: float | None) -> list[tuple[float, list[tuple[str, str]]]]:
        where: dict[str, tuple[str, str]] = {}
        out = []
        for at, client, current, home in sorted(self.log):
            if until is not None and at > until:
                break
            where[client] = (current, home)
            if len(where) == len(self.statuses):
                out.append((at, list(where.values())))
        return out


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


def start_control(
    config: Config, path: Path, bus_url: str, with_control: bool, sink: LogFiles
) -> list[ServiceProcess]:
    """The reference servers, the control services if asked, and the agent, started and ready."""
    names = None if with_control else ("aaa", "agent")
    return start_services(registry.plan(config, names), path, bus_url, sink)


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
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    logs = LogFiles(workdir / "logs")
    processes: list[ServiceProcess] = []
    observed = Observed()
    try:
        config, path = build_config(workdir / "farm", nats.url, params["clients"])
        processes = await asyncio.to_thread(
            start_control, config, path, nats.url, with_control, logs
        )
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

            await bus.subscribe(
                bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
            )
            await bus.subscribe(bus.subjects.incident("*"), on_incident, types=(Incident,))
            if not await wait_until(
                observed, lambda: len(observed.statuses) == len(config.clients), READY_TIMEOUT_S
            ):
                raise RuntimeError(f"{name}: not every client reported its status")
            proxies = []
            for client in config.clients:
                assert client.proxy is not None
                proxies.append((client.proxy.ip, client.proxy.auth_port))
            load = Load(proxies, params["clients"] * params["rate"])
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
                            not with_control or any(s == "closed" for _, s, _ in observed.incidents)
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
    finally:
        statuses = await asyncio.to_thread(stop_services, processes) if processes else {}
        logs.close()
        nats.stop()
    unclean = {k: v for k, v in statuses.items() if v != 0}
    if unclean:
        print(f"{name}: services that did not stop cleanly: {unclean}", file=sys.stderr)
    return figures(name, observed, load.requests, started, ended)


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


def _fmt(value: Any) -> Any:
    return "-" if value is None else value


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, write ``incident.json``, print the table and the goals."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = arguments((__doc__ or "").splitlines()[0])
    params = dict(QUICK if args.quick else FULL)
    defaults = proxy_defaults()
    print(
        f"incident: {params['clients']} clients x {params['rate']:g}/s through their proxies, "
        f"A overloaded {params['overload_s']:g}s; NAS timeout {NAS_TIMEOUT_S:g}s x "
        f"{NAS_RETRIES + 1} tries"
    )
    print("client-side failover (ProxyConfig defaults): " + ", ".join(
        f"{k}={v}" for k, v in defaults.items()
    ))  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    for name in SCENARIOS:
        tmp = Path(tempfile.mkdtemp(prefix=f"aaa-bench-incident-{name}-"))
        try:
            runs[name] = asyncio.run(scenario(name, params, tmp))
        finally:
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
        },
        "samples": runs,
        "summary": {
            **{name: dict(run) for name, run in runs.items()},
            "lost_ratio": ratio,
        },
        "goals": goals,
    }
    path = write(args.out, NAME, results)
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
    print(table("", ("", "client-side", "aaa-failover"), rows))
    for goal in goals:
        state = "met" if goal["met"] else "NOT met"
        print(f"goal {goal['name']} ({goal['target']}): {state} ({goal['value']:.4g})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
