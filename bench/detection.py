"""Detection latency: from an overloaded sample on the bus to the client's verified switch.

The evaluator, targeter, notifier and the agent of one client (``nas-01``,
home ``A``, alternates ``B`` and ``C``) run as their own processes
(``python -m services.launch.cli run <service>``) on an embedded nats-server, with
``evaluator.failover_samples = 1`` so one sample opens an incident. This
process feeds healthy samples of ``B`` and ``C`` once a second (as their
collectors would), then, per incident:

1. publishes a signed MetricsSample of ``A`` with every worker busy
   (health 0) and starts the clock;
2. stops it when the agent's Ack arrives: the agent publishes it right after
   it has verified the FailoverNotice's authenticator and switched (the
   path is sample -> evaluator -> Incident -> targeter -> FailoverPlan ->
   notifier -> FailoverNotice -> agent -> Ack);
3. untimed, brings ``A`` back: a healthy sample (the incident turns
   ``recovering``), then a final ReadmitWave (it closes; the notifier sends
   the ReadmitNotice and the agent goes home), and waits until the
   targeter's registry has the client on ``A`` again.

Baseline, interleaved in the same run: a bare relay chain of four plain
nats-py subscribers, each its own process, republishing payloads of the same
sizes as the real hops (no msgspec, no HMAC, no logic), timed from the
publish to the last relay's message arriving back here.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from schemas.codec import decode
from schemas.events import Ack, Incident, MetricsSample, ReadmitWave
from services.launch import registry
from services.launch.farm import farm_dict, write_config
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, load_config
from services.runtime.lifecycle import says_started
from services.runtime.natsserver import EmbeddedNats

NAME = "detection"
SELF = str(Path(__file__).resolve())
FULL = {"incidents": 500, "warmup": 10}
QUICK = {"incidents": 30, "warmup": 3}
PREFIX = "bdet"
CLIENT = "nas-01"
SERVICES = (*(name for name in registry.SANDBOX if name != "readmitter"), "agent")
"""The deciding services and the agent; this process stands in for the readmitter (it
publishes the final ReadmitWave itself) and for the collectors (it publishes samples)."""
HOPS = ("incident", "plan", "notice", "ack")
RELAYS = len(HOPS)
GOAL_RATIO = 1.5
STEP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0


def low_sample(server: str, seq: int) -> MetricsSample:
    """A sample of ``server`` with every worker busy and the queue nearly full: health 0."""
    return MetricsSample(
        source="bench",
        server=server,
        seq=seq,
        status_ok=True,
        threads_active=8,
        threads_total=8,
        threads_max=8,
        queue_len=240,
        memory_percent=40.0,
        cpu_percent=97.0,
        process_count=120,
        sources={"threads": "status-server", "memory": "host", "cpu": "process"},
    )


def good_sample(server: str, seq: int) -> MetricsSample:
    """A sample of ``server`` with room to spare: health 0.8."""
    return MetricsSample(
        source="bench",
        server=server,
        seq=seq,
        status_ok=True,
        threads_active=1,
        threads_total=8,
        threads_max=8,
        queue_len=0,
        memory_percent=20.0,
        cpu_percent=10.0,
        process_count=120,
        sources={"threads": "status-server", "memory": "host", "cpu": "process"},
    )


def build_config(directory: Path, bus_url: str) -> tuple[Config, Path]:
    """Three servers and one client of ``A``; one low sample opens an incident."""
    data = farm_dict(directory, bus_url=bus_url, prefix=PREFIX, servers=("A", "B", "C"), clients=1)
    data["clients"][0].update({"rate": 0.0, "return_after_s": 3600.0})
    data["evaluator"] = {"failover_samples": 1, "recovery_samples": 1}
    data["targeter"] = {"step_interval_s": 3600.0}
    path = write_config(directory, data)
    return load_config(path), path


# --- processes ---------------------------------------------------------------


def start(stack: ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` (from the project root), stopped with SIGTERM when ``stack`` closes."""
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(
        argv, cwd=common.ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    return proc


def read(log: Path) -> str:
    """What a process has logged so far."""
    return log.read_text(errors="replace")


async def wait_started(name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the service's log says it has started; fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(says_started(line) for line in read(log).splitlines()):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}): {read(log)[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start in {START_TIMEOUT_S}s")
        await asyncio.sleep(0.05)


async def relay_main(url: str, inbox: str, outbox: str, size: int) -> None:
    """One hop of the baseline, until SIGTERM: republish each message's tag padded to ``size``."""
    import nats

    nc = await nats.connect(url)
    pad = b"x" * max(0, size - 8)

    async def on_message(msg: Any) -> None:
        await nc.publish(outbox, msg.data[:8] + pad)

    await nc.subscribe(inbox, cb=on_message)
    await nc.flush()
    await asyncio.Event().wait()


# --- observing ---------------------------------------------------------------


class Tap:
    """Messages of one subject, each with the moment it arrived here."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def on_message(self, msg: Any) -> None:
        self.queue.put_nowait((time.perf_counter(), msg.data))

    def clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    async def next(self, check: Callable[[bytes], bool] = lambda _: True) -> tuple[float, bytes]:
        """The next message passing ``check``; RuntimeError after STEP_TIMEOUT_S."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("timed out waiting for a message")
            try:
                item = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                continue
            if check(item[1]):
                return item


def event_is(kind: type, **fields: Any) -> Callable[[bytes], bool]:
    """A check that the payload is a ``kind`` event whose ``fields`` have these values."""

    def check(data: bytes) -> bool:
        event = decode(data)
        return isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items())

    return check


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` every millisecond until it holds; RuntimeError after STEP_TIMEOUT_S."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


# --- the two paths -------------------------------------------------------------


class Harness:
    """The bench's own connection, its taps, and one round of each path."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.subjects = bus.subjects
        self.taps = {hop: Tap() for hop in HOPS}
        self.relay_taps = [Tap() for _ in range(RELAYS)]
        self.seq = 0
        self.sizes: dict[str, int] = {}

    async def subscribe(self) -> None:
        s, nc = self.subjects, self.bus.nc
        for hop, subject in zip(
            HOPS, (s.incident("A"), s.plan("A"), s.notice(CLIENT), s.ack(CLIENT)), strict=True
        ):
            await nc.subscribe(subject, cb=self.taps[hop].on_message)
        for i, tap in enumerate(self.relay_taps):
            await nc.subscribe(self.relay_subject(i + 1), cb=tap.on_message)
        await nc.flush()

    def relay_subject(self, i: int) -> str:
        return f"{PREFIX}.relay.{i}"

    async def publish_sample(self, sample: MetricsSample) -> float:
        subject = self.subjects.metrics(sample.server)
        payload, headers = self.bus.encode(subject, sample)
        self.sizes.setdefault("sample", len(payload))
        started = time.perf_counter()
        await self.bus.nc.publish(subject, payload, headers=headers)
        return started

    async def incident(self) -> dict[str, float]:
        """One timed detection, then the untimed way back; the hop times in seconds."""
        for tap in self.taps.values():
            tap.clear()
        self.seq += 1
        started = await self.publish_sample(low_sample("A", self.seq))
        ack_at, ack = await self.taps["ack"].next(event_is(Ack, server="A", accepted=True))
        times = {"total": ack_at - started}
        incident_at, opening = await self.taps["incident"].next(event_is(Incident, state="opened"))
        opened = decode(opening)
        assert isinstance(opened, Incident)
        times["incident"] = incident_at - started
        plan_at, plan = await self.taps["plan"].next()
        notice_at, notice = await self.taps["notice"].next()
        times["plan"] = plan_at - started
        times["notice"] = notice_at - started
        times["ack"] = times["total"]
        for hop, data in (("incident", opening), ("plan", plan), ("notice", notice), ("ack", ack)):
            self.sizes.setdefault(hop, len(data))
        await self.recover(opened.incident_id)
        return times

    async def recover(self, incident_id: str) -> None:
        """Bring ``A`` back: healthy sample, final wave, client home in the registry."""
        self.seq += 1
        await self.publish_sample(good_sample("A", self.seq))
        await self.taps["incident"].next(event_is(Incident, state="recovering"))
        wave = ReadmitWave(
            source="bench",
            incident_id=incident_id,
            server="A",
            wave=1,
            clients=[CLIENT],
            final=True,
            health=0.8,
            reason="bench",
        )
        await self.bus.publish(self.subjects.readmit("A"), wave)
        await self.taps["incident"].next(event_is(Incident, state="closed"))
        await self.taps["ack"].next(event_is(Ack, now_on="A", accepted=True))
        registry = await self.bus.js.key_value(f"{self.subjects.stream_name()}_registry")

        async def home() -> bool:
            entry = await registry.get(CLIENT)
            return entry.value is not None and msgspec.json.decode(entry.value)["current"] == "A"

        await until(home, f"the targeter has {CLIENT} on A")

    async def relay(self) -> dict[str, float]:
        """One timed trip down the bare relay chain; the hop times in seconds."""
        for tap in self.relay_taps:
            tap.clear()
        self.seq += 1
        tag = self.seq.to_bytes(8, "big")
        payload = tag + b"x" * (self.sizes["sample"] - 8)
        started = time.perf_counter()
        await self.bus.nc.publish(self.relay_subject(0), payload)
        times: dict[str, float] = {}
        for hop, tap in zip(HOPS, self.relay_taps, strict=True):
            at, _ = await tap.next(lambda data: data[:8] == tag)
            times[hop] = at - started
        times["total"] = times["ack"]
        return times


async def feed_alternates(harness: Harness) -> None:
    """Healthy samples of ``B`` and ``C`` once a second, as their collectors would send."""
    seq = 0
    while True:
        seq += 1
        for server in ("B", "C"):
            await harness.bus.publish(harness.subjects.metrics(server), good_sample(server, seq))
        await asyncio.sleep(1.0)


async def measure(params: dict[str, int], workdir: Path) -> dict[str, Any]:
    with EmbeddedNats(workdir / "nats") as nats, ExitStack() as procs:
        config, path = build_config(workdir / "farm", nats.url)
        started = []
        for name, service, args in registry.plan(config, SERVICES):
            log = workdir / f"{name}.log"
            argv = registry.run_argv(service, path, args=args)
            started.append((name, start(procs, argv, log), log))
        for name, proc, log in started:
            await wait_started(name, proc, log)
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench", stack=stack
            )
            harness = Harness(bus)
            await harness.subscribe()
            health = Tap()
            sub = await bus.nc.subscribe(bus.subjects.health("*"), cb=health.on_message)
            feeder = asyncio.create_task(feed_alternates(harness))
            stack.callback(feeder.cancel)
            seen: set[str] = set()
            while seen != {"B", "C"}:
                _, data = await health.next()
                seen.add(decode(data).server)  # type: ignore[union-attr]
            await sub.unsubscribe()

            for _ in range(params["warmup"]):
                await harness.incident()
            sizes = [harness.sizes[hop] for hop in HOPS]
            for i, size in enumerate(sizes):
                argv = [
                    sys.executable,
                    SELF,
                    "relay",
                    nats.url,
                    harness.relay_subject(i),
                    harness.relay_subject(i + 1),
                    str(size),
                ]
                start(procs, argv, workdir / f"relay-{i}.log")
            await relay_ready(harness)
            for _ in range(params["warmup"]):
                await harness.relay()

            samples: dict[str, list[dict[str, float]]] = {"detection": [], "relay": []}
            for i in range(params["incidents"]):
                order = ("detection", "relay") if i % 2 == 0 else ("relay", "detection")
                for path_name in order:
                    if path_name == "detection":
                        samples["detection"].append(await harness.incident())
                    else:
                        samples["relay"].append(await harness.relay())
            return {
                "samples": samples,
                "sizes": dict(
                    zip(["sample", *HOPS], [harness.sizes["sample"], *sizes], strict=True)
                ),
            }


async def relay_ready(harness: Harness) -> None:
    """Send probes down the chain until one comes through (every relay is subscribed)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            await asyncio.wait_for(harness.relay(), 0.5)
            return
        except (TimeoutError, RuntimeError):
            if time.monotonic() > deadline:
                raise RuntimeError("the relay chain did not come up") from None


def ms(values: list[float]) -> dict[str, float]:
    return {k: (v * 1e3 if k != "n" else v) for k, v in common.summary(values).items()}


def results(params: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    samples = measured["samples"]
    totals = {p: [s["total"] for s in samples[p]] for p in samples}
    summary: dict[str, Any] = {p: ms(totals[p]) for p in totals}
    for p in samples:
        summary[p]["hops_median_ms"] = {
            hop: statistics.median(s[hop] for s in samples[p]) * 1e3 for hop in HOPS
        }
    d, r = summary["detection"], summary["relay"]
    summary["ratio_p50"] = d["median"] / r["median"]
    summary["ratio_p99"] = d["p99"] / r["p99"]
    return {
        "parameters": {
            **params,
            "services": list(SERVICES),
            "hops": len(HOPS),
            "payload_bytes": measured["sizes"],
            "end": "the agent's Ack, published right after it verified the notice and switched",
            "baseline": "4 plain nats-py relay processes, same payload sizes, no headers",
        },
        "samples": {p: [{k: v * 1e3 for k, v in s.items()} for s in samples[p]] for p in samples},
        "summary": summary,
        "goals": [
            {
                "name": "detection p50 vs bare 4-hop relay p50",
                "target": f"<= {GOAL_RATIO}x",
                "value": summary["ratio_p50"],
                "met": summary["ratio_p50"] <= GOAL_RATIO,
            }
        ],
    }


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "relay":
        url, inbox, outbox, size = sys.argv[2:]
        asyncio.run(relay_main(url, inbox, outbox, int(size)))
        return 0
    args = common.arguments(__doc__.splitlines()[0])
    params = dict(QUICK if args.quick else FULL)
    with tempfile.TemporaryDirectory(prefix="aaa-bench-detection-") as tmp:
        measured = asyncio.run(measure(params, Path(tmp)))
    res = results({**params, "quick": args.quick}, measured)
    path = common.write(args.out, NAME, res)
    s = res["summary"]
    rows = []
    for p in ("detection", "relay"):
        hops = s[p]["hops_median_ms"]
        rows.append([p, s[p]["median"], s[p]["p99"], *(hops[h] for h in HOPS)])
    print(
        common.table(
            f"detection: low sample -> agent's Ack, {params['incidents']} incidents (ms)",
            ["", "p50", "p99", *(f"{h} p50" for h in HOPS)],
            rows,
        )
    )
    print(f"ratio detection/relay: p50 x{s['ratio_p50']:.2f}, p99 x{s['ratio_p99']:.2f}")
    for goal in res["goals"]:
        print(common.goal_line(goal))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
