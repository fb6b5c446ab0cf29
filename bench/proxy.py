"""Benchmark of the agent's RADIUS proxy beside its baseline: the same server, straight.

Starts an embedded nats-server, a reference server ``A`` (``python -m
services.aaa``) and the agent of one client with a ``proxy`` section
(``python -m services.agent``), each its own process. Then, in this process,
a pyrad-based asyncio load generator keeps ``concurrency`` Access-Requests
in flight, in batches interleaved in the same run (ABBA order):

- **direct**: from the client's own address under its secret, straight to A;
- **proxied**: as a NAS, under the NAS secret, to the agent's proxy, which
  re-encodes each request for A and each reply for the NAS.

For each batch it records requests per second and the latency of every
request; it writes ``proxy.json`` (machine, parameters, raw samples,
summary) to ``bench/results/`` or ``--out DIR`` and prints a table with the
ratios proxied/direct. It measures; it asserts nothing about the timings.

Run: ``.venv/bin/python bench/proxy.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from services.launch.farm import farm_dict, free_udp_port, write_config  # noqa: E402
from services.radius.client import RadiusClient, RadiusTimeout, query_status  # noqa: E402
from services.radius.packet import ACCESS_ACCEPT, access_request  # noqa: E402
from services.runtime.config import Config, load_config  # noqa: E402
from services.runtime.natsserver import EmbeddedNats  # noqa: E402

logger = logging.getLogger(__name__)

FULL = {"rounds": 10, "requests": 3000, "concurrency": 32, "warmup": 500}
QUICK = {"rounds": 2, "requests": 200, "concurrency": 16, "warmup": 50}
SERVICE_TIME_MS = 0.0
"""The reference server's service time: none, so the proxy's own cost shows in full."""
WORKERS = 8
PROXY_IP = "127.0.2.1"
NAS_IP = "127.0.3.1"
NAS_SECRET = "bench-nas-secret"
REQUEST_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 20.0
PATHS = ("direct", "proxied")


@dataclass(frozen=True)
class Target:
    """Where one path's requests go, from where, under which secret."""

    name: str
    address: tuple[str, int]
    secret: bytes
    bind_ip: str


@dataclass
class Batch:
    """One batch of requests on one path: its rate and every latency."""

    path: str
    elapsed_s: float
    accepted: int = 0
    other: int = 0
    lost: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return (self.accepted + self.other) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
    return ordered[rank]


async def batch(target: Target, requests: int, concurrency: int) -> Batch:
    """Send ``requests`` Access-Requests to ``target``, ``concurrency`` in flight."""
    client = await RadiusClient.open(target.address, target.secret, bind_ip=target.bind_ip)
    result = Batch(target.name, 0.0)
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            pkt = access_request(target.secret, "alice", "wonderland")
            started = time.perf_counter()
            try:
                reply = await client.send(pkt, timeout_s=REQUEST_TIMEOUT_S)
            except RadiusTimeout:
                result.lost += 1
                continue
            result.latencies_s.append(time.perf_counter() - started)
            if reply.code == ACCESS_ACCEPT:
                result.accepted += 1
            else:
                result.other += 1

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
    finally:
        client.close()
    result.elapsed_s = time.perf_counter() - started
    return result


def build_config(directory: Path, bus_url: str) -> tuple[Config, Path]:
    """A farm of one reference server and one client running the proxy; the config file."""
    data = farm_dict(
        directory,
        bus_url=bus_url,
        prefix="bench",
        servers=("A",),
        clients=1,
        client_rate=0.0,
        workers=WORKERS,
        service_time_ms=SERVICE_TIME_MS,
    )
    (directory / "secrets" / "nas").write_text(NAS_SECRET + "\n")
    data["clients"][0]["proxy"] = {
        "ip": PROXY_IP,
        "auth_port": free_udp_port(PROXY_IP),
        "nas_secret": {"file": "secrets/nas"},
    }
    path = write_config(directory, data)
    return load_config(path), path


def service(name: str, config_path: Path, log_dir: Path) -> Any:
    """``python -m services.<name> -c CONFIG`` running until the block ends (then SIGTERM)."""
    return common.process(
        [sys.executable, "-m", f"services.{name}", "-c", str(config_path)],
        log_dir / f"{name}.log",
    )


async def wait_answering(
    address: tuple[str, int], secret: bytes, proc: subprocess.Popen[bytes], what: str
) -> None:
    """Wait until ``address`` answers a Status-Server under ``secret``; fail if ``proc`` ends."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            await query_status(address, secret, timeout_s=0.2)
            return
        except (RadiusTimeout, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer in {READY_TIMEOUT_S}s")
        await asyncio.sleep(0.05)


async def measure(config: Config, params: dict[str, int]) -> dict[str, list[Batch]]:
    """Warm both paths up, then run the interleaved batches."""
    server = config.server("A")
    client = config.clients[0]
    assert client.proxy is not None
    targets = {
        "direct": Target(
            "direct",
            (server.ip, server.auth_port),
            config.read_secret(client.secret),
            client.ip,
        ),
        "proxied": Target(
            "proxied",
            (client.proxy.ip, client.proxy.auth_port),
            NAS_SECRET.encode(),
            NAS_IP,
        ),
    }
    for target in targets.values():
        await batch(target, params["warmup"], params["concurrency"])
    batches: dict[str, list[Batch]] = {name: [] for name in PATHS}
    for i in range(params["rounds"]):
        order = PATHS if i % 2 == 0 else tuple(reversed(PATHS))
        for name in order:
            batches[name].append(
                await batch(targets[name], params["requests"], params["concurrency"])
            )
    return batches


async def run_bench(params: dict[str, int], workdir: Path) -> dict[str, Any]:
    """Start the bus, the server and the agent, measure, stop them; the results."""
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    try:
        config, path = build_config(workdir / "farm", nats.url)
        server = config.server("A")
        client = config.clients[0]
        assert client.proxy is not None
        with service("aaa", path, workdir) as aaa_proc:
            await wait_answering(
                (server.ip, server.auth_port),
                config.read_secret(server.status_secret),
                aaa_proc,
                "the reference server",
            )
            with service("agent", path, workdir) as agent_proc:
                await wait_answering(
                    (client.proxy.ip, client.proxy.auth_port),
                    NAS_SECRET.encode(),
                    agent_proc,
                    "the agent's proxy",
                )
                batches = await measure(config, params)
    finally:
        nats.stop()
    return results(params, batches)


def _path_summary(batches: list[Batch]) -> dict[str, float | int]:
    latencies = [lat for b in batches for lat in b.latencies_s]
    return {
        "rps_median": statistics.median(b.rps for b in batches),
        "rps_min": min(b.rps for b in batches),
        "rps_max": max(b.rps for b in batches),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "accepted": sum(b.accepted for b in batches),
        "other": sum(b.other for b in batches),
        "lost": sum(b.lost for b in batches),
    }


def results(params: dict[str, int], batches: dict[str, list[Batch]]) -> dict[str, Any]:
    direct = _path_summary(batches["direct"])
    proxied = _path_summary(batches["proxied"])
    return {
        "benchmark": "proxy",
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "parameters": {
            **params,
            "service_time_ms": SERVICE_TIME_MS,
            "workers": WORKERS,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "baseline": "Access-Requests straight to the same reference server",
        },
        "samples": {
            name: [
                {
                    "rps": b.rps,
                    "elapsed_s": b.elapsed_s,
                    "accepted": b.accepted,
                    "other": b.other,
                    "lost": b.lost,
                    "p50_ms": percentile(b.latencies_s, 0.5) * 1e3,
                    "p99_ms": percentile(b.latencies_s, 0.99) * 1e3,
                }
                for b in batches[name]
            ]
            for name in PATHS
        },
        "summary": {
            "direct": direct,
            "proxied": proxied,
            "ratio_rps": proxied["rps_median"] / direct["rps_median"],
            "ratio_p50": proxied["p50_ms"] / direct["p50_ms"],
            "ratio_p99": proxied["p99_ms"] / direct["p99_ms"],
        },
    }


def table(res: dict[str, Any]) -> str:
    """The summary as a small text table."""
    p = res["parameters"]
    s = res["summary"]
    lines = [
        f"proxy: {p['rounds']} rounds of {p['requests']} Access-Requests per path, "
        f"{p['concurrency']} in flight; server service time {p['service_time_ms']:g} ms",
        f"{'':9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'lost':>6}",
    ]
    for name in PATHS:
        row = s[name]
        lines.append(
            f"{name:9}{row['rps_median']:10.0f}{row['p50_ms']:9.2f}{row['p99_ms']:9.2f}"
            f"{row['lost']:6d}"
        )
    lines.append(
        f"proxied/direct: throughput x{s['ratio_rps']:.2f}, "
        f"p50 x{s['ratio_p50']:.2f}, p99 x{s['ratio_p99']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``proxy.json`` and print the table."""
    args = common.arguments((__doc__ or "").splitlines()[0], argv, quick="2 rounds of 200 requests")
    params = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="aaa-bench-proxy-") as tmp:
        res = asyncio.run(run_bench(params, Path(tmp)))
    res["parameters"]["quick"] = args.quick
    path = common.write(args.out, "proxy", res)
    print(table(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
