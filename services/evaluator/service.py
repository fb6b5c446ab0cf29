"""The evaluator service: scores every metrics sample and tracks overload incidents.

Each MetricsSample becomes a HealthReport on ``health.<server>``; each change
of a server's incident becomes an Incident on ``incident.<server>``. A final
ReadmitWave of a recovering incident closes it. Every server's machine state
is kept in the KV bucket ``evaluator`` (key: server id) on each transition
and loaded at start, so a restarted evaluator carries on the same incident.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Gauge, Histogram

from schemas.events import ClientStatus, Incident, MetricsSample, ReadmitWave
from services.evaluator.clients import ClientsView
from services.evaluator.health import score
from services.evaluator.incidents import ServerState, Transition, close, step
from services.evaluator.reports import health_report
from services.runtime.config import Config, ServerConfig, subject_tokens
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

NAME = "evaluator"

# The incident state gauge's value of each phase.
PHASE_VALUES = {"healthy": 0, "overloaded": 1, "recovering": 2}


class Evaluator:
    """The evaluator's state and handlers, bound to one runtime."""

    def __init__(
        self, rt: Runtime, store: StateStore[ServerState], servers: dict[str, ServerConfig]
    ) -> None:
        self.rt = rt
        self.store = store
        self.servers = servers
        self.states: dict[str, ServerState] = {sid: ServerState(server=sid) for sid in servers}
        cfg = rt.config.evaluator
        self.clients = ClientsView(
            cfg.clients_window_s, cfg.clients_tolerance, cfg.clients_min_requests, servers
        )
        self._lock = asyncio.Lock()
        registry = rt.metrics.registry
        self.health_gauge = Gauge(
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
        self.decision_latency = Histogram(
            "aaa_failover_decision_latency_seconds",
            "Time from a MetricsSample received to its HealthReport published.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for state in self.states.values():
            self._observe(state)

    def _observe(self, state: ServerState) -> None:
        self.state_gauge.labels(state.server).set(PHASE_VALUES[state.phase])

    async def load(self) -> None:
        """Read each server's machine state from KV; a bad value is logged and ignored."""
        for sid in self.servers:
            state = await self.store.get(sid)
            if state is None:
                continue
            if state.server != sid:
                self.store.bad(sid, f"it names {state.server}")
                continue
            self.states[sid] = state
            self._observe(state)
            if state.incident_id is not None:
                logger.info("%s resumes incident %s (%s)", sid, state.incident_id, state.phase)

    async def on_sample(self, sample: MetricsSample) -> None:
        received = time.perf_counter()
        server = self.servers.get(sample.server)
        if server is None:
            self.rt.bus.counters.drop("unknown-server")
            logger.warning("dropped sample of unknown server %r", sample.server)
            return
        cfg = self.rt.config.evaluator
        result = score(sample, server, cfg, self.clients.parts(server.id, time.monotonic()))
        async with self._lock:
            state, transition = step(self.states[server.id], result.health, time.time(), cfg)
            self.states[server.id] = state
            report = health_report(sample, result, state, cfg, source=NAME)
            await self.rt.bus.publish(self.rt.bus.subjects.health(server.id), report)
            self.decision_latency.observe(time.perf_counter() - received)
            self.health_gauge.labels(server.id).set(result.health)
            self._observe(state)
            if transition is not None:
                reason = result.reason
                if transition.predicted:
                    reason = f"{transition.reason}; {reason}"
                await self._transition(state, transition, reason)

    async def on_status(self, status: ClientStatus) -> None:
        """An agent's report: how its requests to each server fared."""
        self.clients.add(status, time.monotonic())

    async def on_wave(self, wave: ReadmitWave) -> None:
        if not wave.final:
            return
        if wave.server not in self.servers:
            self.rt.bus.counters.drop("unknown-server")
            logger.warning("dropped readmit wave of unknown server %r", wave.server)
            return
        async with self._lock:
            current = self.states[wave.server]
            health = wave.health if wave.health is not None else (current.health or 0.0)
            state, transition = close(current, wave.incident_id, health, time.time())
            if transition is None:
                logger.info(
                    "final wave of %s for %s ignored: state %s, incident %s",
                    wave.server,
                    wave.incident_id,
                    current.phase,
                    current.incident_id,
                )
                return
            self.states[wave.server] = state
            self._observe(state)
            await self._transition(state, transition, f"readmission finished: {wave.reason}")

    async def _transition(self, state: ServerState, transition: Transition, reason: str) -> None:
        """Persist ``state``, then announce ``transition``."""
        await self.store.put(state.server, state)
        incident = Incident(
            source=NAME,
            incident_id=transition.incident_id,
            server=state.server,
            state=transition.state,
            health=transition.health,
            reason=reason,
            opened_at=transition.opened_at,
            relapses=transition.relapses,
        )
        logger.info(
            "incident %s of %s %s (health %.3f, relapses %d): %s",
            transition.incident_id,
            state.server,
            transition.state,
            transition.health,
            transition.relapses,
            reason,
        )
        await self.rt.bus.publish(self.rt.bus.subjects.incident(state.server), incident)


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
        subjects = rt.bus.subjects
        for token in subject_tokens(only):
            await rt.bus.subscribe(
                subjects.metrics(token), evaluator.on_sample, types=(MetricsSample,), queue=NAME
            )
            await rt.bus.subscribe(
                subjects.readmit(token), evaluator.on_wave, types=(ReadmitWave,), queue=NAME
            )
        # every replica hears every client: any of them may score any server's sample
        await rt.bus.subscribe(
            subjects.status("*"), evaluator.on_status, types=(ClientStatus,), accept_clients=True
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
