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

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from schemas.events import HealthReport, Incident, MetricsSample, ReadmitWave
from services.evaluator.health import score
from services.evaluator.incidents import (
    ServerState,
    Transition,
    close,
    decode_state,
    encode_state,
    step,
)
from services.runtime.config import Config, ConfigError, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service

logger = logging.getLogger(__name__)

NAME = "evaluator"


class Evaluator:
    """The evaluator's state and handlers, bound to one runtime."""

    def __init__(self, rt: Runtime, kv: KeyValue, servers: dict[str, ServerConfig]) -> None:
        self.rt = rt
        self.kv = kv
        self.servers = servers
        self.states: dict[str, ServerState] = {sid: ServerState(server=sid) for sid in servers}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read each server's machine state from KV; a bad value is logged and ignored."""
        for sid in self.servers:
            try:
                entry = await self.kv.get(sid)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value is None:
                continue
            try:
                state = decode_state(entry.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.rt.bus.counters.drop("bad-state")
                logger.warning("ignoring stored state of %s: %s", sid, exc)
                continue
            if state.server != sid:
                self.rt.bus.counters.drop("bad-state")
                logger.warning("ignoring stored state of %s: it names %s", sid, state.server)
                continue
            self.states[sid] = state
            if state.incident_id is not None:
                logger.info("%s resumes incident %s (%s)", sid, state.incident_id, state.phase)

    async def on_sample(self, sample: MetricsSample) -> None:
        server = self.servers.get(sample.server)
        if server is None:
            self.rt.bus.counters.drop("unknown-server")
            logger.warning("dropped sample of unknown server %r", sample.server)
            return
        cfg = self.rt.config.evaluator
        result = score(sample, server, cfg)
        async with self._lock:
            state, transition = step(self.states[server.id], result.health, time.time(), cfg)
            self.states[server.id] = state
            report = HealthReport(
                source=NAME,
                server=server.id,
                sample_id=sample.id,
                health=result.health,
                parts=dict(result.parts),
                limiting=result.limiting,
                failover_threshold=cfg.failover_threshold,
                connection_threshold=cfg.connection_threshold,
                incident_id=state.incident_id,
                state=state.phase,
            )
            await self.rt.bus.publish(self.rt.bus.subjects.health(server.id), report)
            if transition is not None:
                await self._transition(state, transition, result.reason)

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
            await self._transition(state, transition, f"readmission finished: {wave.reason}")

    async def _transition(self, state: ServerState, transition: Transition, reason: str) -> None:
        """Persist ``state``, then announce ``transition``."""
        try:
            await self.kv.put(state.server, encode_state(state))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.error("could not store state of %s: %s", state.server, exc)
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


def _servers(config: Config, only: list[str] | None) -> dict[str, ServerConfig]:
    servers = {s.id: s for s in config.servers}
    if not only:
        return servers
    unknown = sorted(set(only) - set(servers))
    if unknown:
        raise ConfigError(f"--only names unknown servers {unknown}")
    return {sid: servers[sid] for sid in only}


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
    servers = _servers(config, only)

    async def setup(rt: Runtime) -> None:
        evaluator = Evaluator(rt, await rt.bus.kv(NAME), servers)
        await evaluator.load()
        subjects = rt.bus.subjects
        for token in list(servers) if only else ["*"]:
            await rt.bus.subscribe(
                subjects.metrics(token), evaluator.on_sample, types=(MetricsSample,), queue=NAME
            )
            await rt.bus.subscribe(
                subjects.readmit(token), evaluator.on_wave, types=(ReadmitWave,), queue=NAME
            )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
