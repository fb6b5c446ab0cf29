"""Benchmark of notice fan-out beside its floor: the same number of raw messages over NATS.

Starts an embedded nats-server and the real notifier (``python -m
services.launch.cli run notifier``, its own process) on a farm of up to 10,000
clients (``--quick``: 1,000), each with its own shared secret. For each size
N it times, interleaved in one run:

- **notices**: from publishing one FailoverPlan that moves N clients (in the
  parts the targeter would send) until every one of the N clients has a
  notice verified exactly as the agent verifies it
  (:func:`services.agent.receive.verify_notice` under the client's secret);
- **raw**: from asking a plain nats-py publisher (its own process) for N raw
  messages of the same size, one on each of N subjects, until all N have
  been received.

The N receivers run in this process on one connection (one wildcard
subscription dispatching to each client's check): N agent services would
need N processes. After each notices round the receivers ack every notice as
the agent would and wait for the notifier's ``acked`` deliveries, outside the
timed window, so no notice is left in flight for the next round. Writes
``fanout.json`` to ``bench/results/`` or ``--out DIR`` and prints a table. It
measures; it asserts nothing about the timings.

Run: ``.venv/bin/python bench/fanout.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import tomli_w  # noqa: E402
from nats.aio.client import Client as NatsClient  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from bench.common import (  # noqa: E402
    arguments,
    cpu_of,
    cpu_since,
    goal_line,
    process,
    summary,
    table,
    write,
)
from schemas import codec  # noqa: E402
from schemas.events import Ack, Delivery, FailoverPlan, Move  # noqa: E402
from schemas.signing import AUTH_HEADER, SERVER_HEADER, Rejected, client_key_id  # noqa: E402
from services.agent.receive import verify_notice  # noqa: E402
from services.launch.farm import farm_dict  # noqa: E402
from services.runtime.bus import Bus, Keyring, Signer  # noqa: E402
from services.runtime.config import Config, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402
from services.targeter.planning import split_plan  # noqa: E402

logger = logging.getLogger(__name__)

FULL: dict[str, Any] = {"sizes": [100, 1_000, 10_000], "repeats": 5}
QUICK: dict[str, Any] = {"sizes": [100, 1_000], "repeats": 3}
PREFIX = "fanout"
RAW_PREFIX = "fanoutraw"
"""The raw messages' subjects: outside the prefix, so no JetStream stream captures them."""
SERVERS = ("A", "B", "C")
RAW_BYTES = 512
"""Size of each raw message: about a notice with its headers."""
ACK_TIMEOUT_S = 300.0
"""The notifier's ack timeout: longer than any round, so no notice is re-sent while timed."""
ROUND_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 30.0
STORED_BYTES = 1_000
"""Size of each value of the KV context measurement: about a notice in flight."""
GOAL_RATIO = 2.0
GOAL_SECONDS = 0.5
GOAL_SIZE = 10_000


def client_id(index: int) -> str:
    """The id of the client with this index."""
    return f"nas-{index:05d}"


def client_ip(index: int) -> str:
    """A distinct address per client (never bound: notices go over the bus)."""
    return f"127.{1 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}"


def write_config(directory: Path, clients: int, bus_url: str) -> Path:
    """Write a farm of three servers and ``clients`` clients on ``A``; its config path.

    The servers and bus key come from :func:`services.launch.farm.farm_dict`; the
    clients and their secret files are written here directly, which is much
    faster than a TOML library for 10,000 of them.
    """
    data = farm_dict(directory, bus_url=bus_url, prefix=PREFIX, servers=SERVERS, clients=0)
    del data["clients"]
    data["notifier"] = {"ack_timeout_s": ACK_TIMEOUT_S, "retries": 0}
    secret_dir = directory / "secrets"
    parts = [tomli_w.dumps(data)]
    for i in range(clients):
        cid = client_id(i)
        (secret_dir / f"client-{cid}").write_text(secrets.token_hex(16) + "\n")
        parts.append(
            f'\n[[clients]]\nid = "{cid}"\nip = "{client_ip(i)}"\n'
            f'secret = {{ file = "secrets/client-{cid}" }}\n'
            f'home = "A"\nalternates = ["B", "C"]\n'
        )
    path = directory / "config.toml"
    path.write_text("".join(parts))
    return path


class Receivers:
    """The clients' side: every client's notice check, and the raw messages' count.

    One round at a time: :meth:`expect` names the round and how many clients
    must hear of it; ``done`` is set, and ``end`` holds the time, when the
    last of them has.
    """

    def __init__(self, config: Config) -> None:
        self.clients = {c.id: c for c in config.clients}
        self.secrets = {c.id: config.read_secret(c.secret) for c in config.clients}
        self.servers = {s.id: s for s in config.servers}
        self.rejected: Counter[str] = Counter()
        self.stray = 0
        self.duplicates = 0
        self.round = ""
        self.round_bytes = b""
        self.expected = 0
        self.verified: dict[str, tuple[str, str]] = {}
        self.raw = 0
        self.end = 0.0
        self.done = asyncio.Event()

    def expect(self, round_id: str, count: int) -> None:
        self.round = round_id
        self.round_bytes = round_id.encode() + b" "
        self.expected = count
        self.verified = {}
        self.raw = 0
        self.end = 0.0
        self.done = asyncio.Event()

    def _finish(self) -> None:
        self.end = time.perf_counter()
        self.done.set()

    async def on_notice(self, msg: Msg) -> None:
        """Check a notice as the agent of the client it is addressed to would."""
        cid = msg.subject.rpartition(".")[2]
        client = self.clients.get(cid)
        if client is None:
            self.rejected["unknown-client"] += 1
            return
        headers = msg.headers or {}
        try:
            notice = verify_notice(
                client,
                self.secrets[cid],
                self.servers,
                headers.get(SERVER_HEADER, ""),
                msg.data,
                headers.get(AUTH_HEADER),
                headers.get(codec.CONTENT_TYPE),
            )
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            return
        if notice.incident_id != self.round:
            self.stray += 1
            return
        if cid in self.verified:
            self.duplicates += 1
            return
        self.verified[cid] = (notice.id, notice.server)
        if len(self.verified) == self.expected:
            self._finish()

    async def on_raw(self, msg: Msg) -> None:
        """Count a raw message of the current round."""
        if not msg.data.startswith(self.round_bytes):
            self.stray += 1
            return
        self.raw += 1
        if self.raw == self.expected:
            self._finish()


def serve_raw(url: str) -> None:
    """The baseline's publisher (run in its own process): N raw messages per request."""

    async def main() -> None:
        nc = await nats.connect(url, name="bench-raw-publisher")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        async def on_go(msg: Msg) -> None:
            round_id, count = msg.data.decode().split()
            payload = (round_id + " ").encode().ljust(RAW_BYTES, b"x")
            for i in range(int(count)):
                await nc.publish(f"{RAW_PREFIX}.{client_id(i)}", payload)
            await nc.flush()

        async def on_ping(msg: Msg) -> None:
            await msg.respond(b"pong")

        await nc.subscribe(f"{RAW_PREFIX}-control.go", cb=on_go)
        await nc.subscribe(f"{RAW_PREFIX}-control.ping", cb=on_ping)
        await nc.flush()
        await stop.wait()
        await nc.drain()

    asyncio.run(main())


class Fanout:
    """The running parts of the measurement: bus, notifier, raw publisher, receivers."""

    def __init__(self, config: Config, bus: Bus, listener: NatsClient, receivers: Receivers):
        self.config = config
        self.bus = bus
        self.listener = listener
        self.receivers = receivers
        self.rounds = 0
        self.pids: dict[str, int] = {}
        """The processes whose CPU each round reads (:attr:`cpu`), by name."""
        self.cpu: dict[str, float] = {}
        """CPU seconds each of :attr:`pids` used in the last round, up to its last message."""

    def _round_id(self, kind: str) -> str:
        self.rounds += 1
        return f"{kind}-{self.rounds:05d}"

    async def notices(self, count: int) -> float:
        """Seconds from publishing a plan that moves ``count`` clients to the last verified."""
        round_id = self._round_id("plan")
        plan = FailoverPlan(
            incident_id=round_id,
            server="A",
            moves=[
                Move(client=client_id(i), alternates=["B", "C"], why="bench", load=1.0)
                for i in range(count)
            ],
            reason="fan-out benchmark",
            cap=count,
            moved_load=float(count),
        )
        receivers = self.receivers
        receivers.expect(round_id, count)
        before = cpu_of(self.pids)
        start = time.perf_counter()
        for part in split_plan(plan):
            await self.bus.publish(self.bus.subjects.plan("A"), part)
        await asyncio.wait_for(receivers.done.wait(), ROUND_TIMEOUT_S)
        self.cpu = cpu_since(before, self.pids)
        elapsed = receivers.end - start
        await self.settle(dict(receivers.verified))
        return elapsed

    async def settle(self, verified: dict[str, tuple[str, str]]) -> None:
        """Ack every verified notice as its agent would; wait until the notifier settled all."""
        waiting = {notice_id for notice_id, _ in verified.values()}
        settled = asyncio.Event()

        async def on_delivery(delivery: Delivery) -> None:
            if delivery.outcome == "acked" and delivery.notice_id in waiting:
                waiting.discard(delivery.notice_id)
                if not waiting:
                    settled.set()

        bus = self.bus
        sub = await bus.subscribe(bus.subjects.delivery("*"), on_delivery, types=(Delivery,))
        await bus.nc.flush()
        try:
            for cid, (notice_id, server) in verified.items():
                ack = Ack(notice_id=notice_id, client=cid, server=server, accepted=True, now_on="B")
                signer = Signer(client_key_id(cid), self.receivers.secrets[cid])
                await bus.publish(bus.subjects.ack(cid), ack, signer=signer)
            if waiting:
                await asyncio.wait_for(settled.wait(), ROUND_TIMEOUT_S)
        finally:
            await sub.unsubscribe()

    async def raw(self, count: int) -> float:
        """Seconds from asking for ``count`` raw messages to the last received."""
        round_id = self._round_id("raw")
        receivers = self.receivers
        receivers.expect(round_id, count)
        before = cpu_of(self.pids)
        start = time.perf_counter()
        await self.listener.publish(f"{RAW_PREFIX}-control.go", f"{round_id} {count}".encode())
        await asyncio.wait_for(receivers.done.wait(), ROUND_TIMEOUT_S)
        self.cpu = cpu_since(before, self.pids)
        return receivers.end - start

    async def store(self, count: int) -> float:
        """Seconds ``count`` sequential KV puts take: the notifier keeps each notice so."""
        kv = await self.bus.kv("fanoutbench")
        value = b"v" * STORED_BYTES
        start = time.perf_counter()
        for i in range(count):
            await kv.put(client_id(i), value)
        return time.perf_counter() - start

    async def wait_ready(self, notifier: subprocess.Popen[bytes]) -> None:
        """Wait until the raw publisher answers and the notifier turns a plan into a notice."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                await self.listener.request(f"{RAW_PREFIX}-control.ping", b"", timeout=0.5)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() > deadline:
                    raise RuntimeError("the raw publisher did not answer") from None
                await asyncio.sleep(0.05)
        while True:
            if notifier.poll() is not None:
                raise RuntimeError(f"the notifier exited with status {notifier.returncode}")
            round_id = self._round_id("ready")
            self.receivers.expect(round_id, 1)
            plan = FailoverPlan(
                incident_id=round_id,
                server="A",
                moves=[Move(client=client_id(0), alternates=["B"])],
            )
            await self.bus.publish(self.bus.subjects.plan("A"), plan)
            try:
                await asyncio.wait_for(self.receivers.done.wait(), 0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the notifier did not send a notice") from None
                continue
            await self.settle(dict(self.receivers.verified))
            return


async def measure(sizes: list[int], repeats: int, workdir: Path) -> dict[str, dict[int, list[Any]]]:
    """Seconds of every notices and raw round, by size; interleaved, after a warm-up of each.

    Starts and stops everything it needs: the nats-server, the notifier and
    the raw publisher.
    """
    nats_server = EmbeddedNats(workdir / "nats")
    nats_server.start()
    try:
        path = write_config(workdir / "farm", max(sizes), nats_server.url)
        config = load_config(path)
        notifier_argv = [sys.executable, "-m", "services.launch.cli", "--log-level", "WARNING"]
        notifier_argv += ["run", "notifier", "-c", str(path)]
        raw_argv = [
            sys.executable,
            "-c",
            f"from bench.fanout import serve_raw; serve_raw({nats_server.url!r})",
        ]
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench-fanout", stack=stack
            )
            listener = await nats.connect(nats_server.url, name="bench-fanout-clients")
            stack.push_async_callback(listener.close)
            receivers = Receivers(config)
            limits = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 1 << 30}
            await listener.subscribe(bus.subjects.notice("*"), cb=receivers.on_notice, **limits)
            await listener.subscribe(f"{RAW_PREFIX}.*", cb=receivers.on_raw, **limits)
            await listener.flush()
            fanout = Fanout(config, bus, listener, receivers)
            with (
                process(notifier_argv, workdir / "notifier.log") as notifier,
                process(raw_argv, workdir / "raw.log") as raw_publisher,
            ):
                assert nats_server.proc is not None
                fanout.pids = {
                    "notifier": notifier.pid,
                    "raw publisher": raw_publisher.pid,
                    "nats-server": nats_server.proc.pid,
                    "bench": os.getpid(),
                }
                await fanout.wait_ready(notifier)
                warm = min(1_000, max(sizes))
                await fanout.notices(warm)
                await fanout.raw(warm)
                samples: dict[str, dict[int, list[Any]]] = {
                    kind: {} for kind in ("notices", "raw", "cpu_notices", "cpu_raw")
                }
                samples["store"] = {size: [await fanout.store(size)] for size in sizes}
                for size in sizes:
                    for by_size in samples.values():
                        by_size.setdefault(size, [])
                for i in range(repeats):
                    for size in sizes:
                        order = ("notices", "raw") if i % 2 == 0 else ("raw", "notices")
                        for kind in order:
                            measure_one = fanout.notices if kind == "notices" else fanout.raw
                            samples[kind][size].append(await measure_one(size))
                            samples[f"cpu_{kind}"][size].append(fanout.cpu)
            if receivers.rejected or receivers.duplicates:
                raise RuntimeError(
                    f"notices rejected {dict(receivers.rejected)}, "
                    f"duplicates {receivers.duplicates}"
                )
    finally:
        nats_server.stop()
    return samples


def collect(sizes: list[int], repeats: int) -> dict[str, dict[int, list[Any]]]:
    """:func:`measure` in a scratch folder removed afterwards (also used by ``growth.py``)."""
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        return asyncio.run(measure(sizes, repeats, Path(tmp)))


def cores_busy(seconds: list[float], cpu: list[dict[str, float]]) -> dict[str, float]:
    """How busy each process kept a core over its rounds (median of its CPU seconds over
    the round's), so whether the machine's cores bound the time."""
    if not cpu:
        return {}
    return {
        proc: statistics.median(c[proc] / s for s, c in zip(seconds, cpu, strict=True) if s > 0)
        for proc in cpu[0]
    }


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Measure at every size; the results (parameters, samples, summary, goals)."""
    samples = collect(params["sizes"], params["repeats"])
    per_size: dict[str, Any] = {}
    for size in params["sizes"]:
        notices = summary(samples["notices"][size])
        raw = summary(samples["raw"][size])
        per_size[str(size)] = {
            "notices": notices,
            "raw": raw,
            "ratio_median": notices["median"] / raw["median"],
            "store_s": samples["store"][size][0],
            "cores_busy": {
                kind: cores_busy(samples[kind][size], samples[f"cpu_{kind}"][size])
                for kind in ("notices", "raw")
            },
        }
    largest = str(max(params["sizes"]))
    at = per_size.get(str(GOAL_SIZE), per_size[largest])
    at_size = GOAL_SIZE if str(GOAL_SIZE) in per_size else int(largest)
    goals = [
        {
            "name": f"notices/raw (medians) at {at_size:,} clients",
            "target": f"<= {GOAL_RATIO:g}x (stated for {GOAL_SIZE:,})",
            "value": at["ratio_median"],
            "met": at["ratio_median"] <= GOAL_RATIO,
        },
        {
            "name": f"seconds to the last verified notice (median) at {at_size:,} clients",
            "target": f"< {GOAL_SECONDS:g} (stated for {GOAL_SIZE:,})",
            "value": at["notices"]["median"],
            "met": at["notices"]["median"] < GOAL_SECONDS,
        },
    ]
    return {
        "parameters": {
            **params,
            "servers": list(SERVERS),
            "raw_bytes": RAW_BYTES,
            "notifier": "python -m services.launch.cli run notifier (own process)",
            "receivers": "verify_notice per client, in the benchmark's process",
            "baseline": "plain nats-py: one process publishes N messages to N subjects",
            "store": "context, measured once per size: N sequential JetStream KV puts",
            "stored_bytes": STORED_BYTES,
        },
        "samples": {
            kind: {str(size): values for size, values in by_size.items()}
            for kind, by_size in samples.items()
        },
        "summary": {"sizes": per_size, "goal_size": at_size},
        "goals": goals,
    }


def report(results: dict[str, Any]) -> str:
    """The table and one line per goal."""
    rows = []
    for size, row in results["summary"]["sizes"].items():
        rows.append(
            [
                int(size),
                row["notices"]["median"] * 1e3,
                row["notices"]["p90"] * 1e3,
                row["raw"]["median"] * 1e3,
                row["raw"]["p90"] * 1e3,
                row["ratio_median"],
                row["store_s"] * 1e3,
            ]
        )
    p = results["parameters"]
    lines = [
        table(
            f"fanout: plan to verified notices vs raw messages, {p['repeats']} repeats",
            ["clients", "notices ms", "p90", "raw ms", "p90", "ratio", "N KV puts ms"],
            rows,
        )
    ]
    for size, row in results["summary"]["sizes"].items():
        for kind, busy in row.get("cores_busy", {}).items():
            each = ", ".join(f"{proc} {value:.2f}" for proc, value in busy.items())
            lines.append(f"{int(size):,} {kind}: cores busy {each} ({sum(busy.values()):.2f})")
    for goal in results["goals"]:
        lines.append(goal_line(goal))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``fanout.json`` and print the table."""
    args = arguments(__doc__.splitlines()[0], argv, quick="100 and 1,000 clients")
    params = dict(QUICK if args.quick else FULL)
    params["quick"] = args.quick
    results = run(params)
    path = write(args.out, "fanout", results)
    print(report(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
