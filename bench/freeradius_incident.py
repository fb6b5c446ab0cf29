"""One incident on real FreeRADIUS, the same NAS load through three set-ups, in one run.

H1 and H2 are FreeRADIUS 3.2.1 home servers (``tests/support/freeradius.py``: an
rlm_perl backend that delays a share of the requests, a thread pool of 256
that grows instead of queueing, Status-Server answered at once whatever the
backend does). A NAS (``bench/nas.py``) sends 100 Access-Requests a second,
with a 3 s timeout and 2 retransmissions, through:

- **freeradius-pool**: a FreeRADIUS proxy with a fail-over ``home_server_pool``
  of H1 then H2, tuned as close to the agent as FreeRADIUS allows (the usual
  practice);
- **agent**: the aaa-failover agent's proxy alone, failing over by itself
  (response window 2 s, Status-Server checks every 1 s, 3 answers to alive);
- **aaa-failover**: the same agent with the whole loop (collector with latency
  probes, evaluator, targeter, notifier, readmitter) at the product's
  defaults.

Scenarios, each ``incident_s`` long after a warm-up: H1 stopped (SIGSTOP);
H1's backend 4 s slower on every request; on half of them. For each set-up
and scenario it records, from the NAS: requests lost, rejected, answered
only after the NAS timeout (on a retransmission), and those that paid a
response window (answered 1.8 s or more after they were sent, or lost); from
the set-up: the time from onset to the first move off H1 (the FreeRADIUS
proxy's view of H1 leaves "alive"; the agent's upstream in use leaves H1),
the moves off H1 (flaps), the time back on H1 after the recovery, and for
aaa-failover the time to the incident. It writes
``bench/results/freeradius_incident.json`` and prints a table per scenario
and the goals; it asserts nothing about the timings.

Run: ``.venv/bin/python bench/freeradius_incident.py [--quick] [--out DIR]``
(needs ``freeradius``; Debian: ``apt-get install freeradius freeradius-utils``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    arguments,
    lacking,
    report,
    start_services,
    stop_services,
    table,
)
from bench.nas import Nas, Request, Target  # noqa: E402
from schemas.events import ClientStatus, Incident  # noqa: E402
from services.launch import registry  # noqa: E402
from services.launch.demo import LogFiles  # noqa: E402
from services.launch.farm import STREAM_MAX_BYTES, free_udp_port, write_config  # noqa: E402
from services.launch.supervisor import ServiceProcess  # noqa: E402
from services.radius.client import RadiusTimeout  # noqa: E402
from services.runtime.bus import Bus, Keyring  # noqa: E402
from services.runtime.config import ProxyConfig, Secret, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402
from tests.support.freeradius import (  # noqa: E402
    IP,
    PASSWORD,
    USER,
    CertificateAuthority,
    FreeRadius,
    FreeRadiusProxy,
)

logger = logging.getLogger(__name__)

NAME = "freeradius_incident"
RATE = 100.0
NAS_TIMEOUT_S = 3.0
NAS_RETRIES = 2
MAX_SERVERS = 256
START_SERVERS = 4
PAID_S = 0.9 * ProxyConfig(nas_secret=Secret(env="-")).response_window_s
"""A request answered this long after it was sent, or lost, paid a response window."""
POLL_S = 0.1

FULL = {"warmup_s": 5.0, "incident_s": 30.0, "recovery_s": 20.0}
QUICK = {"warmup_s": 3.0, "incident_s": 10.0, "recovery_s": 12.0}

SETUPS = ("freeradius-pool", "agent", "aaa-failover")
SCENARIOS: dict[str, tuple[float, float] | None] = {
    "stopped": None,
    "slow-100%": (1.0, 4.0),
    "slow-50%": (0.5, 4.0),
}
"""Each scenario: None for SIGSTOP, else (share of requests delayed, delay in seconds)."""


@dataclass
class Seen:
    """Where the set-up sends new requests over time, and the incident (monotonic times)."""

    where: list[tuple[float, str]] = field(default_factory=list)
    incident_opened: float | None = None

    def at(self, when: float, server: str) -> None:
        if not self.where or self.where[-1][1] != server:
            self.where.append((when, server))


async def start_homes(workdir: Path, *, eap: bool = False) -> tuple[FreeRadius, FreeRadius]:
    """H1 and H2 with the slow backend, a large pool and one client secret, started;
    with ``eap``, PEAP and TTLS too, their certificates from one CA (``workdir/ca``).
    They sign every Access-Accept and Access-Reject, as FreeRADIUS 3.2.5 does: the agent's
    proxy takes no reply to an Access-Request without Message-Authenticator."""
    shared = secrets.token_hex(12)
    ca = CertificateAuthority.create(workdir / "ca") if eap else None
    homes = []
    for name in ("h1", "h2"):
        home = FreeRadius(
            workdir / name,
            backend=True,
            max_servers=MAX_SERVERS,
            start_servers=START_SERVERS,
            client_secret=shared,
            eap=eap,
            eap_ca=ca,
            sign_replies=True,
        )
        home.write()
        home.start()
        homes.append(home)
    for home in homes:
        await home.wait_ready()
    return homes[0], homes[1]


def farm_config(workdir: Path, h1: FreeRadius, h2: FreeRadius, bus_url: str) -> tuple[Path, int]:
    """The config of the agent's set-ups: H1 and H2 probed, one proxying client; its path
    and the proxy's port."""
    directory = workdir / "farm"
    (directory / "secrets").mkdir(parents=True)

    def secret(name: str, value: str) -> dict[str, str]:
        path = directory / "secrets" / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return {"file": f"secrets/{name}"}

    client_secret = secret("client", h1.client_secret)
    probe = {
        "secret": client_secret,
        "users": [{"name": USER, "password": secret("probe-password", PASSWORD)}],
    }
    port = free_udp_port(IP)
    data: dict[str, Any] = {
        "bus": {
            "url": bus_url,
            "prefix": "bench",
            "key": {"id": "k1", "secret": secret("bus.key", secrets.token_hex(16))},
            "stream_max_bytes": STREAM_MAX_BYTES,
        },
        "servers": [h1.entry("H1", probe=probe), h2.entry("H2", probe=probe)],
        "clients": [
            {
                "id": "gw",
                "ip": IP,
                "secret": client_secret,
                "home": "H1",
                "alternates": ["H2"],
                "proxy": {"ip": IP, "auth_port": port, "nas_secret": secret("nas", "bench-nas")},
            }
        ],
    }
    return write_config(directory, data), port


async def watch_pool(
    proxy: FreeRadiusProxy, h1: FreeRadius, seen: Seen, stop: asyncio.Event
) -> None:
    """The FreeRADIUS proxy's view of H1, every ``POLL_S``: H1 while alive, else H2."""
    while not stop.is_set():
        with contextlib.suppress(RadiusTimeout, OSError):
            values = await proxy.home_server_stats(h1, timeout_s=POLL_S)
            state = values.get("state")
            seen.at(time.monotonic(), "H1" if state in (None, "alive", "unknown") else "H2")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


async def watch_bus(config_path: Path, bus_url: str, seen: Seen, stack: AsyncExitStack) -> None:
    """The agent's upstream in use from its statuses, and the incident, from the bus."""
    config = load_config(config_path)
    bus = await Bus.connect(
        config.bus, Keyring.from_config(config), name="bench", stack=stack, url=bus_url
    )

    async def on_status(event: ClientStatus) -> None:
        seen.at(time.monotonic(), event.current)

    async def on_incident(event: Incident) -> None:
        if event.server == "H1" and event.state == "opened" and seen.incident_opened is None:
            seen.incident_opened = time.monotonic()

    await bus.subscribe(
        bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
    )
    await bus.subscribe(bus.subjects.incident("*"), on_incident, types=(Incident,))


def inject(h1: FreeRadius, scenario: tuple[float, float] | None) -> Callable[[], None]:
    """Start the scenario's trouble on H1; the function that ends it."""
    if scenario is None:
        h1.pause()
        return h1.resume
    share, delay = scenario
    h1.slow_backend(share, delay)
    return lambda: h1.slow_backend(0.0)


async def run_one(
    setup: str, scenario: tuple[float, float] | None, params: dict[str, float], workdir: Path
) -> dict[str, Any]:
    """One set-up through one scenario, on fresh servers and a fresh bus; its figures."""
    h1, h2 = await start_homes(workdir)
    seen = Seen()
    processes: list[ServiceProcess] = []
    nats: EmbeddedNats | None = None
    logs = LogFiles(workdir / "logs")
    stop_watch = asyncio.Event()
    try:
        async with AsyncExitStack() as stack:
            watchers: list[Awaitable[None]] = []
            if setup == "freeradius-pool":
                proxy = FreeRadiusProxy(workdir / "proxy", homes=[h1, h2])
                proxy.write()
                proxy.start()
                stack.callback(proxy.stop)
                await proxy.wait_ready()
                target = Target(IP, proxy.auth_port, proxy.nas_secret.encode())
                watchers.append(watch_pool(proxy, h1, seen, stop_watch))
            else:
                nats = EmbeddedNats(workdir / "nats")
                nats.start()
                path, port = farm_config(workdir, h1, h2, nats.url)
                # the agent alone, or every service (no reference servers: H1 and H2 are real)
                names = ["agent"] if setup == "agent" else None
                plan = registry.plan(load_config(path), names)
                processes = await asyncio.to_thread(start_services, plan, path, nats.url, logs)
                await watch_bus(path, nats.url, seen, stack)
                target = Target(IP, port, b"bench-nas")
            tasks = [asyncio.create_task(w) for w in watchers]
            async with Nas(timeout_s=NAS_TIMEOUT_S, retries=NAS_RETRIES) as nas:
                total = params["warmup_s"] + params["incident_s"] + params["recovery_s"]
                load = asyncio.create_task(nas.run(target, rate=RATE, duration_s=total))
                start = time.monotonic()
                await asyncio.sleep(params["warmup_s"])
                onset = time.monotonic()
                end = inject(h1, scenario)
                try:
                    await asyncio.sleep(params["incident_s"])
                finally:
                    end()
                recovered = time.monotonic()
                records = await load
            stop_watch.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if processes:
            unclean = {
                k: v for k, v in (await asyncio.to_thread(stop_services, processes)).items() if v
            }
            if unclean:
                print(f"{setup}: services that did not stop cleanly: {unclean}", file=sys.stderr)
        logs.close()
        if nats is not None:
            nats.stop()
        h1.stop()
        h2.stop()
    return figures(records, seen, start, onset, recovered)


def figures(
    records: list[Request], seen: Seen, start: float, onset: float, recovered: float
) -> dict[str, Any]:
    """A run's figures from the NAS's records and the set-up's moves (pure)."""
    paid = [r for r in records if r.latency_s is None or r.latency_s >= PAID_S]
    moves_off = [t for (t, where) in seen.where if where != "H1" and t >= onset]
    flaps = sum(
        1
        for (_, before), (t, after) in zip(seen.where, seen.where[1:], strict=False)
        if before == "H1" and after != "H1" and t >= onset
    )
    back = None
    if seen.where and seen.where[-1][1] == "H1" and seen.where[-1][0] >= recovered:
        back = seen.where[-1][0] - recovered
    return {
        "sent": len(records),
        "lost": sum(r.outcome == "lost" for r in records),
        "rejected": sum(r.outcome == "rejected" for r in records),
        "answered_late": sum(r.late for r in records if r.outcome != "lost"),
        "paid_window": len(paid),
        "first_move_s": moves_off[0] - onset if moves_off else None,
        "flaps": flaps,
        "back_home_s": back,
        "incident_s": (
            seen.incident_opened - onset
            if seen.incident_opened is not None and seen.incident_opened >= onset
            else None
        ),
        "span_s": recovered - start,
    }


def goals(runs: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per scenario: the whole loop loses and answers late nothing, opens within 1.5 s, and
    fewer than a tenth of the agent-only set-up's requests pay a response window."""
    out = []
    for scenario, by_setup in runs.items():
        c, b = by_setup["aaa-failover"], by_setup["agent"]
        opened = c["incident_s"]
        out += [
            {
                "name": f"{scenario}: aaa-failover loses nothing, answers nothing late",
                "target": "lost + late == 0",
                "value": c["lost"] + c["answered_late"],
                "met": c["lost"] + c["answered_late"] == 0,
            },
            {
                "name": f"{scenario}: aaa-failover opens the incident within 1.5 s of onset",
                "target": "<= 1.5 s",
                "value": opened if opened is not None else float("inf"),
                "met": opened is not None and opened <= 1.5,
            },
            {
                "name": f"{scenario}: requests paying a response window, aaa-failover / agent",
                "target": "< 0.1",
                "value": c["paid_window"] / b["paid_window"] if b["paid_window"] else 0.0,
                "met": c["paid_window"] * 10 < b["paid_window"],
            },
        ]
    return out


def _fmt(value: Any) -> Any:
    if value is None:
        return "-"
    return round(value, 2) if isinstance(value, float) else value


ROWS = (
    ("lost", "lost"),
    ("rejected", "rejected"),
    ("answered after the NAS timeout", "answered_late"),
    ("paid a response window", "paid_window"),
    ("onset to first move off H1 (s)", "first_move_s"),
    ("moves off H1 (flaps)", "flaps"),
    ("back on H1 after recovery (s)", "back_home_s"),
    ("onset to incident (s)", "incident_s"),
)


def main(argv: list[str] | None = None) -> int:
    """Run every set-up through every scenario; write the results, print the tables."""
    args = arguments((__doc__ or "").splitlines()[0], argv)
    if lacking(NAME, {"freeradius": "freeradius"}):
        return 0
    params = dict(QUICK if args.quick else FULL)
    print(
        f"{NAME}: NAS {RATE:g}/s, timeout {NAS_TIMEOUT_S:g}s x {NAS_RETRIES + 1} tries; "
        f"incident {params['incident_s']:g}s after {params['warmup_s']:g}s, "
        f"{params['recovery_s']:g}s after"
    )
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario_name, scenario in SCENARIOS.items():
        runs[scenario_name] = {}
        for setup in SETUPS:
            workdir = Path(tempfile.mkdtemp(prefix=f"aaa-bench-fr-{setup}-"))
            try:
                runs[scenario_name][setup] = asyncio.run(run_one(setup, scenario, params, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        rows = [
            (label, *(_fmt(runs[scenario_name][s][key]) for s in SETUPS)) for label, key in ROWS
        ]
        print(table(f"\n{scenario_name}", ("", *SETUPS), rows), flush=True)
    parameters = {
        **params,
        "quick": args.quick,
        "rate": RATE,
        "nas_timeout_s": NAS_TIMEOUT_S,
        "nas_retries": NAS_RETRIES,
        "max_servers": MAX_SERVERS,
        "paid_window_s": PAID_S,
        "scenarios": dict(SCENARIOS),
    }
    report(args.out, NAME, parameters, runs, goals(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
