"""Cost of watching: the collector's CPU time per sample, as a share of one core.

A reference server and the collector run as their own processes on an
embedded nats-server; the collector reads the server once a second
(Status-Server round trip plus psutil). The collector process's CPU time over
the measured window, from psutil, is divided by the samples it published.
Baseline in the same run: the same collector with no server to read (its
loop, the bus and the process itself), so the difference is what reading one
server costs. Goal: under 1 % of one core at 1 Hz.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from schemas.events import MetricsSample
from services.launch.farm import write_farm
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from services.runtime.natsserver import EmbeddedNats

FULL = {"window_s": 60.0, "interval_s": 1.0}
QUICK = {"window_s": 6.0, "interval_s": 1.0}


def _start(stack: ExitStack, service: str, path: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "services.launch.cli", "run", service, "-c", str(path), *extra]
    return stack.enter_context(common.process(argv, path.parent / f"{service}.log"))


async def _count_samples(config: Config, seconds: float, server: str) -> tuple[int, float]:
    """Samples of ``server`` published during ``seconds``, and the exact window measured."""
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="bench", stack=stack)
        count = 0

        async def on_sample(event: MetricsSample) -> None:
            nonlocal count
            count += 1

        await bus.subscribe(bus.subjects.metrics(server), on_sample, types=(MetricsSample,))
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return count, time.monotonic() - start


def measure(config: Config, path: Path, window_s: float, *, with_server: bool) -> dict[str, Any]:
    with ExitStack() as stack:
        if with_server:
            _start(stack, "aaa", path, "--only", "A")
        collector = _start(stack, "collector", path, *(["--only", "A"] if with_server else []))
        time.sleep(3.0)  # start-up is not what is measured
        proc = psutil.Process(collector.pid)
        before = proc.cpu_times()
        samples, elapsed = asyncio.run(_count_samples(config, window_s, "A"))
        after = proc.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {
        "cpu_s": cpu,
        "window_s": elapsed,
        "samples": samples,
        "core_share": cpu / elapsed,
        "cpu_per_sample_ms": 1000 * cpu / samples if samples else None,
    }


def run(params: dict[str, float], workdir: Path) -> dict[str, Any]:
    with EmbeddedNats() as nats:
        settings = {"collector": {"interval_s": params["interval_s"], "status_timeout_s": 0.5}}
        config, path = write_farm(workdir, settings, bus_url=nats.url, servers=("A",), clients=0)
        watching = measure(config, path, params["window_s"], with_server=True)
        idle_config, idle_path = write_farm(
            workdir / "idle", {**settings, "servers": []}, bus_url=nats.url, servers=(), clients=0
        )
        idle = measure(idle_config, idle_path, params["window_s"], with_server=False)
    share = watching["core_share"]
    return {
        "parameters": params,
        "samples": {"watching": watching, "idle": idle},
        "summary": {
            "core_share": share,
            "idle_core_share": idle["core_share"],
            "reading_core_share": share - idle["core_share"],
            "cpu_per_sample_ms": watching["cpu_per_sample_ms"],
        },
        "goals": [
            {
                "name": "collector CPU at 1 Hz, one server",
                "target": "< 1% of one core",
                "value": share,
                "met": share < 0.01,
            }
        ],
    }


def main() -> int:
    args = common.arguments(__doc__.splitlines()[0])
    params = dict(QUICK if args.quick else FULL)
    with tempfile.TemporaryDirectory(prefix="aaa-bench-watching-") as tmp:
        results = run(params, Path(tmp))
    results["parameters"]["quick"] = args.quick
    path = common.write(args.out, "watching", results)
    s = results["summary"]
    print(
        common.table(
            "watching: the collector reading one reference server at 1 Hz",
            ["", "core share", "CPU ms/sample"],
            [
                ["collector", f"{100 * s['core_share']:.2f}%", s["cpu_per_sample_ms"]],
                ["idle collector", f"{100 * s['idle_core_share']:.2f}%", "-"],
            ],
        )
    )
    for goal in results["goals"]:
        print(common.goal_line(goal, f"{100 * goal['value']:.2f}%"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
