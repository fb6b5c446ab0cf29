"""The readmitter: brings moved clients back to their server in waves.

It follows each server's incidents (``incident.*``), the clients its failover
plans moved (``plan.*``) and its latest health (``health.*``). While an
incident is recovering, a wave loop per server publishes ``ReadmitWave`` on
``readmit.<server>`` every ``readmitter.wave_interval_s``, each only if the
latest health is at or above the connection threshold; the last one is
``final``. A client's own ``ReadmitRequest`` (signed with its own secret) is
answered at once with a wave 0 that grants or defers it. Each server's
:class:`~services.readmitter.waves.Readmission` is kept in the KV bucket
``readmitter``, so a restarted readmitter resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import msgspec
import nats.errors
import prometheus_client

from schemas.events import FailoverPlan, HealthReport, Incident, ReadmitRequest, ReadmitWave
from services.readmitter import waves
from services.readmitter.waves import Readmission
from services.runtime.config import Config, subject_tokens
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

NAME = "readmitter"
QUEUE = "readmitter"
BUCKET = "readmitter"


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The latest health of a server and the connection threshold it came with."""

    health: float
    connection_threshold: float


class Readmitter:
    """The readmitter's state and its handlers, wired to one Runtime."""

    def __init__(self, rt: Runtime, store: StateStore[Readmission], servers: set[str]) -> None:
        self.rt = rt
        self.store = store
        self.config: Config = rt.config
        self.servers = servers
        self.homes = {c.id: c.home for c in rt.config.clients}
        self.states: dict[str, Readmission] = {}
        self.health: dict[str, Health] = {}
        self.dropped: Counter[str] = Counter()
        self.waves_sent = 0
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {s: asyncio.Event() for s in servers}
        self._locks: dict[str, asyncio.Lock] = {s: asyncio.Lock() for s in servers}
        self._last_pause: dict[str, str] = {}
        registry = rt.metrics.registry
        self.readmitted_total = prometheus_client.Counter(
            "aaa_failover_clients_readmitted",
            "Clients sent back to their home server, by waves or granted requests.",
            ["server"],
            registry=registry,
        )
        self.waves_total = prometheus_client.Counter(
            "aaa_failover_readmit_waves", "Readmission waves published.", registry=registry
        )

    # --- state ----------------------------------------------------------

    async def load(self) -> None:
        """Read every server's Readmission from KV; resume the recovering ones."""
        for state in (await self.store.load_all()).values():
            if state.server not in self.servers:
                continue
            self.states[state.server] = state
            logger.info(
                "loaded %s: incident %s %s, %d away",
                state.server,
                state.incident_id,
                state.state,
                len(state.away),
            )
            self._ensure_loop(state.server)

    async def _persist(self, server: str) -> None:
        """Write the current state of ``server`` (the latest one, whoever asks)."""
        async with self._locks[server]:
            state = self.states.get(server)
            if state is None:
                return
            await self.store.put(server, state)

    def _set(self, server: str, state: Readmission | None) -> bool:
        """Store ``state``; wake the server's loop; True if it changed."""
        if state is None or state == self.states.get(server):
            return False
        self.states[server] = state
        self._wake[server].set()
        return True

    def _known_server(self, server: str, what: str) -> bool:
        if server in self.servers:
            return True
        self.dropped["unknown-server"] += 1
        logger.warning("dropped %s for unknown server %r", what, server)
        return False

    # --- handlers -------------------------------------------------------

    async def on_health(self, event: HealthReport) -> None:
        if not self._known_server(event.server, "health report"):
            return
        self.health[event.server] = Health(
            health=event.health, connection_threshold=event.connection_threshold
        )
        self._wake[event.server].set()

    async def on_incident(self, event: Incident) -> None:
        server = event.server
        if not self._known_server(server, "incident"):
            return
        state = waves.on_incident(
            self.states.get(server), server=server, incident_id=event.incident_id, state=event.state
        )
        logger.info("incident %s of %s is %s", event.incident_id, server, event.state)
        if self._set(server, state):
            await self._persist(server)
        self._ensure_loop(server)

    async def on_plan(self, event: FailoverPlan) -> None:
        server = event.server
        if not self._known_server(server, "plan"):
            return
        clients = []
        for move in event.moves:
            if move.client in self.homes:
                clients.append(move.client)
            else:
                self.dropped["unknown-client"] += 1
                logger.warning("plan %s moves unknown client %r", event.plan_id, move.client)
        state = waves.record_plan(
            self.states.get(server), server=server, incident_id=event.incident_id, clients=clients
        )
        if self._set(server, state):
            logger.info("plan %s: %d clients away from %s", event.plan_id, len(state.away), server)
            await self._persist(server)

    async def on_request(self, event: ReadmitRequest) -> None:
        server, client = event.server, event.client
        if not self._known_server(server, "readmit request"):
            return
        home = self.homes.get(client)
        if home is None:
            self.dropped["unknown-client"] += 1
            logger.warning("dropped readmit request of unknown client %r", client)
            return
        if home != server:
            self.dropped["not-home"] += 1
            logger.warning(
                "dropped readmit request of %s to %s: its home is %s", client, server, home
            )
            return
        current = self.states.get(server)
        health = self.health.get(server)
        answer, state = waves.answer_request(
            current,
            client=client,
            health=health.health if health else None,
            connection_threshold=self._threshold(server),
        )
        incident_id = current.incident_id if current is not None else ""
        if answer.granted:
            wave = ReadmitWave(
                source=NAME,
                incident_id=incident_id,
                server=server,
                wave=0,
                clients=[client],
                health=health.health if health else None,
                reason=f"requested by {client}: {answer.reason}",
            )
        else:
            wave = ReadmitWave(
                source=NAME,
                incident_id=incident_id,
                server=server,
                wave=0,
                deferred=[client],
                retry_after_s=self.config.readmitter.retry_after_s,
                health=health.health if health else None,
                reason=f"requested by {client}, deferred: {answer.reason}",
            )
        logger.info("%s", wave.reason)
        changed = self._set(server, state)
        try:
            await self.rt.bus.publish(self.rt.bus.subjects.readmit(server), wave)
            if wave.clients:
                self.readmitted_total.labels(server).inc(len(wave.clients))
        finally:
            if changed:
                await self._persist(server)

    def _threshold(self, server: str) -> float:
        health = self.health.get(server)
        if health is not None:
            return health.connection_threshold
        return self.config.evaluator.connection_threshold

    # --- wave loops -----------------------------------------------------

    def _ensure_loop(self, server: str) -> None:
        """Start the wave loop of ``server`` if it is recovering and none runs."""
        state = self.states.get(server)
        if state is None or state.state != "recovering" or state.final_sent:
            return
        task = self._loops.get(server)
        if task is not None and not task.done():
            return
        self._loops[server] = self.rt.spawn(self._wave_loop(server), f"waves-{server}")

    async def _wave_loop(self, server: str) -> None:
        """Publish the waves of ``server`` until the final one or a relapse."""
        logger.info("readmission of %s started", server)
        self._last_pause[server] = ""
        while not self.rt.stopping.is_set():
            self._wake[server].clear()
            try:
                nap = await self._wave_step(server)
            except Exception:
                logger.exception("wave loop of %s failed; retrying", server)
                nap = max(self.config.readmitter.wave_interval_s, 1.0)
            if nap is None or not await self.rt.nap(nap, self._wake[server]):
                return

    async def _wave_step(self, server: str) -> float | None:
        """Do what is due for ``server`` now; how long to wait next, None to stop."""
        settings = self.config.readmitter
        state = self.states.get(server)
        if state is None or state.state != "recovering":
            why = f"incident is {state.state}" if state else "no incident"
            logger.info("readmission of %s stopped: %s", server, why)
            return None
        health = self.health.get(server)
        now = time.time()
        decision = waves.next_wave(
            state,
            now=now,
            health=health.health if health else None,
            connection_threshold=self._threshold(server),
            wave_size=settings.wave_size,
            wave_interval_s=settings.wave_interval_s,
        )
        if isinstance(decision, waves.Done):
            logger.info("readmission of %s done: %s", server, decision.reason)
            return None
        if isinstance(decision, waves.Wait):
            return decision.until - now
        if isinstance(decision, waves.Paused):
            if decision.reason != self._last_pause.get(server):
                logger.info("readmission of %s paused: %s", server, decision.reason)
                self._last_pause[server] = decision.reason
            return max(settings.wave_interval_s, 0.1)
        self._last_pause[server] = ""
        sent = waves.record_wave(state, decision, now=now)
        self._set(server, sent)
        if not await self._send_wave(server, state.incident_id, decision, health, now):
            if self.states.get(server) is sent:
                self.states[server] = state
            return max(settings.wave_interval_s, 0.1)
        await self._persist(server)
        if decision.final:
            logger.info("readmission of %s finished with wave %d", server, decision.wave)
            return None
        return settings.wave_interval_s

    async def _send_wave(
        self, server: str, incident_id: str, wave: waves.Wave, health: Health | None, now: float
    ) -> bool:
        """Publish ``wave``; False if it could not be sent."""
        event = ReadmitWave(
            source=NAME,
            time=now,
            incident_id=incident_id,
            server=server,
            wave=wave.wave,
            clients=list(wave.clients),
            health=health.health if health else None,
            final=wave.final,
            reason=wave.reason,
        )
        logger.info(
            "wave %d of %s: %s%s",
            wave.wave,
            server,
            event.clients,
            " (final)" if wave.final else "",
        )
        try:
            await self.rt.bus.publish(self.rt.bus.subjects.readmit(server), event)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.error("could not publish wave %d of %s: %s", wave.wave, server, exc)
            return False
        self.waves_sent += 1
        self.waves_total.inc()
        if event.clients:
            self.readmitted_total.labels(server).inc(len(event.clients))
        return True

    def stats(self) -> dict[str, Any]:
        return {"waves": self.waves_sent, "dropped": dict(self.dropped)}


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the readmitter (for the servers in ``only``, or every server)."""
    servers = {s.id for s in config.select_servers(only)}

    async def setup(rt: Runtime) -> None:
        readmitter = Readmitter(rt, await StateStore.open(rt.bus, BUCKET, Readmission), servers)
        await readmitter.load()
        subjects = rt.bus.subjects
        # Per named server with --only, so readmitters can split the farm
        # without the queue group handing one's events to another.
        for token in subject_tokens(only):
            await rt.bus.subscribe(
                subjects.health(token), readmitter.on_health, types=(HealthReport,), queue=QUEUE
            )
            await rt.bus.subscribe(
                subjects.incident(token), readmitter.on_incident, types=(Incident,), queue=QUEUE
            )
            await rt.bus.subscribe(
                subjects.plan(token), readmitter.on_plan, types=(FailoverPlan,), queue=QUEUE
            )
            await rt.bus.subscribe(
                subjects.request(token),
                readmitter.on_request,
                types=(ReadmitRequest,),
                queue=QUEUE,
                accept_clients=True,
            )

        async def report_at_stop() -> None:
            logger.info("readmitter stopped: %s", readmitter.stats())

        rt.stack.push_async_callback(report_at_stop)

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
