"""The targeter service: a FailoverPlan for every incident that opens.

It keeps which servers are in an incident (opened or recovering) in the KV
bucket ``targeter`` (key: server id), so that plans never send clients to a
server that is itself overloaded, across restarts and replicas: the bucket is
read again for every plan.
"""

from __future__ import annotations

import logging

import msgspec
import nats.errors

from schemas.events import Incident, IncidentState
from services.runtime.config import Config
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.state import StateStore
from services.targeter.planning import plan_failover

logger = logging.getLogger(__name__)

NAME = "targeter"


class Tracked(msgspec.Struct, frozen=True, kw_only=True):
    """The last incident state the targeter saw for one server."""

    incident_id: str
    state: IncidentState
    time: float


class Targeter:
    """The targeter's handlers and its view of which servers are in an incident."""

    def __init__(self, rt: Runtime, store: StateStore[Tracked]) -> None:
        self.rt = rt
        self.store = store
        self.servers = {s.id for s in rt.config.servers}
        self.tracked: dict[str, Tracked] = {}

    async def load(self) -> None:
        """Read every server's tracked state from KV; a bad value is logged and ignored."""
        tracked: dict[str, Tracked] = {}
        for sid in sorted(self.servers):
            value = await self.store.get(sid)
            if value is not None:
                tracked[sid] = value
        self.tracked = tracked

    def in_incident(self) -> set[str]:
        """Servers with an incident that is opened or recovering."""
        return {sid for sid, t in self.tracked.items() if t.state != "closed"}

    @staticmethod
    def _is_newer(tracked: Tracked, stored: Tracked | None) -> bool:
        return stored is None or tracked.time >= stored.time

    async def on_incident(self, incident: Incident) -> None:
        if incident.server not in self.servers:
            self.rt.bus.counters.drop("unknown-server")
            logger.warning("dropped incident of unknown server %r", incident.server)
            return
        tracked = Tracked(
            incident_id=incident.incident_id, state=incident.state, time=incident.time
        )
        try:
            await self.load()
        except nats.errors.Error as exc:
            logger.error("targeter state store failed, planning from memory: %s", exc)
        else:
            if self._is_newer(tracked, self.tracked.get(incident.server)):
                await self.store.put(incident.server, tracked)
        if not self._is_newer(tracked, self.tracked.get(incident.server)):
            self.rt.bus.counters.drop("out-of-order")
            logger.warning(
                "ignored incident %s of %s: older than the state stored",
                incident.incident_id,
                incident.server,
            )
            return
        self.tracked[incident.server] = tracked
        if incident.state != "opened":
            return
        plan = plan_failover(
            incident.server,
            incident.incident_id,
            self.rt.config,
            self.in_incident() - {incident.server},
            source=NAME,
        )
        logger.info(
            "plan %s for incident %s of %s: %s",
            plan.plan_id,
            incident.incident_id,
            incident.server,
            plan.reason,
        )
        await self.rt.bus.publish(self.rt.bus.subjects.plan(incident.server), plan)


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the targeter for every server of ``config`` (``only`` does not apply)."""

    async def setup(rt: Runtime) -> None:
        targeter = Targeter(rt, await StateStore.open(rt.bus, NAME, Tracked))
        await targeter.load()
        await rt.bus.subscribe(
            rt.bus.subjects.incident("*"), targeter.on_incident, types=(Incident,), queue=NAME
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
