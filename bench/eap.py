"""EAP conversations on real FreeRADIUS through moves: the agent's proxy beside straight to
FreeRADIUS and a FreeRADIUS proxy with a fail-over pool, in one run.

H1 and H2 are FreeRADIUS 3.2.1 home servers with PEAP and TTLS (``tests/support/freeradius.py``,
``eap=True``; one CA), every Access-Request delayed ``ROUND_DELAY_S`` by the slow
backend, so that every round trip of a conversation takes a while. A stream of
PEAP-MSCHAPv2 conversations from ``eapol_test`` (``tests/support/eap.py``) keeps ``PARALLEL``
under way at once, each a new device, each about ten round trips bound by ``State``
to the server that began it. A conversation is ``ok`` when it ends in Access-Accept
with the keys matching on both sides, ``rejected`` when an Access-Reject ended it,
``lost`` when neither came before eapol_test gave up (``TIMEOUT_S``).

- **throughput**: conversations per second, the same stream straight to H1, through
  the agent's proxy (home H1), and through the FreeRADIUS pool (H1 then H2); each
  is reported as a ratio to straight.
- **moves**: through the agent, a notice moves the client to H2 and a readmission
  notice (as a readmission wave sends it) back to H1, every ``move_every_s``; the
  conversations failed per move, those in progress across each move, and what the
  acknowledgements said was left to drain. The FreeRADIUS pool has no move of its
  own to compare: it moves only when a home server fails, which is next.
- **stopped**: H1 is stopped (SIGSTOP) for ``stop_s`` and started again, through
  the agent (its own failover, and back home by itself) and through the pool;
  the conversations failed, those rejected (a supplicant may take a rejection for a
  wrong password), those in progress when H1 stopped (only H1 could carry them
  on), and those that failed although they began after it stopped.

It writes ``bench/results/eap.json`` and prints the tables and goals; it asserts
nothing about the figures.

Run: ``.venv/bin/python bench/eap.py [--quick] [--out DIR]`` (needs ``freeradius`` and
``eapol_test``; Debian: ``apt-get install freeradius eapoltest``).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import arguments, lacking, report, start_services, stop_services, table  # noqa: E402
from bench.freeradius_incident import farm_config, start_homes  # noqa: E402
from schemas.events import Ack  # noqa: E402
from services.launch import registry  # noqa: E402
from services.launch.demo import LogFiles  # noqa: E402
from services.runtime.bus import Bus, Keyring  # noqa: E402
from services.runtime.config import Config, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402
from tests.support.eap import EapResult, Supplicant, start, station_mac  # noqa: E402
from tests.support.freeradius import IP, FreeRadius, FreeRadiusProxy  # noqa: E402
from tests.support.notices import Notices  # noqa: E402

NAME = "eap"
PARALLEL = 16
ROUND_DELAY_S = 0.03
TIMEOUT_S = 10.0
"""eapol_test's limit on one conversation: a lost one ends this long after it began."""
CLIENT = "gw"
"""The proxying client of ``bench.freeradius_incident.farm_config``."""
NAS_SECRET = "bench-nas"

FULL = {
    "throughput_s": 20.0,
    "moves_s": 30.0,
    "move_every_s": 3.0,
    "warmup_s": 5.0,
    "stop_s": 10.0,
    "recovery_s": 15.0,
}
QUICK = {
    "throughput_s": 5.0,
    "moves_s": 8.0,
    "move_every_s": 2.0,
    "warmup_s": 2.0,
    "stop_s": 5.0,
    "recovery_s": 8.0,
}

Setup = Literal["straight", "agent", "freeradius-pool"]
SETUPS: tuple[Setup, ...] = ("straight", "agent", "freeradius-pool")
Outcome = Literal["ok", "rejected", "lost", "bad-keys"]


@dataclass(frozen=True)
class Conversation:
    """One conversation of the stream (monotonic times)."""

    started: float
    ended: float
    outcome: Outcome

    def across(self, at: float) -> bool:
        """It was under way at ``at``."""
        return self.started < at < self.ended


def outcome_of(result: EapResult) -> Outcome:
    if "Access-Reject" in result.replies:
        return "rejected"
    if result.success:
        return "ok" if result.keys_match else "bad-keys"
    return "lost"


@dataclass(frozen=True)
class Target:
    """Where the stream's NAS sends (``eapol_test -a -p -s``)."""

    address: tuple[str, int]
    secret: str


async def stream(
    target: Target, ca_file: Path, directory: Path, stop: asyncio.Event, parallel: int = PARALLEL
) -> list[Conversation]:
    """Conversations, ``parallel`` under way at once, each a new device, until ``stop``;
    those under way then run to their end."""
    records: list[Conversation] = []
    devices = itertools.count()

    async def worker(slot: int) -> None:
        while not stop.is_set():
            supplicant = Supplicant("PEAP", ca_cert=ca_file, mac=station_mac(next(devices)))
            started = time.monotonic()
            async with await start(
                target.address,
                target.secret,
                supplicant,
                directory,
                timeout_s=TIMEOUT_S,
                name=f"slot-{slot}",
            ) as running:
                result = await running.result()
            records.append(Conversation(started, time.monotonic(), outcome_of(result)))

    await asyncio.gather(*(worker(slot) for slot in range(parallel)))
    return records


# --- set-ups ---------------------------------------------------------------------------


@dataclass
class Agent:
    """The agent's proxy running on a bus, and a way to send its client notices."""

    config: Config
    target: Target
    notices: Notices
    acks: list[Ack]


@asynccontextmanager
async def running_agent(workdir: Path, h1: FreeRadius, h2: FreeRadius) -> AsyncIterator[Agent]:
    """nats-server and the agent of the client ``gw`` (home H1, alternate H2), each its
    own process, until the block ends."""
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    logs = LogFiles(workdir / "logs")
    processes = []
    try:
        path, port = farm_config(workdir, h1, h2, nats.url)
        processes = await asyncio.to_thread(
            start_services, registry.plan(load_config(path), ["agent"]), path, nats.url, logs
        )
        config = load_config(path)
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench", stack=stack, url=nats.url
            )
            acks: list[Ack] = []

            async def on_ack(ack: Ack) -> None:
                acks.append(ack)

            await bus.subscribe(bus.subjects.ack("*"), on_ack, types=(Ack,), accept_clients=True)
            yield Agent(config, Target((IP, port), NAS_SECRET), Notices(config, bus), acks)
    finally:
        if processes:
            exits = await asyncio.to_thread(stop_services, processes)
            if any(exits.values()):
                print(f"{NAME}: the agent did not stop cleanly: {exits}", file=sys.stderr)
        logs.close()
        nats.stop()


@asynccontextmanager
async def running_pool(workdir: Path, h1: FreeRadius, h2: FreeRadius) -> AsyncIterator[Target]:
    """A FreeRADIUS proxy with the fail-over pool H1 then H2, until the block ends."""
    proxy = FreeRadiusProxy(workdir / "proxy", homes=[h1, h2])
    proxy.write()
    proxy.start()
    try:
        await proxy.wait_ready()
        yield Target((IP, proxy.auth_port), proxy.nas_secret)
    finally:
        proxy.stop()


@asynccontextmanager
async def homes(workdir: Path) -> AsyncIterator[tuple[FreeRadius, FreeRadius]]:
    """H1 and H2 with EAP, every round trip slowed by ``ROUND_DELAY_S``."""
    h1, h2 = await start_homes(workdir, eap=True)
    try:
        for home in (h1, h2):
            home.slow_backend(1.0, ROUND_DELAY_S)
        yield h1, h2
    finally:
        h1.stop()
        h2.stop()


@asynccontextmanager
async def target_of(
    setup: Setup, workdir: Path, h1: FreeRadius, h2: FreeRadius
) -> AsyncIterator[Target]:
    if setup == "straight":
        yield Target(h1.auth_address, h1.client_secret)
    elif setup == "agent":
        async with running_agent(workdir, h1, h2) as agent:
            yield agent.target
    else:
        async with running_pool(workdir, h1, h2) as target:
            yield target


# --- scenarios -------------------------------------------------------------------------


async def timed_stream(
    target: Target, ca_file: Path, directory: Path, duration_s: float
) -> list[Conversation]:
    stop = asyncio.Event()
    load = asyncio.create_task(stream(target, ca_file, directory, stop))
    await asyncio.sleep(duration_s)
    stop.set()
    return await load


async def run_throughput(setup: Setup, params: dict[str, float], workdir: Path) -> dict[str, Any]:
    async with homes(workdir) as (h1, h2), target_of(setup, workdir, h1, h2) as target:
        records = await timed_stream(target, h1.ca_file, workdir / "eap", params["throughput_s"])
    return throughput_figures(records)


async def run_moves(params: dict[str, float], workdir: Path) -> dict[str, Any]:
    async with homes(workdir) as (h1, h2), running_agent(workdir, h1, h2) as agent:
        stop = asyncio.Event()
        load = asyncio.create_task(stream(agent.target, h1.ca_file, workdir / "eap", stop))
        moves: list[float] = []
        began = time.monotonic()
        while time.monotonic() - began + params["move_every_s"] < params["moves_s"]:
            await asyncio.sleep(params["move_every_s"])
            if len(moves) % 2 == 0:
                await agent.notices.failover(CLIENT, "H1", to="H2")
            else:
                await agent.notices.readmit(CLIENT, "H1")
            moves.append(time.monotonic())
        await asyncio.sleep(params["move_every_s"])
        stop.set()
        records = await load
        await asyncio.sleep(0.5)  # the last acks
        draining = [a.draining for a in agent.acks if a.accepted]
    return move_figures(records, moves, draining)


async def run_stopped(setup: Setup, params: dict[str, float], workdir: Path) -> dict[str, Any]:
    async with homes(workdir) as (h1, h2), target_of(setup, workdir, h1, h2) as target:
        stop = asyncio.Event()
        load = asyncio.create_task(stream(target, h1.ca_file, workdir / "eap", stop))
        await asyncio.sleep(params["warmup_s"])
        h1.pause()
        stopped = time.monotonic()
        try:
            await asyncio.sleep(params["stop_s"])
        finally:
            h1.resume()
        await asyncio.sleep(params["recovery_s"])
        stop.set()
        records = await load
    return stop_figures(records, stopped)


# --- figures (pure) --------------------------------------------------------------------


def counts(records: Sequence[Conversation]) -> dict[str, int]:
    outcomes: tuple[Outcome, ...] = ("ok", "rejected", "lost", "bad-keys")
    out = {o: sum(r.outcome == o for r in records) for o in outcomes}
    return {"conversations": len(records), **out, "failed": len(records) - out["ok"]}


def throughput_figures(records: Sequence[Conversation]) -> dict[str, Any]:
    """Successful conversations per second, over the span from the first start to the
    last end."""
    span = max(r.ended for r in records) - min(r.started for r in records) if records else 0.0
    ok = sum(r.outcome == "ok" for r in records)
    return {**counts(records), "span_s": span, "per_s": ok / span if span > 0 else 0.0}


def move_figures(
    records: Sequence[Conversation], moves: Sequence[float], draining: Sequence[int]
) -> dict[str, Any]:
    out = counts(records)
    across = sum(any(r.across(m) for m in moves) for r in records)
    return {
        **out,
        "moves": len(moves),
        "failed_per_move": out["failed"] / len(moves) if moves else None,
        "across_a_move": across,
        "draining_acked": sum(draining),
    }


def stop_figures(records: Sequence[Conversation], stopped: float) -> dict[str, Any]:
    out = counts(records)
    held = [r for r in records if r.across(stopped)]
    after = [r for r in records if r.started >= stopped]
    return {
        **out,
        "under_way_at_stop": len(held),
        "failed_under_way": sum(r.outcome != "ok" for r in held),
        "failed_begun_after": sum(r.outcome != "ok" for r in after),
    }


def goals(
    throughput: dict[str, dict[str, Any]],
    moves: dict[str, Any],
    stopped: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Through the agent: at least 0.8x straight's conversations per second, no
    conversation failed by a move, none rejected when a home server stops and none
    failed that began after it stopped; and fewer failed than the FreeRADIUS pool."""
    straight = throughput["straight"]["per_s"]
    ratio = throughput["agent"]["per_s"] / straight if straight else 0.0
    agent, pool = stopped["agent"], stopped["freeradius-pool"]
    return [
        {
            "name": "EAP conversations per second, agent / straight",
            "target": ">= 0.8",
            "value": ratio,
            "met": ratio >= 0.8,
        },
        {
            "name": "conversations failed per move by notice or readmission",
            "target": "0",
            "value": moves["failed"],
            "met": moves["failed"] == 0 and moves["moves"] > 0,
        },
        {
            "name": "home server stopped: agent conversations rejected or failed though "
            "begun after",
            "target": "0",
            "value": agent["rejected"] + agent["failed_begun_after"],
            "met": agent["rejected"] + agent["failed_begun_after"] == 0,
        },
        {
            "name": "home server stopped: failed conversations, agent / freeradius-pool",
            "target": "< 1",
            "value": agent["failed"] / pool["failed"] if pool["failed"] else float("inf"),
            "met": agent["failed"] < pool["failed"],
        },
    ]


def _fmt(value: Any) -> Any:
    if value is None:
        return "-"
    return round(value, 2) if isinstance(value, float) else value


def _rows(results: dict[str, dict[str, Any]], keys: Sequence[tuple[str, str]]) -> list[Any]:
    return [(label, *(_fmt(r.get(key)) for r in results.values())) for label, key in keys]


def main(argv: list[str] | None = None) -> int:
    args = arguments((__doc__ or "").splitlines()[0], argv)
    if lacking(NAME, {"freeradius": "freeradius", "eapol_test": "eapoltest"}):
        return 0
    params = dict(QUICK if args.quick else FULL)
    print(
        f"{NAME}: PEAP-MSCHAPv2 from eapol_test, {PARALLEL} at once, "
        f"{ROUND_DELAY_S * 1000:g} ms per round trip at the home server"
    )

    def fresh(label: str, run: Any) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix=f"aaa-bench-eap-{label}-"))
        try:
            return dict(asyncio.run(run(workdir)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    throughput = {s: fresh(s, lambda w, s=s: run_throughput(s, params, w)) for s in SETUPS}
    for figures in throughput.values():
        base = throughput["straight"]["per_s"]
        figures["ratio"] = figures["per_s"] / base if base else None
    keys = (("conversations", "conversations"), ("ok", "ok"), ("failed", "failed"),
            ("per second", "per_s"), ("ratio to straight", "ratio"))  # fmt: skip
    print(table("\nthroughput", ("", *throughput), _rows(throughput, keys)), flush=True)

    moves = fresh("moves", lambda w: run_moves(params, w))
    keys = (("conversations", "conversations"), ("moves", "moves"),
            ("under way across a move", "across_a_move"),
            ("left to drain, as acked", "draining_acked"), ("failed", "failed"),
            ("failed per move", "failed_per_move"))  # fmt: skip
    print(table("\nmoves by notice and readmission", ("", "agent"), _rows({"agent": moves}, keys)))

    stopped = {
        s: fresh(f"stop-{s}", lambda w, s=s: run_stopped(s, params, w))
        for s in ("agent", "freeradius-pool")
    }
    keys = (("conversations", "conversations"), ("under way when H1 stopped", "under_way_at_stop"),
            ("failed", "failed"), ("  rejected", "rejected"), ("  lost", "lost"),
            ("failed, under way at the stop", "failed_under_way"),
            ("failed, begun after the stop", "failed_begun_after"))  # fmt: skip
    print(table("\nH1 stopped", ("", *stopped), _rows(stopped, keys)), flush=True)

    runs = {"throughput": throughput, "moves": moves, "stopped": stopped}
    parameters = {
        **params,
        "quick": args.quick,
        "parallel": PARALLEL,
        "round_delay_s": ROUND_DELAY_S,
        "eapol_timeout_s": TIMEOUT_S,
    }
    report(args.out, NAME, parameters, runs, goals(throughput, moves, stopped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
