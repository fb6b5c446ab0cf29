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
"""

from __future__ import annotations

import logging
import time

import msgspec
from prometheus_client import Counter, Histogram

from schemas.events import Ack, ClientStatus, HealthReport, Incident
from services.runtime.config import Config
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.state import StateStore
from services.targeter.planning import split_plan
from services.targeter.registry import ClientRecord, apply_status, merge, moved
from services.targeter.steps import Tracked, next_step, step_due

logger = logging.getLogger(__name__)

NAME = "targeter"


class Targeter:
    """The targeter's handlers, its registry and its view of the farm."""

    def __init__(
        self, rt: Runtime, incidents: StateStore[Tracked], registry: StateStore[ClientRecord]
    ) -> None:
        self.rt = rt
        self.config = rt.config
        self.incidents = incidents
        self.registry_store = registry
        self.servers = {s.id for s in rt.config.servers}
        self.tracked: dict[str, Tracked] = {}
        self.registry: dict[str, ClientRecord] = {}
        self.reports: dict[str, HealthReport] = {}
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
        self.tracked = {
            sid: tracked
            for sid, tracked in (await self.incidents.load_all()).items()
            if sid in self.servers
        }
        stored = await self.registry_store.load_all()
        self.registry = merge(self.config, stored)
        for client_id, record in self.registry.items():
            if stored.get(client_id) != record:
                await self.registry_store.put(client_id, record)
        for client_id in set(stored) - set(self.registry):
            await self.registry_store.delete(client_id)
        logger.info(
            "registry: %d clients; servers in incident: %s",
            len(self.registry),
            sorted(self.in_incident()) or "none",
        )

    def in_incident(self) -> set[str]:
        """Servers with an incident that is opened or recovering."""
        return {sid for sid, t in self.tracked.items() if t.state != "closed"}

    def _drop(self, reason: str, detail: str) -> None:
        self.rt.bus.counters.drop(reason)
        logger.warning("dropped %s", detail)

    # --- registry ---------------------------------------------------------

    async def _record(self, record: ClientRecord) -> None:
        self.registry[record.id] = record
        await self.registry_store.put(record.id, record)

    async def on_status(self, status: ClientStatus) -> None:
        record = self.registry.get(status.client)
        if record is None:
            self._drop("unknown-client", f"status of unknown client {status.client!r}")
            return
        changed = apply_status(record, status, self.servers)
        if changed is not None:
            await self._record(changed)

    async def on_ack(self, ack: Ack) -> None:
        record = self.registry.get(ack.client)
        if record is None:
            self._drop("unknown-client", f"ack of unknown client {ack.client!r}")
            return
        if ack.accepted and ack.now_on in self.servers and ack.now_on != record.current:
            await self._record(moved(record, ack.now_on, ack.time))

    # --- incidents and steps ------------------------------------------------

    async def on_incident(self, incident: Incident) -> None:
        if incident.server not in self.servers:
            self._drop("unknown-server", f"incident of unknown server {incident.server!r}")
            return
        previous = self.tracked.get(incident.server)
        if previous is not None and incident.time < previous.time:
            self._drop("out-of-order", f"incident {incident.incident_id}: older than stored")
            return
        tracked = Tracked(
            incident_id=incident.incident_id, state=incident.state, time=incident.time
        )
        if previous is not None and previous.incident_id == incident.incident_id:
            tracked = msgspec.structs.replace(tracked, step=previous.step)
        self.tracked[incident.server] = tracked
        if incident.state == "opened":
            await self._plan(incident.server, tracked, fallback_health=incident.health)
        else:
            await self.incidents.put(incident.server, tracked)

    async def on_health(self, report: HealthReport) -> None:
        if report.server not in self.servers:
            self._drop("unknown-server", f"health of unknown server {report.server!r}")
            return
        self.reports[report.server] = report
        tracked = self.tracked.get(report.server)
        if tracked is None or tracked.state != "opened":
            return
        if step_due(
            health=report.health,
            failover_threshold=report.failover_threshold,
            last_plan_health=tracked.last_plan_health,
            last_plan_at=tracked.last_plan_at,
            now=time.time(),
            step_interval_s=self.config.targeter.step_interval_s,
        ):
            await self._plan(report.server, tracked, fallback_health=report.health)

    async def _plan(self, server: str, tracked: Tracked, *, fallback_health: float) -> None:
        started = time.perf_counter()
        step = next_step(
            server,
            tracked,
            config=self.config,
            reports=self.reports,
            registry=self.registry,
            in_incident=self.in_incident(),
            fallback_health=fallback_health,
            now=time.time(),
            source=NAME,
        )
        if step is None:
            return  # every client of the server has been planned away already
        plan, tracked = step
        self.tracked[server] = tracked
        await self.incidents.put(server, tracked)
        logger.info("plan %s of %s: %s", plan.plan_id, server, plan.reason)
        for part in split_plan(plan):
            await self.rt.bus.publish(self.rt.bus.subjects.plan(server), part)
        if plan.moves:
            self.moved_total.labels(server).inc(len(plan.moves))
        self.plan_latency.observe(time.perf_counter() - started)


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
        subjects = rt.bus.subjects
        await rt.bus.subscribe(subjects.incident("*"), targeter.on_incident, types=(Incident,))
        await rt.bus.subscribe(subjects.health("*"), targeter.on_health, types=(HealthReport,))
        await rt.bus.subscribe(
            subjects.status("*"), targeter.on_status, types=(ClientStatus,), accept_clients=True
        )
        await rt.bus.subscribe(
            subjects.ack("*"), targeter.on_ack, types=(Ack,), accept_clients=True
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
