"""The collector: every interval, one MetricsSample per server on the bus.

Each server is read concurrently: a FreeRADIUS Status-Server probe (bounded
by ``collector.status_timeout_s``), its process's figures with psutil (in
a thread, so the loop never blocks) and the checks of the services it needs
(each bounded by its own timeout). A server that does not answer gives a
sample with ``status_ok=False`` and the reason in ``errors``, never zeros.
What rates and busy-thread estimates need from the previous reading is kept
per server in memory (a restart starts them afresh); the sequence number of
each server's samples is kept in the KV bucket ``collector`` (stored before
each publish), so it keeps growing across restarts. A server's
``radiusd_conf`` is read once, at start.
"""

from __future__ import annotations

import asyncio
import logging
import time

from schemas.events import MetricsSample, ServiceCheck
from services.collector.checks import run_checks
from services.collector.latency import Prober
from services.collector.process import ProcessReading, ProcessWatch
from services.collector.radiusd import RadiusdConfError, cleanup_delay
from services.collector.sample import (
    Limit,
    SampleBuilder,
    StatusReading,
    status_failure,
    status_reading,
    threads_limit,
)
from services.radius import client as radius
from services.radius.client import query_status
from services.runtime.config import Config, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

SEQ_KEY = "seq.{server}"


FREERADIUS_CLEANUP_DELAY_S = 5.0
"""FreeRADIUS's ``cleanup_delay`` when radiusd.conf sets none."""


def _radiusd_text(server: ServerConfig, config: Config) -> tuple[str | None, str | None]:
    """The server's radiusd.conf text, or None and why not."""
    if server.radiusd_conf is None:
        return None, None
    try:
        return config.path(server.radiusd_conf).read_text(errors="replace"), None
    except OSError as exc:
        return None, exc.strerror or str(exc)


def read_limit(server: ServerConfig, config: Config) -> Limit:
    """The server's ``threads_max`` fallback, reading its radiusd.conf if it needs to."""
    if server.threads_max is not None or server.radiusd_conf is None:
        return threads_limit(server.threads_max, server.radiusd_conf)
    path = config.path(server.radiusd_conf)
    text, error = _radiusd_text(server, config)
    limit = threads_limit(None, str(path), text, error)
    if limit.error is not None:
        logger.warning("collector: server %s: %s", server.id, limit.error)
    return limit


def read_cleanup_delay(server: ServerConfig, config: Config) -> float:
    """How long the server waits before counting a response (see ServerConfig)."""
    if server.cleanup_delay_s is not None:
        return server.cleanup_delay_s
    if server.reference is not None:
        return 0.0
    text, _ = _radiusd_text(server, config)
    if text is not None:
        try:
            found = cleanup_delay(text)
        except RadiusdConfError as exc:
            logger.warning("collector: server %s: %s", server.id, exc)
        else:
            if found is not None:
                return found
    return FREERADIUS_CLEANUP_DELAY_S


def make_prober(server: ServerConfig, config: Config) -> Prober | None:
    """The server's latency prober, if it has a ``probe`` section; ConfigError on a bad secret."""
    if server.probe is None:
        return None
    return Prober(
        (server.ip, server.auth_port),
        server.probe,
        config.read_secret(server.probe.secret),
        [config.read_secret(u.password).decode() for u in server.probe.users],
        interval_s=config.collector.interval_s,
    )


class ServerProbe:
    """How the collector reads one server: its probes, its sample builder, its last seq."""

    def __init__(
        self,
        server: ServerConfig,
        status_secret: bytes,
        watch: ProcessWatch,
        *,
        timeout_s: float,
        limit: Limit | None = None,
        config: Config,
        source: str = "collector",
        cleanup_delay_s: float = 0.0,
        prober: Prober | None = None,
    ) -> None:
        self.server = server
        self.config = config
        self.status_secret = status_secret
        self.watch = watch
        self.timeout_s = timeout_s
        self.builder = SampleBuilder(server.id, limit, cleanup_delay_s=cleanup_delay_s)
        self.prober = prober
        self.source = source
        self.seq = 0
        self.failures = 0
        self.status_probes = 0

    @property
    def id(self) -> str:
        return self.server.id

    async def status(self) -> StatusReading:
        """Probe the server with Status-Server; never raises."""
        target = (self.server.ip, self.server.probe_port)
        self.status_probes += 1
        try:
            values = await query_status(target, self.status_secret, timeout_s=self.timeout_s)
        except radius.RadiusTimeout:
            return status_failure(
                f"status: no answer from {target[0]}:{target[1]} "
                f"within the {self.timeout_s:g}s timeout"
            )
        except OSError as exc:
            return status_failure(f"status: {target[0]}:{target[1]}: {exc}")
        except Exception as exc:
            logger.exception("status probe of %s failed", self.id)
            return status_failure(f"status: {type(exc).__name__}: {exc}")
        return status_reading(values, time.monotonic())

    async def process(self) -> ProcessReading:
        """Read the process figures in a thread; never raises."""
        try:
            return await asyncio.to_thread(self.watch.sample)
        except Exception as exc:
            logger.exception("process reading of %s failed", self.id)
            return ProcessReading(errors=[f"process: {type(exc).__name__}: {exc}"])

    async def checks(self) -> list[ServiceCheck]:
        """The outcome of every service check of the server, run at once."""
        return await run_checks(self.server.services, self.config)

    async def read(self, seq: int) -> MetricsSample:
        """The sample numbered ``seq``, from every reading made at once."""
        status, process, services = await asyncio.gather(
            self.status(), self.process(), self.checks()
        )
        return self.builder.build(
            seq,
            status,
            process,
            services=services,
            source=self.source,
            latency=self.prober.summary() if self.prober is not None else None,
            status_probes=self.status_probes,
        )


async def collect_one(rt: Runtime, probe: ServerProbe, seqs: StateStore[int]) -> None:
    """Read one server and publish its sample; failures are logged and counted."""
    seq = probe.seq + 1
    try:
        sample = await probe.read(seq)
        await seqs.put(SEQ_KEY.format(server=probe.id), seq)
        probe.seq = seq
        await rt.bus.publish(rt.bus.subjects.metrics(probe.id), sample)
    except Exception:
        probe.failures += 1
        logger.exception("collector: sample of %s not published", probe.id)


async def collect(rt: Runtime, probes: list[ServerProbe], seqs: StateStore[int]) -> None:
    """Every ``collector.interval_s``, read and publish all servers at once."""
    interval = rt.config.collector.interval_s
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        await asyncio.gather(*(collect_one(rt, probe, seqs) for probe in probes))
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
    servers = config.select_servers(only)
    timeout_s = config.collector.status_timeout_s
    probes = [
        ServerProbe(
            server,
            config.read_secret(server.status_secret),
            ProcessWatch(server.process, config.path, prime_s=min(0.1, timeout_s), label=server.id),
            timeout_s=timeout_s,
            limit=read_limit(server, config),
            config=config,
            cleanup_delay_s=read_cleanup_delay(server, config),
            prober=make_prober(server, config),
        )
        for server in servers
    ]

    async def setup(rt: Runtime) -> None:
        seqs = await StateStore.open(rt.bus, "collector", int)
        for probe in probes:
            probe.seq = await seqs.get(SEQ_KEY.format(server=probe.id)) or 0
            probe.source = rt.name
            if probe.prober is not None:
                rt.spawn(probe.prober.run(rt.stopping), f"probe {probe.id}")
        rt.spawn(collect(rt, probes, seqs), "collect")

    await run_service(
        "collector", config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url, only=only
    )
