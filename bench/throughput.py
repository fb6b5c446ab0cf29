"""Throughput: signed MetricsSamples per second one evaluator process turns into HealthReports.

The evaluator runs as its own process (``python -m services.launch.cli run
evaluator``) on an embedded nats-server, for a farm of 200 servers. Per round
this process pre-encodes and signs N samples (healthy, round-robin over the
servers, so no incident opens and nothing is written to KV), starts a bare
counting subscriber (its own process, plain nats-py), starts the clock and
publishes them as fast as it can. The rate is N over the time from the first
publish to the counter's N-th message:

- **evaluator**: the counter counts the evaluator's HealthReports (one per
  sample: verified, decoded, replay-checked, scored, encoded, signed,
  published);
- **bare**: the counter counts the same N signed messages published on a
  subject no service hears, so it sees them straight from the server.

Rounds alternate (ABBA). Drops are counted, not hidden: reports that never
came, the evaluator's bus counters (logged at its shutdown) and any
slow-consumer error in its log. The replay window is raised to 300 s so a
sample that waits in the evaluator's queue is not dropped as stale.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.detection import good_sample as sample
from bench.detection import read, start, wait_started
from services.launch.farm import farm_dict, write_config
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, load_config
from services.runtime.natsserver import EmbeddedNats

NAME = "throughput"
SELF = str(Path(__file__).resolve())
FULL = {"samples": 50_000, "rounds": 3, "servers": 200, "warmup": 1_000}
QUICK = {"samples": 2_000, "rounds": 2, "servers": 200, "warmup": 200}
PREFIX = "bthr"
PATHS = ("bare", "evaluator")
GOAL_RATIO = 0.6
IDLE_TIMEOUT_S = 5.0
"""A round ends early, with drops, when the counter has not moved for this long."""


def build_config(directory: Path, bus_url: str, servers: int) -> tuple[Config, Path]:
    ids = tuple(f"s{i:03d}" for i in range(servers))
    data = farm_dict(directory, bus_url=bus_url, prefix=PREFIX, servers=ids, clients=0)
    data["bus"]["replay_window_s"] = 300.0
    path = write_config(directory, data)
    return load_config(path), path


# --- the counting subscriber (its own process) --------------------------------


async def count_main(url: str, subject: str, expected: int, report: str) -> None:
    """Count messages on ``subject``; publish the count to ``report`` every 0.2 s and at the end.

    A report is JSON: ``count``, ``first`` and ``last`` (``time.monotonic()``
    of the first and latest message) and ``done``.
    """
    import nats

    nc = await nats.connect(url)
    count = 0
    first = last = 0.0
    done = asyncio.Event()

    async def on_message(msg: Any) -> None:
        nonlocal count, first, last
        last = time.monotonic()
        if count == 0:
            first = last
        count += 1
        if count >= expected:
            done.set()

    async def send(final: bool) -> None:
        state = {"count": count, "first": first, "last": last, "done": final}
        await nc.publish(report, json.dumps(state).encode())
        await nc.flush()

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    await send(False)
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            await send(False)
    await send(True)
    await nc.drain()


# --- one round ---------------------------------------------------------------


async def round_(
    bus: Bus,
    url: str,
    procs: ExitStack,
    workdir: Path,
    path: str,
    n: int,
    servers: list[str],
    seq0: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Publish ``n`` signed samples and time them through ``path``. The CPU time each
    process used over the round (``pids``: the evaluator's and the nats-server's; the
    counter's and this one's too) is read from /proc; it takes no part in the timing."""
    subjects = bus.subjects
    if path == "evaluator":
        listen, target = subjects.health("*"), subjects.metrics
    else:
        listen, target = f"{PREFIX}.raw.*", lambda sid: f"{PREFIX}.raw.{sid}"
    messages = []
    for i in range(n):
        sid = servers[i % len(servers)]
        payload, headers = bus.encode(target(sid), sample(sid, seq0 + i))
        messages.append((target(sid), payload, headers))
    report_subject = f"{PREFIX}.bench.report.{seq0}"
    reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_report(msg: Any) -> None:
        reports.put_nowait(json.loads(msg.data))

    sub = await bus.nc.subscribe(report_subject, cb=on_report)
    await bus.nc.flush()
    argv = [sys.executable, SELF, "count", url, listen, str(n), report_subject]
    counter = start(procs, argv, workdir / f"count-{seq0}.log")
    try:
        await asyncio.wait_for(reports.get(), 30)
    except TimeoutError:
        log = read(workdir / f"count-{seq0}.log")
        raise RuntimeError(f"the counter did not start: {log}") from None

    pids = {**pids, "counter": counter.pid, "bench": os.getpid()}
    cpu_before = common.cpu_of(pids)
    started = time.monotonic()
    for subject, payload, headers in messages:
        await bus.nc.publish(subject, payload, headers=headers)
    await bus.nc.flush()
    published = time.monotonic()

    state: dict[str, Any] = {"count": 0}
    moved_at = time.monotonic()
    while not state.get("done"):
        try:
            latest = await asyncio.wait_for(reports.get(), 1.0)
        except TimeoutError:
            latest = state
        if latest["count"] != state["count"]:
            moved_at = time.monotonic()
        state = latest
        if time.monotonic() - moved_at > IDLE_TIMEOUT_S:
            break
    cpu = common.cpu_since(cpu_before, pids)
    await sub.unsubscribe()
    counter.wait(10)
    elapsed = state["last"] - started if state["count"] else float("nan")
    return {
        "path": path,
        "published": n,
        "counted": state["count"],
        "missing": n - state["count"],
        "publish_s": published - started,
        "elapsed_s": elapsed,
        "rate": state["count"] / elapsed if state["count"] else 0.0,
        "evaluator_cpu_s": cpu["evaluator"],
        "cpu_s": cpu,
    }


async def warm_up(bus: Bus, servers: list[str], n: int) -> None:
    """Send ``n`` samples through the evaluator and wait for their reports."""
    got = 0
    done = asyncio.Event()

    async def on_report(msg: Any) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sub = await bus.nc.subscribe(bus.subjects.health("*"), cb=on_report)
    await bus.nc.flush()
    for i in range(n):
        sid = servers[i % len(servers)]
        await bus.publish(bus.subjects.metrics(sid), sample(sid, i))
    await asyncio.wait_for(done.wait(), 60)
    await sub.unsubscribe()


def evaluator_stats(log: str) -> dict[str, Any]:
    """The evaluator's bus counters (from its shutdown line) and its slow-consumer errors."""
    stats: dict[str, Any] = {}
    slow = 0
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        text = str(entry.get("msg", ""))
        if "slow consumer" in text.lower() or "SlowConsumer" in text:
            slow += 1
        if text.startswith("evaluator stopped: "):
            stats = ast.literal_eval(text.removeprefix("evaluator stopped: "))
    return {"bus": stats, "slow_consumer_errors": slow}


async def measure(params: dict[str, int], workdir: Path) -> dict[str, Any]:
    with EmbeddedNats(workdir / "nats") as nats, ExitStack() as procs:
        config, path = build_config(workdir / "farm", nats.url, params["servers"])
        servers = [s.id for s in config.servers]
        log = workdir / "evaluator.log"
        argv = [sys.executable, "-m", "services.launch.cli", "run", "evaluator", "-c", str(path)]
        evaluator = start(procs, argv, log)
        await wait_started("evaluator", evaluator, log)
        assert nats.proc is not None
        server_pid = nats.proc.pid
        rounds: list[dict[str, Any]] = []
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(
                config.bus, Keyring.from_config(config), name="bench", stack=stack
            )
            await warm_up(bus, servers, params["warmup"])
            seq = params["warmup"]
            for i in range(params["rounds"]):
                order = PATHS if i % 2 == 0 else tuple(reversed(PATHS))
                for name in order:
                    rounds.append(
                        await round_(
                            bus,
                            nats.url,
                            procs,
                            workdir,
                            name,
                            params["samples"],
                            servers,
                            seq,
                            {"evaluator": evaluator.pid, "nats-server": server_pid},
                        )
                    )
                    seq += params["samples"]
        evaluator.terminate()
        evaluator.wait(15)
        return {"rounds": rounds, "evaluator": evaluator_stats(read(log))}


def _per_process(
    rounds: list[dict[str, Any]], value: Callable[[dict[str, Any], str], float]
) -> dict[str, float]:
    """The median over ``rounds`` of ``value(round, process)``, for each process measured."""
    if not rounds:
        return {}
    return {proc: statistics.median(value(r, proc) for r in rounds) for proc in rounds[0]["cpu_s"]}


def results(params: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    rounds = measured["rounds"]
    summary: dict[str, Any] = {}
    for name in PATHS:
        mine = [r for r in rounds if r["path"] == name]
        summary[name] = {
            "rate_median": statistics.median(r["rate"] for r in mine),
            "rate_min": min(r["rate"] for r in mine),
            "rate_max": max(r["rate"] for r in mine),
            "missing": sum(r["missing"] for r in mine),
        }
    ratio = summary["evaluator"]["rate_median"] / summary["bare"]["rate_median"]
    summary["ratio"] = ratio
    # the evaluator's own CPU per sample it reported (its process, user and system time)
    summary["evaluator_cpu_us_per_sample"] = statistics.median(
        r["evaluator_cpu_s"] / r["counted"] * 1e6
        for r in rounds
        if r["path"] == "evaluator" and r["counted"]
    )
    # Per path and process: how busy it kept a core over the round (CPU seconds over the
    # round's seconds), and its CPU per message counted. Their sum over the processes is
    # the cores' ceiling on the path's rate, had each process the share of a core it needed.
    cores = os.cpu_count() or 1
    for name in PATHS:
        mine = [r for r in rounds if r["path"] == name and r["counted"] and r["elapsed_s"] > 0]
        busy = _per_process(mine, lambda r, proc: r["cpu_s"][proc] / r["elapsed_s"])
        per = _per_process(mine, lambda r, proc: r["cpu_s"][proc] / r["counted"] * 1e6)
        summary[name]["cores_busy"] = busy
        summary[name]["cpu_us_per_message"] = per
        total = sum(per.values())
        summary[name]["ceiling_rate"] = cores / total * 1e6 if total else 0.0
    summary["cores"] = cores
    bare = summary["bare"]["rate_median"]
    summary["ceiling_ratio"] = summary["evaluator"]["ceiling_rate"] / bare if bare else 0.0
    summary["evaluator_bus"] = measured["evaluator"]["bus"]
    summary["slow_consumer_errors"] = measured["evaluator"]["slow_consumer_errors"]
    return {
        "parameters": {
            **params,
            "baseline": "a plain nats-py subscriber counting the same signed messages",
            "replay_window_s": 300.0,
        },
        "samples": rounds,
        "summary": summary,
        "goals": [
            {
                "name": "evaluator samples/s vs bare subscriber",
                "target": f">= {GOAL_RATIO}x",
                "value": ratio,
                "met": ratio >= GOAL_RATIO,
            }
        ],
    }


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "count":
        url, subject, expected, report = sys.argv[2:]
        asyncio.run(count_main(url, subject, int(expected), report))
        return 0
    args = common.arguments(__doc__.splitlines()[0])
    params = dict(QUICK if args.quick else FULL)
    with tempfile.TemporaryDirectory(prefix="aaa-bench-throughput-") as tmp:
        measured = asyncio.run(measure(params, Path(tmp)))
    res = results({**params, "quick": args.quick}, measured)
    path = common.write(args.out, NAME, res)
    s = res["summary"]
    print(
        common.table(
            f"throughput: {params['samples']} signed samples per round, {params['rounds']} rounds",
            ["", "msgs/s median", "min", "max", "missing"],
            [
                [name, *(s[name][k] for k in ("rate_median", "rate_min", "rate_max", "missing"))]
                for name in PATHS
            ],
        )
    )
    bus = s["evaluator_bus"]
    print(
        f"evaluator/bare x{s['ratio']:.2f}; evaluator received {bus.get('received', '?')}, "
        f"dropped {bus.get('dropped', '?')}, slow-consumer errors {s['slow_consumer_errors']}; "
        f"evaluator CPU {s['evaluator_cpu_us_per_sample']:.1f} us per sample"
    )
    for name in PATHS:
        busy = ", ".join(f"{proc} {v:.2f}" for proc, v in s[name]["cores_busy"].items())
        per = s[name]["cpu_us_per_message"]
        each = ", ".join(f"{proc} {v:.1f}" for proc, v in per.items())
        print(f"{name} rounds: cores busy {busy} ({sum(s[name]['cores_busy'].values()):.2f})")
        print(
            f"  CPU us per message {each} ({sum(per.values()):.1f}): at most "
            f"{s[name]['ceiling_rate']:,.0f}/s on {s['cores']} cores"
        )
    print(f"ceiling of the evaluator path against the bare rate: x{s['ceiling_ratio']:.2f}")
    for goal in res["goals"]:
        print(common.goal_line(goal))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
