"""The collector: every interval, one MetricsSample per server on the bus.

Each server is read concurrently: a FreeRADIUS Status-Server probe (bounded
by ``collector.status_timeout_s``) and its process's figures with psutil (in
a thread, so the loop never blocks). A server that does not answer gives a
sample with ``status_ok=False`` and the reason in ``errors``, never zeros.
The sequence number of each server's samples is kept in the KV bucket
``collector`` (stored before each publish), so it keeps growing across
restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from schemas.events import MetricsSample
from services.collector.process import ProcessReading, ProcessWatch
from services.collector.sample import StatusReading, make_sample, status_failure, status_reading
from services.runtime import radius
from services.runtime.config import Config, ConfigError, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.radius import query_status

logger = logging.getLogger(__name__)

SEQ_KEY = "seq.{server}"


class ServerProbe:
    """How the collector reads one server, and the last sequence number it used."""

    def __init__(
        self,
        server: ServerConfig,
        status_secret: bytes,
        watch: ProcessWatch,
        *,
        timeout_s: float,
        source: str = "collector",
    ) -> None:
        self.server = server
        self.status_secret = status_secret
        self.watch = watch
        self.timeout_s = timeout_s
        self.source = source
        self.seq = 0
        self.failures = 0

    @property
    def id(self) -> str:
        return self.server.id

    async def status(self) -> StatusReading:
        """Probe the server with Status-Server; never raises."""
        target = (self.server.ip, self.server.probe_port)
        try:
            values = await query_status(target, self.status_secret, timeout_s=self.timeout_s)
        except radius.RadiusTimeout:
            return status_failure(
                f"status: no answer from {target[0]}:{target[1]} in {self.timeout_s:g}s"
            )
        except OSError as exc:
            return status_failure(f"status: {target[0]}:{target[1]}: {exc}")
        except Exception as exc:
            logger.exception("status probe of %s failed", self.id)
            return status_failure(f"status: {type(exc).__name__}: {exc}")
        return status_reading(values, self.server.threads_max)

    async def process(self) -> ProcessReading:
        """Read the process figures in a thread; never raises."""
        try:
            return await asyncio.to_thread(self.watch.sample)
        except Exception as exc:
            logger.exception("process reading of %s failed", self.id)
            return ProcessReading(errors=[f"process: {type(exc).__name__}: {exc}"])

    async def read(self, seq: int) -> MetricsSample:
        """The sample numbered ``seq``, from both readings made at once."""
        status, process = await asyncio.gather(self.status(), self.process())
        return make_sample(self.id, seq, status, process, source=self.source)


def select_servers(config: Config, only: Sequence[str] | None) -> list[ServerConfig]:
    """The servers to read: all, or those named in ``only``; raise ConfigError."""
    if not only:
        return list(config.servers)
    unknown = sorted(set(only) - {s.id for s in config.servers})
    if unknown:
        raise ConfigError(f"collector: unknown servers {unknown}")
    return [s for s in config.servers if s.id in only]


async def load_seq(kv: KeyValue, server: str) -> int:
    """The last sequence number stored for ``server`` (0 if none)."""
    try:
        entry = await kv.get(SEQ_KEY.format(server=server))
    except nats.js.errors.KeyNotFoundError:
        return 0
    try:
        return msgspec.json.decode(entry.value or b"0", type=int)
    except msgspec.DecodeError:
        logger.warning("collector: bad stored seq for %s, starting from 0", server)
        return 0


async def collect_one(rt: Runtime, probe: ServerProbe, kv: KeyValue) -> None:
    """Read one server and publish its sample; failures are logged and counted."""
    seq = probe.seq + 1
    try:
        sample = await probe.read(seq)
        try:
            await kv.put(SEQ_KEY.format(server=probe.id), msgspec.json.encode(seq))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("collector: cannot store seq of %s: %s", probe.id, exc)
        probe.seq = seq
        await rt.bus.publish(rt.bus.subjects.metrics(probe.id), sample)
    except Exception:
        probe.failures += 1
        logger.exception("collector: sample of %s not published", probe.id)


async def collect(rt: Runtime, probes: list[ServerProbe], kv: KeyValue) -> None:
    """Every ``collector.interval_s``, read and publish all servers at once."""
    interval = rt.config.collector.interval_s
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        await asyncio.gather(*(collect_one(rt, probe, kv) for probe in probes))
        next_at += interval
        now = loop.time()
        if next_at < now:
            next_at = now
        if not await rt.sleep(next_at - now):
            return


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Collect metrics of every server of ``config`` (or those in ``only``) until shutdown."""
    servers = select_servers(config, only)
    timeout_s = config.collector.status_timeout_s
    probes = [
        ServerProbe(
            server,
            config.read_secret(server.status_secret),
            ProcessWatch(server.process, config.path, prime_s=min(0.1, timeout_s)),
            timeout_s=timeout_s,
        )
        for server in servers
    ]

    async def setup(rt: Runtime) -> None:
        kv = await rt.bus.kv("collector")
        for probe in probes:
            probe.seq = await load_seq(kv, probe.id)
            probe.source = rt.name
        rt.spawn(collect(rt, probes, kv), "collect")

    await run_service(
        "collector", config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url
    )
