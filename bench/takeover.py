"""Takeover: how long a leased role goes unserved when its replica stops, against a restart.

Real evaluator processes (``python -m services.launch.cli run evaluator``) on an
embedded nats-server, under a lease (services/runtime/lease.py): exactly one
replica scores samples, the others wait as standbys. This process publishes
a signed, healthy MetricsSample of server ``A`` every 20 ms and hears every
HealthReport of ``A`` (raw, so a sample scored by two replicas shows) and
every write of the ``evaluator`` key of the ``<PREFIX>_leases`` bucket (a KV
watch: who holds the lease, and since when). Per repeat, in an order that
rotates:

- **standby**: two replicas; the holder is killed with SIGKILL. The gap runs
  from the kill to the first report after the standby wrote the lease.
- **restart** (the baseline, no standby): the standby is stopped first; the
  holder is killed with SIGKILL and started again, as the same replica,
  :data:`RESTART_DELAY_S` after the kill (the first back-off of `up`'s
  supervisor, ``Backoff().initial_s``; `up` looks for exits every 0.5 s, so
  under `up` the restart comes 0-0.5 s later still). The gap runs from the kill
  to the first report after the new process wrote its lease.
- **handover**: two replicas; the holder is stopped with SIGTERM (a rolling
  upgrade): it drains, gives the lease up, and the standby takes it at its
  next look. The gap runs from the signal to the standby's first report.

After each, the stopped replica is started again as the standby, and the
next event waits until it says so and ten more reports have come. Each gap
also says when the lease moved (from the event to the new holder's write),
the silence (from the last report before the new holder's first to that
first: after a SIGTERM the old holder still scores while it stops) and how
many samples were never scored in it. Over the whole
run it counts samples scored twice (a HealthReport's ``sample_id`` heard
twice: must be 0) and samples never scored outside any gap.

It runs at ``bus.lease_s`` 3 and 1 (the default is 10), each under its own prefix
(its own lease bucket) on the same nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.detection import good_sample
from schemas import codec
from schemas.events import HealthReport
from services.launch.farm import farm_dict, write_config
from services.launch.registry import run_argv
from services.launch.supervisor import Backoff, ServiceProcess
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, load_config
from services.runtime.lease import LOOK_S, holder_name
from services.runtime.natsserver import EmbeddedNats

NAME = "takeover"
FULL = {"repeats": 5}
QUICK = {"repeats": 2}
LEASES = (3.0, 1.0)
SCENARIOS = ("standby", "restart", "handover")
SERVICE = "evaluator"
INTERVAL_S = 0.02
"""How often a sample of A is published: the resolution of every gap."""
RESTART_DELAY_S = Backoff().initial_s
SETTLE_REPORTS = 10
STEP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
IN_FLIGHT_S = 0.5
"""A sample published this long before an event and never scored counts in its gap."""
HOST = holder_name().rsplit("/", 1)[0]


def build_config(directory: Path, bus_url: str, prefix: str, lease_s: float) -> Path:
    data = farm_dict(directory, bus_url=bus_url, prefix=prefix, servers=("A", "B", "C"), clients=1)
    data["clients"][0].update({"rate": 0.0})
    data["bus"]["lease_s"] = lease_s
    return write_config(directory, data)


# --- replicas ------------------------------------------------------------------


class Replica:
    """One evaluator process, replica ``number`` (``AAA_FAILOVER_REPLICA``)."""

    def __init__(self, number: int, path: Path, bus_url: str) -> None:
        self.number = number
        self.name = f"{HOST}/{number}"
        self.lines: list[str] = []
        self.standing_by = threading.Event()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(common.ROOT),
            "AAA_FAILOVER_REPLICA": str(number),
        }
        argv = run_argv(SERVICE, path, bus_url=bus_url)
        self.process = ServiceProcess(f"{SERVICE}-{number}", argv, sink=self._line, env=env)
        self.spawned = 0.0
        self.status: int | None = None

    def _line(self, _name: str, line: str) -> None:
        self.lines.append(line)
        if "standby:" in line:
            self.standing_by.set()

    @property
    def running(self) -> bool:
        return self.process.proc is not None and self.process.exited is None

    def kill(self) -> None:
        assert self.process.proc is not None
        self.process.proc.kill()

    def terminate(self) -> None:
        self.process.terminate()

    async def wait(self) -> int:
        self.status = await asyncio.to_thread(self.process.wait, STOP_TIMEOUT_S)
        return self.status


@dataclass
class Gap:
    """One event and what was heard after it (monotonic seconds)."""

    scenario: str
    event: float
    lease_at: float
    report_at: float
    old: str
    new: str
    silence_s: float
    unscored: int = 0
    sent: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "gap_s": self.report_at - self.event,
            "lease_moved_s": self.lease_at - self.event,
            "report_after_lease_s": self.report_at - self.lease_at,
            "silence_s": self.silence_s,
            "old_holder": self.old,
            "new_holder": self.new,
            "samples_sent_in_gap": self.sent,
            "samples_unscored": self.unscored,
        }


@dataclass
class Heard:
    """What this process published and heard, each with its monotonic time."""

    sent: list[tuple[float, str]] = field(default_factory=list)
    scored: Counter[str] = field(default_factory=Counter)
    reports: list[float] = field(default_factory=list)
    leases: list[tuple[float, str | None]] = field(default_factory=list)

    def report_after(self, moment: float) -> float | None:
        i = bisect.bisect_right(self.reports, moment)
        return self.reports[i] if i < len(self.reports) else None

    def lease_after(self, moment: float, holder: str) -> float | None:
        return next((t for t, h in self.leases if t > moment and h == holder), None)


async def until(check: Callable[[], float | bool | None], what: str) -> Any:
    """Poll ``check`` every 5 ms until it returns something true; RuntimeError after
    STEP_TIMEOUT_S."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {STEP_TIMEOUT_S:g}s waiting until {what}")
        await asyncio.sleep(0.005)
    return value


class Farm:
    """Evaluator replicas on one prefix, this process's bus, its publisher and its ears."""

    def __init__(self, config: Config, path: Path, bus_url: str, bus: Bus) -> None:
        self.config = config
        self.path = path
        self.bus_url = bus_url
        self.bus = bus
        self.heard = Heard()
        self.replicas: list[Replica] = []
        self.gaps: list[Gap] = []
        self.exits: list[dict[str, Any]] = []

    # -- ears and mouth

    async def listen(self, stack: AsyncExitStack) -> None:
        async def on_report(msg: Any) -> None:
            event = codec.decode(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
            if isinstance(event, HealthReport):
                self.heard.reports.append(time.monotonic())
                self.heard.scored[event.sample_id] += 1

        sub = await self.bus.nc.subscribe(self.bus.subjects.health("A"), cb=on_report)
        stack.push_async_callback(sub.unsubscribe)
        kv = await self.bus.lease_bucket(self.config.bus.lease_s)
        watcher = await kv.watch(SERVICE)
        stack.push_async_callback(watcher.stop)

        async def watch() -> None:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    continue
                holder = None if entry.value is None or entry.operation else entry.value.decode()
                self.heard.leases.append((time.monotonic(), holder))

        task = asyncio.create_task(watch(), name="lease watch")
        stack.callback(task.cancel)
        await self.bus.nc.flush()

    async def publish(self, stop: asyncio.Event) -> None:
        subject = self.bus.subjects.metrics("A")
        start = time.monotonic()
        seq = 0
        while not stop.is_set():
            seq += 1
            event = good_sample("A", seq)  # room to spare: no incident opens
            await self.bus.publish(subject, event)
            self.heard.sent.append((time.monotonic(), event.id))
            await asyncio.sleep(max(0.0, start + seq * INTERVAL_S - time.monotonic()))

    # -- processes

    async def start(self, number: int, *, standby: bool) -> Replica:
        """Start replica ``number``; wait until it holds the lease and has started, or (a
        ``standby``) until it says it waits."""
        replica = Replica(number, self.path, self.bus_url)
        self.replicas.append(replica)
        replica.spawned = time.monotonic()
        await asyncio.to_thread(replica.process.start)
        await self.ready(replica, standby=standby)
        return replica

    async def ready(self, replica: Replica, *, standby: bool) -> None:
        flag = replica.standing_by if standby else replica.process.ready
        if not await asyncio.to_thread(flag.wait, STEP_TIMEOUT_S):
            raise RuntimeError(
                f"replica {replica.number} did not {'stand by' if standby else 'start'} "
                f"(exit {replica.process.exited}): " + "\n".join(replica.lines[-20:])
            )

    async def stop(self, replica: Replica, why: str) -> None:
        replica.terminate()
        status = await replica.wait()
        self.exits.append({"replica": replica.number, "why": why, "status": status})

    async def reap(self, replica: Replica) -> None:
        status = await replica.wait()
        self.exits.append({"replica": replica.number, "why": "kill -9", "status": status})

    async def stop_all(self) -> None:
        for replica in self.replicas:
            if replica.running:
                await self.stop(replica, "end")

    async def settle(self) -> None:
        """Wait until SETTLE_REPORTS more reports have come."""
        base = len(self.heard.reports)
        await until(lambda: len(self.heard.reports) >= base + SETTLE_REPORTS, "reports flow")

    async def gap(self, scenario: str, event: float, old: str, new: Replica, after: float) -> Gap:
        """Wait for ``new``'s lease written after ``after`` and the first report after it."""
        lease_at = await until(
            lambda: self.heard.lease_after(after, new.name), f"{new.name} holds the lease"
        )
        report_at = await until(
            lambda: self.heard.report_after(lease_at), f"a report after {new.name} took over"
        )
        reports = self.heard.reports
        before = reports[bisect.bisect_left(reports, report_at) - 1]
        gap = Gap(scenario, event, lease_at, report_at, old, new.name, report_at - before)
        self.gaps.append(gap)
        return gap

    # -- the three events; each takes (holder, standby) and leaves (holder, standby)

    async def standby(self, holder: Replica, standby: Replica) -> tuple[Replica, Replica]:
        await self.settle()
        killed = time.monotonic()
        holder.kill()
        await self.gap("standby", killed, holder.name, standby, killed)
        await self.reap(holder)
        return standby, await self.start(holder.number, standby=True)

    async def handover(self, holder: Replica, standby: Replica) -> tuple[Replica, Replica]:
        await self.settle()
        signalled = time.monotonic()
        holder.terminate()
        await self.gap("handover", signalled, holder.name, standby, signalled)
        self.exits.append(
            {"replica": holder.number, "why": "handover", "status": await holder.wait()}
        )
        return standby, await self.start(holder.number, standby=True)

    async def restart(self, holder: Replica, standby: Replica) -> tuple[Replica, Replica]:
        await self.stop(standby, "standby stopped for the restart baseline")
        await self.settle()
        killed = time.monotonic()
        holder.kill()
        await self.reap(holder)
        await asyncio.sleep(max(0.0, killed + RESTART_DELAY_S - time.monotonic()))
        again = Replica(holder.number, self.path, self.bus_url)
        self.replicas.append(again)
        again.spawned = time.monotonic()
        await asyncio.to_thread(again.process.start)
        # only a lease write by the new process counts: one in flight from the killed
        # process (the same holder name) could reach this process just after the kill
        await self.gap("restart", killed, holder.name, again, again.spawned)
        await self.ready(again, standby=False)
        return again, await self.start(standby.number, standby=True)

    def count_unscored(self) -> dict[str, int]:
        """Fill each gap's sent and unscored samples; the unscored outside every gap."""
        outside = 0
        for at, sample_id in self.heard.sent:
            scored = self.heard.scored[sample_id] > 0
            for gap in self.gaps:
                if gap.event - IN_FLIGHT_S <= at <= gap.report_at:
                    gap.sent += gap.event <= at
                    gap.unscored += not scored
                    break
            else:
                outside += not scored
        doubles = sum(1 for n in self.heard.scored.values() if n > 1)
        return {
            "sent": len(self.heard.sent),
            "scored": sum(1 for n in self.heard.scored.values() if n > 0),
            "reports": len(self.heard.reports),
            "scored_twice": doubles,
            "unscored_outside_gaps": outside,
        }


async def run_lease(
    nats: EmbeddedNats, workdir: Path, lease_s: float, repeats: int, logs: Path | None
) -> dict[str, Any]:
    prefix = f"btko{round(lease_s * 10)}"
    path = build_config(workdir / prefix, nats.url, prefix, lease_s)
    config = load_config(path)
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="bench", stack=stack)
        farm = Farm(config, path, nats.url, bus)
        stack.push_async_callback(farm.stop_all)
        await farm.listen(stack)
        stop = asyncio.Event()
        publishing: asyncio.Task[None] | None = None

        async def stop_publishing() -> None:
            stop.set()
            if publishing is not None:
                await publishing

        stack.push_async_callback(stop_publishing)
        try:
            holder = await farm.start(1, standby=False)
            # from here every sample has a replica subscribed to score it
            publishing = asyncio.create_task(farm.publish(stop), name="samples")
            standby = await farm.start(2, standby=True)
            for i in range(repeats):
                order = SCENARIOS[i % 3 :] + SCENARIOS[: i % 3]
                for scenario in order:
                    holder, standby = await getattr(farm, scenario)(holder, standby)
                    last = farm.gaps[-1]
                    print(
                        f"  lease_s {lease_s:g}, {scenario:>8} {i + 1}/{repeats}: "
                        f"gap {last.report_at - last.event:.2f}s "
                        f"(lease moved after {last.lease_at - last.event:.2f}s)",
                        flush=True,
                    )
            await farm.settle()
        except BaseException:
            for replica in farm.replicas:
                tail = "\n    ".join(replica.lines[-15:])
                print(f"replica {replica.number} ({replica.name}):\n    {tail}", file=sys.stderr)
            raise
        await stop_publishing()
        last_id = farm.heard.sent[-1][1]
        try:
            await until(lambda: farm.heard.scored[last_id] > 0, "the last sample is scored")
        except RuntimeError:
            print("the last sample was not scored", file=sys.stderr)
        await farm.stop_all()
        totals = farm.count_unscored()
    if logs is not None:
        write_logs(logs, prefix, farm.replicas)
    return {
        "prefix": prefix,
        "gaps": [g.record() for g in farm.gaps],
        "totals": totals,
        "exits": farm.exits,
    }


def write_logs(folder: Path, prefix: str, replicas: Sequence[Replica]) -> None:
    """Each replica's log, in the order they started."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, replica in enumerate(replicas):
        name = f"{prefix}-{k:02d}-replica-{replica.number}.log"
        (folder / name).write_text("".join(line + "\n" for line in replica.lines))


async def measure(params: dict[str, Any], workdir: Path, logs: Path | None) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    with EmbeddedNats(workdir / "nats") as nats:
        for lease_s in params["lease_s"]:
            print(f"lease_s {lease_s:g}:", flush=True)
            runs[f"{lease_s:g}"] = await run_lease(nats, workdir, lease_s, params["repeats"], logs)
    return runs


# --- results ---------------------------------------------------------------------


def summarize(lease_s: float, run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        gaps = [g for g in run["gaps"] if g["scenario"] == scenario]
        out[scenario] = {
            **common.summary([g["gap_s"] for g in gaps]),
            "lease_moved_median_s": statistics.median(g["lease_moved_s"] for g in gaps),
            "lease_moved_max_s": max(g["lease_moved_s"] for g in gaps),
            "silence_median_s": statistics.median(g["silence_s"] for g in gaps),
            "silence_max_s": max(g["silence_s"] for g in gaps),
            "unscored": [g["samples_unscored"] for g in gaps],
            "unscored_total": sum(g["samples_unscored"] for g in gaps),
        }
    out["ratio_standby_restart_median"] = out["standby"]["median"] / out["restart"]["median"]
    out["ratio_standby_restart_max"] = out["standby"]["max"] / out["restart"]["max"]
    out["ratio_handover_restart_median"] = out["handover"]["median"] / out["restart"]["median"]
    out.update(run["totals"])
    clean = [e for e in run["exits"] if e["why"] != "kill -9"]
    out["unclean_stops"] = [e for e in clean if e["status"] != 0]
    return out


def results(params: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    summary = {key: summarize(float(key), run) for key, run in runs.items()}
    goals: list[dict[str, Any]] = [
        {
            "name": "samples scored twice",
            "target": "== 0",
            "value": sum(s["scored_twice"] for s in summary.values()),
            "met": all(s["scored_twice"] == 0 for s in summary.values()),
        }
    ]
    for key, s in summary.items():
        bound = float(key) + LOOK_S
        goals.append(
            {
                "name": f"lease_s {key}: standby holds the lease after kill -9, max",
                "target": f"<= lease_s + one look ({bound:g} s)",
                "value": s["standby"]["lease_moved_max_s"],
                "met": s["standby"]["lease_moved_max_s"] <= bound,
            }
        )
    return {
        "parameters": {
            **params,
            "service": SERVICE,
            "sample_interval_s": INTERVAL_S,
            "restart_delay_s": RESTART_DELAY_S,
            "look_s": LOOK_S,
            "in_flight_s": IN_FLIGHT_S,
            "scenarios": {
                "standby": (
                    "two replicas, the holder killed (SIGKILL): kill -> the standby's first report"
                ),
                "restart": (
                    f"one replica killed (SIGKILL) and started again {RESTART_DELAY_S:g} s later "
                    "as the same replica: kill -> its first report"
                ),
                "handover": (
                    "two replicas, the holder stopped (SIGTERM): signal -> the standby's "
                    "first report"
                ),
            },
        },
        "samples": runs,
        "summary": summary,
        "goals": goals,
    }


def print_table(res: dict[str, Any]) -> None:
    rows = []
    for key, s in res["summary"].items():
        for scenario in SCENARIOS:
            x = s[scenario]
            rows.append(
                [
                    key,
                    scenario,
                    x["n"],
                    x["median"],
                    x["min"],
                    x["max"],
                    x["lease_moved_median_s"],
                    x["silence_median_s"],
                    x["unscored_total"],
                ]
            )
    print(
        common.table(
            f"takeover: gap in HealthReports of A (s), samples every {INTERVAL_S * 1e3:g} ms",
            [
                "lease_s",
                "",
                "n",
                "median",
                "min",
                "max",
                "lease moved p50",
                "silence p50",
                "unscored",
            ],
            rows,
        )
    )
    for key, s in res["summary"].items():
        print(
            f"lease_s {key}: standby/restart median x{s['ratio_standby_restart_median']:.2f}, "
            f"max x{s['ratio_standby_restart_max']:.2f}; handover/restart median "
            f"x{s['ratio_handover_restart_median']:.2f}; {s['sent']} samples sent, "
            f"{s['scored_twice']} scored twice, {s['unscored_outside_gaps']} unscored outside "
            f"the gaps; unclean stops {len(s['unclean_stops'])}"
        )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats of each event")
    parser.add_argument("--repeats", type=int, metavar="N", help="N repeats of each event")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="results folder")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep every replica's log in DIR")
    return parser.parse_args(argv)


def interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    params: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        params["repeats"] = max(1, args.repeats)
    params.update({"quick": args.quick, "lease_s": list(LEASES)})
    signal.signal(signal.SIGTERM, interrupted)  # stops like Ctrl-C: every process, the folder
    try:
        with tempfile.TemporaryDirectory(prefix="aaa-bench-takeover-") as tmp:
            runs = asyncio.run(measure(params, Path(tmp), args.logs))
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", flush=True)
        return 130
    res = results(params, runs)
    path = common.write(args.out, NAME, res)
    print_table(res)
    for goal in res["goals"]:
        print(common.goal_line(goal))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
