"""The evaluator service: scores every metrics sample and tracks overload incidents.

The decisions are :class:`~services.evaluator.core.EvaluatorCore`'s; this
module wires it to the bus (samples and waves of servers it does not know
are dropped by guards) and to KV.

Each MetricsSample becomes a HealthReport on ``health.<server>``; each change
of a server's incident becomes an Incident on ``incident.<server>``. A final
ReadmitWave of a recovering incident closes it. Every server's machine state
is kept in the KV bucket ``evaluator`` (key: server id) on each transition
and loaded at start, so a restarted evaluator carries on the same incident.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace

import msgspec
from prometheus_client import Gauge

from schemas.events import ClientStatus, HealthReport, Incident, MetricsSample, ReadmitWave
from services.evaluator.core import EvaluatorCore
from services.evaluator.incidents import ServerState, resume
from services.runtime.config import Config, ServerConfig, subject_tokens
from services.runtime.durable import consume, last_stored, publish_stored
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.metrics import LATENCY_BUCKETS, LoopGauge, LoopHistogram
from services.runtime.middleware import known_server, taking
from services.runtime.permissions import durable_name
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

NAME = "evaluator"

# The incident state gauge's value of each phase.
PHASE_VALUES = {"healthy": 0, "overloaded": 1, "recovering": 2}


class ReportIds:
    """Ids for the reports, as :func:`~schemas.events.new_id` makes them (32 lowercase hex
    digits, 128 bits from the OS's random source), read 256 at a time rather than one
    ``os.urandom`` call (a system call) per report."""

    BATCH = 256

    def __init__(self) -> None:
        self._ids: list[str] = []

    def __call__(self, sample: MetricsSample) -> str:
        ids = self._ids
        if not ids:
            digits = os.urandom(16 * self.BATCH).hex()
            ids.extend(digits[i : i + 32] for i in range(0, len(digits), 32))
        return ids.pop()


class Evaluator:
    """The evaluator's state and handlers, bound to one runtime; decisions are the core's."""

    def __init__(
        self, rt: Runtime, store: StateStore[ServerState], servers: dict[str, ServerConfig]
    ) -> None:
        self.rt = rt
        self.store = store
        self.servers = servers
        self.core = EvaluatorCore(rt.config.evaluator, servers, source=NAME, report_id=ReportIds())
        self.state = self.core.initial()
        self._lock = asyncio.Lock()
        self.unsent: dict[str, tuple[Incident, ...]] = {}
        registry = rt.metrics.registry
        self.health_gauge = LoopGauge(
            "aaa_failover_health",
            "Latest health of each server, 0 to 1.",
            ["server"],
            registry=registry,
        )
        self.state_gauge = Gauge(
            "aaa_failover_incident_state",
            "Each server's incident state: 0 healthy, 1 overloaded, 2 recovering.",
            ["server"],
            registry=registry,
        )
        self.decision_latency = LoopHistogram(
            "aaa_failover_decision_latency_seconds",
            "Time from a MetricsSample received to its HealthReport published.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # each server's gauges, found once: labels() takes a lock and builds a key per call
        self._health_of = {sid: self.health_gauge.labels(sid) for sid in servers}
        self._phase_of = {sid: self.state_gauge.labels(sid) for sid in servers}
        self._report_subject = {sid: rt.bus.subjects.health(sid) for sid in servers}
        for state in self.state.servers.values():
            self._observe(state)

    @property
    def states(self) -> Mapping[str, ServerState]:
        """Each server's machine state."""
        return self.state.servers

    def _observe(self, state: ServerState) -> None:
        self._phase_of[state.server].set(PHASE_VALUES[state.phase])

    async def load(self) -> None:
        """Read each server's machine state from KV, and bring it up to the last change of
        its incident the stream holds (published, not yet stored, when the evaluator
        stopped); a bad value is logged and ignored."""
        machines = dict(self.state.servers)
        for sid in self.servers:
            state = await self.store.get(sid)
            if state is None:
                continue
            if state.server != sid:
                self.store.bad(sid, f"it names {state.server}")
                continue
            if state.outbox:
                self.unsent[sid] = state.outbox
                state = msgspec.structs.replace(state, outbox=())
            machines[sid] = state
        subjects = self.rt.bus.subjects
        lasts = await asyncio.gather(
            *(last_stored(self.rt.bus, subjects.incident(sid), (Incident,)) for sid in self.servers)
        )
        for sid, last in zip(self.servers, lasts, strict=True):
            state = machines[sid]
            if last is not None and (caught_up := resume(state, last)) is not state:
                logger.info(
                    "%s: incident %s %s on the stream, not in the stored state: taken up",
                    sid,
                    last.incident_id,
                    last.state,
                )
                machines[sid] = state = caught_up
                await self.store.put(sid, state)
            self._observe(state)
            if state.incident_id is not None:
                logger.info("%s resumes incident %s (%s)", sid, state.incident_id, state.phase)
        self.state = replace(self.state, servers=machines)

    async def on_sample(self, sample: MetricsSample) -> None:
        received = time.perf_counter()
        sid = sample.server
        async with self._lock:
            phase = self.states[sid].phase
            self.state, events = self.core.handle(self.state, sample, time.time())
            report, *incidents = events
            assert isinstance(report, HealthReport)
            await self.rt.bus.publish(self._report_subject[sid], report)
            self.decision_latency.observe(time.perf_counter() - received)
            self._health_of[sid].set(report.health)
            if report.state != phase:  # the gauge already says an unchanged phase
                self._observe(self.states[sid])
            for incident in incidents:
                assert isinstance(incident, Incident)
                await self._announce(incident)

    async def on_status(self, status: ClientStatus) -> None:
        """An agent's report: how its requests to each server fared."""
        self.state, _ = self.core.handle(self.state, status, time.time())

    async def on_wave(self, wave: ReadmitWave) -> None:
        """A final wave (the only ones let through) closes its recovering incident."""
        async with self._lock:
            current = self.states[wave.server]
            self.state, events = self.core.handle(self.state, wave, time.time())
            if not events:
                logger.info(
                    "final wave of %s for %s ignored: state %s, incident %s",
                    wave.server,
                    wave.incident_id,
                    current.phase,
                    current.incident_id,
                )
                return
            self._observe(self.states[wave.server])
            for incident in events:
                assert isinstance(incident, Incident)
                await self._announce(incident)

    async def _announce(self, incident: Incident) -> None:
        """Publish ``incident`` until the stream has it, then write the server's machine
        state. The targeter takes the change from the stream as soon as it is stored, so
        no KV write stands before it; an evaluator that stops between the two finds the
        change on the stream at its next start (:meth:`load`). It is logged once stored,
        so the line is not on the way to the targeter."""
        await publish_stored(self.rt.bus, self.rt.bus.subjects.incident(incident.server), incident)
        logger.info(
            "incident %s of %s %s (health %.3f, relapses %d): %s",
            incident.incident_id,
            incident.server,
            incident.state,
            incident.health,
            incident.relapses,
            incident.reason,
        )
        await self.store.put(incident.server, self.states[incident.server])

    async def send_outboxes(self) -> None:
        """Publish the changes a previous life wrote out but may not have published."""
        unsent, self.unsent = self.unsent, {}
        for sid, incidents in unsent.items():
            for incident in incidents:
                logger.info(
                    "publishing incident %s of %s (%s), written before a restart",
                    incident.incident_id,
                    sid,
                    incident.state,
                )
                await publish_stored(self.rt.bus, self.rt.bus.subjects.incident(sid), incident)
            await self.store.put(sid, self.states[sid])


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the evaluator for every server of ``config``, or only the ``only`` ones.

    With ``only``, it subscribes to those servers' subjects alone, so replicas
    may split the farm between them.
    """
    servers = {s.id: s for s in config.select_servers(only)}

    async def setup(rt: Runtime) -> None:
        evaluator = Evaluator(rt, await StateStore.open(rt.bus, NAME, ServerState), servers)
        await evaluator.load()
        await evaluator.send_outboxes()
        subjects = rt.bus.subjects
        known = known_server(servers)
        for token in subject_tokens(only):
            # samples and clients' statuses in the order they come, as a recording replays
            # them (what-if decides from the recording as the evaluator did live)
            await rt.bus.subscribe(
                subjects.metrics(token),
                evaluator.on_sample,
                types=(MetricsSample,),
                queue=NAME,
                guards=[known],
            )
            await consume(
                rt.bus,
                subjects.readmit(token),
                evaluator.on_wave,
                types=(ReadmitWave,),
                durable=durable_name(NAME, "readmit", token),
                guards=[taking(lambda wave: wave.final), known],
            )
        # every replica hears every client: any of them may score any server's sample
        await rt.bus.subscribe(
            subjects.status("*"), evaluator.on_status, types=(ClientStatus,), accept_clients=True
        )

    await run_service(
        NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url, only=only
    )
