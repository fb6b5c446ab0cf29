"""The readmitter: brings moved clients back to their server in waves.

It follows each server's incidents (``incident.*``), the clients its failover
plans moved (``plan.*``), where the clients say they are (``status.*``: a
client away from a server in incident is readmitted even if the plan that
moved it was missed) and its latest health (``health.*``). While an
incident is recovering, a wave loop per server publishes ``ReadmitWave`` on
``readmit.<server>`` every ``readmitter.wave_interval_s``, each only if the
latest health is at or above the connection threshold; the last one is
``final``. A client's own ``ReadmitRequest`` (signed with its own secret) is
answered at once with a wave 0 that grants or defers it. Each server's
:class:`~services.readmitter.waves.Readmission` is kept in the KV bucket
``readmitter``, so a restarted readmitter resumes where it stopped.

What is decided is written before it is acted on: a wave (in the state's
outbox) before it is published. A handler that changes a decision returns
once it is written: an incident or a plan (acknowledged to the stream after
it), a client away by its status or away again as its readmission notice
failed, a request granted. Two kinds of change are written a little later,
together with whatever changed meanwhile: a client that asked to return,
within ``ASKED_WRITE_S`` (it only puts the client first in the next wave,
and the client was told to ask again by then; the clients of one server ask
by the thousand, on their own timers, within seconds), and a readmitted
client heard home, within ``SOFT_WRITE_S`` (it decides no wave: after a
restart before it, the client's next status says it is home again, or it is
waited for as one never heard). A clean stop writes them at once. Each write
stores the latest state of its server, one at a time per server; a change
made while one is in flight is stored by the next.

The decisions, and every ReadmitWave, are
:class:`~services.readmitter.core.ReadmitterCore`'s; this module wires it to
the bus (events of servers or clients it does not know, and a request to a
server that is not the client's home, are dropped by guards and counted with
the bus's drops), KV and one wave loop per recovering server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import prometheus_client

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverPlan,
    HealthReport,
    Incident,
    ReadmitRequest,
    ReadmitWave,
)
from services.readmitter import waves
from services.readmitter.core import ReadmitterCore, ReadmitterState, WaveDue
from services.readmitter.waves import Readmission
from services.runtime.config import Config, ReadmitterConfig, subject_tokens
from services.runtime.durable import consume, publish_stored
from services.runtime.lifecycle import Runtime, ShutdownTrigger, WakeEvent, run_service
from services.runtime.middleware import guard, known_client, known_server, taking
from services.runtime.permissions import durable_name
from services.runtime.placement import homes
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

NAME = "readmitter"
QUEUE = "readmitter"
BUCKET = "readmitter"
ASKED_WRITE_S = 0.1
"""How long a client that asked to return (first in the next wave) may wait to be written."""
SOFT_WRITE_S = 1.0
"""How long a readmitted client heard home (which decides no wave) may wait to be written."""
IDLE_S = 60.0
"""How long the writer waits when nothing is due (a change wakes it)."""


class Readmitter:
    """The readmitter's wiring: its core's state, its KV store, its wave loops and metrics."""

    def __init__(self, rt: Runtime, store: StateStore[Readmission], servers: set[str]) -> None:
        self.rt = rt
        self.store = store
        self.config: Config = rt.config
        self.servers = servers
        self.homes = homes(rt.config)
        self.core = ReadmitterCore(rt.config, source=NAME)
        self.state = ReadmitterState()
        self.waves_sent = 0
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, WakeEvent] = {s: WakeEvent() for s in servers}
        self._locks: dict[str, asyncio.Lock] = {s: asyncio.Lock() for s in servers}
        self._last_pause: dict[str, str] = {}
        self._outbox: dict[str, tuple[ReadmitWave, ...]] = {}
        # each server's latest change and the latest stored (counted), and when a change not
        # stored yet is due to be written (time.monotonic())
        self._changes: dict[str, int] = dict.fromkeys(servers, 0)
        self._stored: dict[str, int] = dict.fromkeys(servers, 0)
        self._due: dict[str, float] = {}
        self._write_wake = WakeEvent()
        self.writes = 0
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

    @property
    def states(self) -> Mapping[str, Readmission]:
        """Each server's readmission."""
        return self.state.readmissions

    # --- state ----------------------------------------------------------

    async def load(self) -> None:
        """Read every server's Readmission from KV; resume the recovering ones."""
        for state in (await self.store.load_all()).values():
            if state.server not in self.servers:
                continue
            if state.outbox:
                self._outbox[state.server] = state.outbox
                state = msgspec.structs.replace(state, outbox=())
            self.state = replace(
                self.state, readmissions={**self.state.readmissions, state.server: state}
            )
            logger.info(
                "loaded %s: incident %s %s, %d away",
                state.server,
                state.incident_id,
                state.state,
                len(state.away),
            )
            self._ensure_loop(state.server)

    async def _persist(self, server: str) -> None:
        """Write the current state of ``server`` now; return once it is stored (or the store
        failed: the writer tries again)."""
        self._changes[server] += 1
        await self._write(server)

    def _write_soon(self, server: str, within: float) -> None:
        """Have the writer store the current state of ``server`` within ``within`` seconds,
        with whatever changes meanwhile, without waiting for it."""
        self._changes[server] += 1
        at = time.monotonic() + within
        due = self._due.get(server)
        if due is None or at < due:
            self._due[server] = at
            self._write_wake.set()

    async def _write(self, server: str) -> bool:
        """Store the latest state of ``server`` (whoever changed it last), with the waves
        decided but not yet known stored in the stream (its outbox), unless a write that
        began after the latest change asked for has stored it already. One write at a time
        per server. False if the store failed: the writer tries again later."""
        wanted = self._changes[server]
        async with self._locks[server]:
            if self._stored[server] >= wanted:
                if self._stored[server] >= self._changes[server]:
                    self._due.pop(server, None)
                return True
            latest = self._changes[server]
            state = self.states.get(server)
            if state is not None:
                outbox = self._outbox.get(server, ())
                stored = msgspec.structs.replace(state, outbox=outbox)
                if not await self.store.put(server, stored):
                    self._due[server] = time.monotonic() + SOFT_WRITE_S
                    self._write_wake.set()
                    return False
                self.writes += 1
            self._stored[server] = latest
            if latest >= self._changes[server]:
                self._due.pop(server, None)
            return True

    async def writer(self) -> None:
        """Store each server's state when a change of it is due, until the service stops;
        then what is still unwritten."""
        while True:
            self._write_wake.clear()
            now = time.monotonic()
            for server, due in list(self._due.items()):
                if due <= now:
                    await self._write_logged(server)
            nap = min(self._due.values(), default=time.monotonic() + IDLE_S) - time.monotonic()
            if not await self.rt.nap(nap, self._write_wake):
                break
        for server in list(self._due):
            await self._write_logged(server)

    async def _write_logged(self, server: str) -> None:
        """:meth:`_write`, a failure of which is logged and tried again later."""
        try:
            await self._write(server)
        except Exception:
            logger.exception("could not write the state of %s; trying again", server)
            self._due[server] = time.monotonic() + SOFT_WRITE_S

    async def _send_outbox(self, server: str) -> bool:
        """Publish ``server``'s written waves until the stream has stored each (the same
        ids, so stored once), then write the state without them. False if the stream
        did not take them: they stay for the next try."""
        outbox = self._outbox.get(server, ())
        if not outbox:
            return True
        for wave in outbox:
            if not await self._send_wave(wave):
                return False
        self._outbox[server] = ()
        await self._persist(server)
        return True

    def _decide(
        self, server: str, event: Event | WaveDue, now: float | None = None
    ) -> tuple[bool, list[ReadmitWave]]:
        """Run the core on ``event`` at ``now`` (default: the time now); wake ``server``'s
        loop if its readmission changed. Returns whether it changed, and the waves to publish.
        """
        before = self.states.get(server)
        at = time.time() if now is None else now
        self.state, waves_out = self.core.handle(self.state, event, at)
        changed = self.states.get(server) is not before
        if changed:
            self._wake[server].set()
        return changed, waves_out

    # --- handlers -------------------------------------------------------

    async def on_health(self, event: HealthReport) -> None:
        before = self.states.get(event.server)
        self._decide(event.server, event)
        self._wake[event.server].set()
        after = self.states.get(event.server)
        # each report also measures the last wave's cost: kept with the next write, not
        # written each time; a change of state is (the evaluator reports healthy again
        # after the final wave: the incident is closed)
        if before is not None and after is not None and after.state != before.state:
            logger.info("incident of %s closed, as its health reports say", event.server)
            await self._persist(event.server)

    async def on_incident(self, event: Incident) -> None:
        server = event.server
        changed, _ = self._decide(server, event)
        logger.info("incident %s of %s is %s", event.incident_id, server, event.state)
        if changed:
            await self._persist(server)
        self._ensure_loop(server)

    async def on_plan(self, event: FailoverPlan) -> None:
        """The clients a plan moved; a move of a client not in the config is dropped."""
        known = [move for move in event.moves if move.client in self.homes]
        for move in event.moves:
            if move.client not in self.homes:
                self.rt.bus.drop(
                    "unknown-client", f"plan {event.plan_id} moves unknown client {move.client!r}"
                )
        if len(known) < len(event.moves):
            event = msgspec.structs.replace(event, moves=known)
        changed, _ = self._decide(event.server, event)
        if changed:
            away = len(self.states[event.server].away)
            logger.info("plan %s: %d clients away from %s", event.plan_id, away, event.server)
            await self._persist(event.server)

    async def on_client(self, event: ClientStatus | Ack | Delivery) -> None:
        """Where a client says it is (status, ack), or a readmission notice that failed: a
        client away that no plan heard here moved, one readmitted now home, or one that
        did not get its notice and is away again."""
        server = self.homes[event.client]
        before = self.states.get(server)
        changed, _ = self._decide(server, event)
        if not changed or before is None:
            return
        after = self.states[server]
        if event.client in after.away_set and event.client not in before.away_set:
            logger.info("%s is away from %s: readmitted in a wave", event.client, server)
        elif event.client in before.returning_set and event.client not in after.returning_set:
            logger.info("%s is home on %s", event.client, server)
        if waves.settles_only(before, after):
            self._write_soon(server, SOFT_WRITE_S)
        else:
            await self._persist(server)

    async def on_request(self, event: ReadmitRequest) -> None:
        server = event.server
        changed, [wave] = self._decide(server, event)
        logger.info("%s", wave.reason)
        try:
            await self.rt.bus.publish(self.rt.bus.subjects.readmit(server), wave)
            if wave.clients:
                self.readmitted_total.labels(server).inc(len(wave.clients))
        finally:
            if changed and not wave.clients:
                self._write_soon(server, ASKED_WRITE_S)
            elif changed:
                await self._persist(server)

    # --- wave loops -----------------------------------------------------

    def _ensure_loop(self, server: str) -> None:
        """Start the wave loop of ``server`` if it is recovering and none runs."""
        state = self.states.get(server)
        if state is None or state.state != "recovering":
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
        interval = self.config.readmitter.wave_interval_s
        if not await self._send_outbox(server):
            return max(interval, 0.1)
        now = time.time()
        _, waves_out = self._decide(server, WaveDue(server=server), now)
        timer = self.state.timers[server]
        if not waves_out:
            if timer.wake_at is None:
                logger.info("readmission of %s stopped: %s", server, timer.reason)
                return None
            if timer.paused and timer.reason != self._last_pause.get(server):
                logger.info("readmission of %s paused: %s", server, timer.reason)
                self._last_pause[server] = timer.reason
            return timer.wake_at - now
        self._last_pause[server] = ""
        [wave] = waves_out
        self._outbox[server] = (*self._outbox.get(server, ()), wave)
        await self._persist(server)
        if not await self._send_outbox(server):
            return max(interval, 0.1)
        if wave.final:
            logger.info("readmission of %s: final wave %d (%s)", server, wave.wave, wave.reason)
        return interval

    async def _send_wave(self, event: ReadmitWave) -> bool:
        """Publish ``event``; False if it could not be sent."""
        server = event.server
        logger.info(
            "wave %d of %s: %s%s",
            event.wave,
            server,
            event.clients,
            " (final)" if event.final else "",
        )
        try:
            await publish_stored(self.rt.bus, self.rt.bus.subjects.readmit(server), event)
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
            logger.error("could not publish wave %d of %s: %s", event.wave, server, exc)
            return False
        self.waves_sent += 1
        self.waves_total.inc()
        if event.clients:
            self.readmitted_total.labels(server).inc(len(event.clients))
        return True

    def stats(self) -> dict[str, Any]:
        return {"waves": self.waves_sent, "writes": self.writes}


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the readmitter (for the servers in ``only``, or every server)."""
    servers = {s.id for s in config.select_servers(only)}
    settings = config.readmitter
    if settings.sizing == "adaptive" and settings.wave_size != ReadmitterConfig().wave_size:
        logger.warning(
            'readmitter.wave_size = %d is used only with sizing = "fixed"; waves are '
            "adaptive (first_wave_size %d, growth %g)",
            settings.wave_size,
            settings.first_wave_size,
            settings.growth,
        )

    async def setup(rt: Runtime) -> None:
        readmitter = Readmitter(rt, await StateStore.open(rt.bus, BUCKET, Readmission), servers)
        await readmitter.load()
        rt.spawn(readmitter.writer(), "writer")
        subjects = rt.bus.subjects
        server = known_server(servers)
        client = known_client(readmitter.homes)
        home = guard(
            "not-home",
            lambda request: readmitter.homes[request.client] == request.server,
            lambda request: (
                f"readmit request of {request.client} to {request.server}: "
                f"its home is {readmitter.homes[request.client]}"
            ),
        )
        # Per named server with --only, so readmitters can split the farm
        # without the queue group handing one's events to another.
        for token in subject_tokens(only):
            await rt.bus.subscribe(
                subjects.health(token),
                readmitter.on_health,
                types=(HealthReport,),
                queue=QUEUE,
                guards=[server],
            )
            await consume(
                rt.bus,
                subjects.incident(token),
                readmitter.on_incident,
                types=(Incident,),
                durable=durable_name(NAME, "incident", token),
                guards=[server],
            )
            await consume(
                rt.bus,
                subjects.plan(token),
                readmitter.on_plan,
                types=(FailoverPlan,),
                durable=durable_name(NAME, "plan", token),
                guards=[server],
            )
            await rt.bus.subscribe(
                subjects.request(token),
                readmitter.on_request,
                types=(ReadmitRequest,),
                queue=QUEUE,
                accept_clients=True,
                guards=[server, client, home],
            )

        # where clients are: one away from a server in incident that no plan heard here
        # moved (a plan missed while this readmitter was down) is readmitted all the same
        # and whether the clients a wave readmitted are home (their acks), or did not get
        # its notice (the notifier's failed deliveries)
        mine = taking(lambda event: readmitter.homes[event.client] in servers)
        await rt.bus.subscribe(
            subjects.status("*"),
            readmitter.on_client,
            types=(ClientStatus,),
            queue=QUEUE,
            accept_clients=True,
            guards=[client, mine],
        )
        await rt.bus.subscribe(
            subjects.ack("*"),
            readmitter.on_client,
            types=(Ack,),
            queue=QUEUE,
            accept_clients=True,
            guards=[client, mine],
        )
        await rt.bus.subscribe(
            subjects.delivery("*"),
            readmitter.on_client,
            types=(Delivery,),
            queue=QUEUE,
            guards=[client, mine],
        )

        async def report_at_stop() -> None:
            logger.info("readmitter stopped: %s", readmitter.stats())

        rt.stack.push_async_callback(report_at_stop)

    await run_service(
        NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url, only=only
    )
