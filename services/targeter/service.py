"""The targeter service: FailoverPlans for overloaded servers, step by step.

It keeps two things in JetStream KV, so a restarted targeter has them at once:
the client registry (bucket ``registry``, key: client id; see
:mod:`services.targeter.registry`), fed by the config and by the clients'
own signed ``ClientStatus`` announcements and acks; and, per server, the
incident it is in and the steps planned for it (bucket ``targeter``).

An incident that opens gets a first plan; while it stays open and health
keeps falling, every ``targeter.step_interval_s`` a further step sheds more
of the clients still on the server. Plans never send clients to a server that
is itself in an incident, nor to one without room for them. Run one targeter
per farm: it needs every server's health to pick alternates.

The decisions are :class:`~services.targeter.core.TargeterCore`'s; this
module wires it to the bus (events of servers or clients it does not know are
dropped by guards) and to KV.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import msgspec
from prometheus_client import Counter, Histogram

from schemas.events import Ack, ClientStatus, FailoverPlan, HealthReport, Incident
from services.runtime.config import Config
from services.runtime.durable import consume, publish_stored
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.middleware import known_client, known_server
from services.runtime.permissions import durable_name
from services.runtime.state import StateStore
from services.targeter.core import TargeterCore, TargeterState
from services.targeter.registry import ClientRecord
from services.targeter.steps import Tracked

logger = logging.getLogger(__name__)

NAME = "targeter"


class Targeter:
    """The targeter's wiring: its core's state, its KV stores and its metrics."""

    def __init__(
        self, rt: Runtime, incidents: StateStore[Tracked], registry: StateStore[ClientRecord]
    ) -> None:
        self.rt = rt
        self.config = rt.config
        self.incidents = incidents
        self.registry_store = registry
        self.core = TargeterCore(rt.config, source=NAME)
        self.state = TargeterState()
        prometheus = rt.metrics.registry
        self.moved_total = Counter(
            "aaa_failover_clients_moved",
            "Clients planned away from an overloaded server.",
            ["server"],
            registry=prometheus,
        )
        self.plan_latency = Histogram(
            "aaa_failover_plan_latency_seconds",
            "Time to plan a step and publish its FailoverPlan.",
            buckets=LATENCY_BUCKETS,
            registry=prometheus,
        )

    async def load(self) -> None:
        """Read the incidents and the registry from KV; bring the registry up to the config."""
        servers = self.core.servers
        stored = await self.registry_store.load_all()
        self.state = replace(
            self.core.initial(stored),
            tracked={
                sid: tracked
                for sid, tracked in (await self.incidents.load_all()).items()
                if sid in servers
            },
        )
        for client_id, record in self.state.registry.items():
            if stored.get(client_id) != record:
                await self.registry_store.put(client_id, record)
        for client_id in set(stored) - set(self.state.registry):
            await self.registry_store.delete(client_id)
        logger.info(
            "registry: %d clients; servers in incident: %s",
            len(self.state.registry),
            sorted(self.state.in_incident()) or "none",
        )

    # --- registry ---------------------------------------------------------

    async def on_client(self, event: ClientStatus | Ack) -> None:
        """A client's status or ack: where it is now (stored when its record changed)."""
        before = self.state.registry[event.client]
        self.state, _ = self.core.handle(self.state, event, time.time())
        record = self.state.registry[event.client]
        if record is not before:
            await self.registry_store.put(record.id, record)

    # --- incidents and steps ------------------------------------------------

    async def on_incident(self, incident: Incident) -> None:
        started = time.perf_counter()
        self.state, parts = self.core.handle(self.state, incident, time.time())
        await self._step(incident.server, parts, started, changed=incident.state != "opened")

    async def on_health(self, report: HealthReport) -> None:
        started = time.perf_counter()
        self.state, parts = self.core.handle(self.state, report, time.time())
        await self._step(report.server, parts, started)

    async def _step(
        self, server: str, parts: list[FailoverPlan], started: float, *, changed: bool = False
    ) -> None:
        """Publish a step's plan, then write out what changed for ``server``.

        The notifier takes the plan from the stream as soon as it is stored, so no
        KV write stands before it. A targeter that stops between the two plans the
        step again from its stored state (the incident is offered again, or the
        next health report makes it due): the same plan, with the same event ids
        (:func:`~services.targeter.planning.step_plan_id`), which the stream
        stores once. What the stream does not take is written in the record's
        outbox, for the next event of that server (or the next start) to send.
        """
        tracked = self.state.tracked.get(server)
        if tracked is None:
            return
        if parts:
            tracked = msgspec.structs.replace(tracked, outbox=(*tracked.outbox, *parts))
            self._keep(server, tracked)
        if tracked.outbox:
            await self._send_outbox(server)
        elif changed:
            await self.incidents.put(server, tracked)
        if parts:
            plan = parts[0]
            logger.info("plan %s of %s: %s", plan.plan_id, server, plan.reason)
            moves = sum(len(part.moves) for part in parts)
            if moves:
                self.moved_total.labels(server).inc(moves)
            self.plan_latency.observe(time.perf_counter() - started)

    async def _send_outbox(self, server: str) -> None:
        """Publish ``server``'s plan parts, side by side (in order on the connection, so the
        stream stores them in order), until the stream has stored each; then write its
        record with the parts it did not take, if any, still in the outbox."""
        tracked = self.state.tracked[server]
        subject = self.rt.bus.subjects.plan(server)
        outcomes = await asyncio.gather(
            *(publish_stored(self.rt.bus, subject, part) for part in tracked.outbox),
            return_exceptions=True,
        )
        done = {
            part.id
            for part, outcome in zip(tracked.outbox, outcomes, strict=True)
            if outcome is None
        }
        current = self.state.tracked[server]
        cleared = msgspec.structs.replace(
            current, outbox=tuple(p for p in current.outbox if p.id not in done)
        )
        self._keep(server, cleared)
        await self.incidents.put(server, cleared)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]

    def _keep(self, server: str, tracked: Tracked) -> None:
        self.state = replace(self.state, tracked={**self.state.tracked, server: tracked})

    async def send_outboxes(self) -> None:
        """Publish the plans a previous life wrote out but may not have published."""
        for server, tracked in list(self.state.tracked.items()):
            if tracked.outbox:
                logger.info(
                    "publishing %d plan parts of %s written before a restart",
                    len(tracked.outbox),
                    server,
                )
                await self._send_outbox(server)


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the targeter for every server of ``config`` (``only`` does not apply)."""

    async def setup(rt: Runtime) -> None:
        targeter = Targeter(
            rt,
            await StateStore.open(rt.bus, NAME, Tracked),
            await StateStore.open(rt.bus, "registry", ClientRecord),
        )
        await targeter.load()
        await targeter.send_outboxes()
        subjects = rt.bus.subjects
        server = [known_server(targeter.core.servers)]
        client = [known_client({c.id for c in config.clients})]
        await consume(
            rt.bus,
            subjects.incident("*"),
            targeter.on_incident,
            types=(Incident,),
            durable=durable_name(NAME, "incident"),
            guards=server,
        )
        await rt.bus.subscribe(
            subjects.health("*"), targeter.on_health, types=(HealthReport,), guards=server
        )
        await rt.bus.subscribe(
            subjects.status("*"),
            targeter.on_client,
            types=(ClientStatus,),
            accept_clients=True,
            guards=client,
        )
        await rt.bus.subscribe(
            subjects.ack("*"),
            targeter.on_client,
            types=(Ack,),
            accept_clients=True,
            guards=client,
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
