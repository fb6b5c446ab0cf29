"""The notifier: turns failover plans and readmission waves into notices to clients.

Each notice goes to ``notice.<client>`` signed with the bus key and carrying
the client's own authenticator (``Aaa-Auth``) and the server it concerns
(``Aaa-Server``). Its fate is reported on ``delivery.<client>``: sent, retried
(the same bytes again) while no Ack comes, acked, or failed. Notices in
flight are kept in the ``notifier`` KV bucket, so a restarted notifier goes
on retrying them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from schemas.events import (
    Ack,
    Delivery,
    Endpoint,
    FailoverNotice,
    FailoverPlan,
    ReadmitNotice,
    ReadmitWave,
)
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator
from services.notifier.deliveries import DeliveryTracker, Failed, Pending, Sequencer
from services.runtime.config import ClientConfig, Config, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

NAME = "notifier"

Notice = FailoverNotice | ReadmitNotice


def endpoint(server: ServerConfig) -> Endpoint:
    """Where clients reach ``server``, from the config."""
    return Endpoint(server=server.id, ip=server.ip, auth_port=server.auth_port)


def notice_type(notice: Notice) -> str:
    """The wire tag of a notice (``notice.failover`` or ``notice.readmit``)."""
    return str(type(notice).__struct_config__.tag)


class Notifier:
    """The notifier's state: config lookups, sequence numbers, deliveries in flight."""

    def __init__(self, rt: Runtime, store: StateStore[Pending]) -> None:
        self.rt = rt
        self.config = rt.config
        self.store = store
        self.servers = {s.id: s for s in rt.config.servers}
        self.clients = {c.id: c for c in rt.config.clients}
        self.secrets = {c.id: rt.config.read_secret(c.secret) for c in rt.config.clients}
        self.seq = Sequencer()
        self.tracker = DeliveryTracker(
            ack_timeout_s=rt.config.notifier.ack_timeout_s,
            retries=rt.config.notifier.retries,
            source=rt.bus.name,
        )
        self.dropped: Counter[str] = Counter()

    def drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        logger.warning("dropped %s: %s", reason, detail)

    # --- state in the KV bucket -----------------------------------------

    async def load(self) -> None:
        """Take over the notices that were in flight before a restart."""
        for pending in (await self.store.load_all()).values():
            self.tracker.restore(pending)
        if self.tracker.pending:
            logger.info("resumed %d notices in flight", len(self.tracker))

    async def _save(self, pending: Pending) -> None:
        await self.store.put(pending.notice_id, pending)

    async def _forget(self, notice_id: str) -> None:
        await self.store.delete(notice_id)

    # --- sending --------------------------------------------------------

    def _authenticate(
        self, client: ClientConfig, server: ServerConfig
    ) -> Callable[[bytes], dict[str, str]]:
        secret = self.secrets[client.id]

        def authenticate(payload: bytes) -> dict[str, str]:
            auth = client_authenticator(
                secret, server.ip, client.ip, payload, legacy=client.legacy_authenticator
            )
            return {AUTH_HEADER: auth, SERVER_HEADER: server.id}

        return authenticate

    async def send(self, notice: Notice, client: ClientConfig, server: ServerConfig) -> None:
        """Publish ``notice`` to ``client``, track it and report it sent."""
        bus = self.rt.bus
        subject = bus.subjects.notice(client.id)
        payload, headers = bus.encode(notice)
        headers.update(self._authenticate(client, server)(payload))
        pending, delivery = self.tracker.sent(
            notice_id=notice.id,
            notice_type=notice_type(notice),
            client=client.id,
            server=server.id,
            subject=subject,
            payload=payload,
            headers=headers,
            now=time.time(),
        )
        await self._save(pending)
        await bus.nc.publish(subject, payload, headers=headers)
        bus.counters.published += 1
        await self._report(delivery)

    async def _report(self, delivery: Delivery) -> None:
        await self.rt.bus.publish(self.rt.bus.subjects.delivery(delivery.client), delivery)

    # --- handlers -------------------------------------------------------

    async def on_plan(self, plan: FailoverPlan) -> None:
        server = self.servers.get(plan.server)
        if server is None:
            self.drop("unknown-server", f"plan {plan.plan_id} for server {plan.server!r}")
            return
        now = time.time()
        valid_until = now + self.config.notifier.notice_validity_s
        for move in plan.moves:
            client = self.clients.get(move.client)
            if client is None:
                self.drop("unknown-client", f"plan {plan.plan_id} moves {move.client!r}")
                continue
            alternates = []
            for sid in move.alternates:
                alternate = self.servers.get(sid)
                if alternate is None or sid == plan.server:
                    self.drop("bad-alternate", f"plan {plan.plan_id} offers {sid!r}")
                    continue
                alternates.append(endpoint(alternate))
            notice = FailoverNotice(
                incident_id=plan.incident_id,
                server=server.id,
                client=client.id,
                alternates=alternates,
                seq=self.seq.next(client.id, now),
                valid_until=valid_until,
                source=self.rt.bus.name,
            )
            await self.send(notice, client, server)

    async def on_wave(self, wave: ReadmitWave) -> None:
        server = self.servers.get(wave.server)
        if server is None:
            self.drop("unknown-server", f"wave {wave.wave} for server {wave.server!r}")
            return
        now = time.time()
        valid_until = now + self.config.notifier.notice_validity_s
        home = endpoint(server)
        for granted, ids in ((True, wave.clients), (False, wave.deferred)):
            for cid in ids:
                client = self.clients.get(cid)
                if client is None:
                    self.drop("unknown-client", f"wave {wave.wave} of {wave.server} names {cid!r}")
                    continue
                if client.home != server.id:
                    self.drop("not-home", f"wave of {server.id} names {cid!r} of {client.home}")
                    continue
                notice = ReadmitNotice(
                    incident_id=wave.incident_id,
                    server=server.id,
                    client=client.id,
                    home=home,
                    granted=granted,
                    wave=wave.wave,
                    retry_after_s=0.0 if granted else wave.retry_after_s,
                    seq=self.seq.next(client.id, now),
                    valid_until=valid_until,
                    source=self.rt.bus.name,
                )
                await self.send(notice, client, server)

    async def on_ack(self, ack: Ack) -> None:
        delivery = self.tracker.acked(ack.notice_id, ack.client, time.time())
        if delivery is None:
            self.dropped["unmatched-ack"] += 1
            logger.debug("ack of %s by %s matches nothing in flight", ack.notice_id, ack.client)
            return
        await self._forget(ack.notice_id)
        logger.info(
            "%s acked %s (accepted=%s, on %s, %s)",
            ack.client,
            ack.notice_id,
            ack.accepted,
            ack.now_on or "-",
            ack.reason or "-",
        )
        await self._report(delivery)

    # --- retries --------------------------------------------------------

    async def retry_loop(self) -> None:
        """Re-send unacknowledged notices and give up on them after the last retry."""
        timeout = self.config.notifier.ack_timeout_s
        while True:
            now = time.time()
            for action in self.tracker.due(now):
                pending = action.pending
                if isinstance(action, Failed):
                    await self._forget(pending.notice_id)
                    logger.warning(
                        "notice %s to %s failed after %d attempts",
                        pending.notice_id,
                        pending.client,
                        pending.attempts,
                    )
                else:
                    await self._save(pending)
                    await self.rt.bus.nc.publish(
                        pending.subject, pending.payload, headers=pending.headers
                    )
                    self.rt.bus.counters.published += 1
                await self._report(action.delivery)
            deadline = self.tracker.next_deadline()
            wait = timeout if deadline is None else min(timeout, deadline - time.time())
            if not await self.rt.sleep(max(wait, 0.005)):
                return


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the notifier until shutdown (``only`` is not used by this service)."""

    async def setup(rt: Runtime) -> None:
        notifier = Notifier(rt, await StateStore.open(rt.bus, NAME, Pending))
        await notifier.load()
        subjects = rt.bus.subjects
        await rt.bus.subscribe(
            subjects.plan("*"), notifier.on_plan, types=(FailoverPlan,), queue=NAME
        )
        await rt.bus.subscribe(
            subjects.readmit("*"), notifier.on_wave, types=(ReadmitWave,), queue=NAME
        )
        # Not a queue group: every replica hears every Ack and the one holding
        # the notice settles it.
        await rt.bus.subscribe(
            subjects.ack("*"), notifier.on_ack, types=(Ack,), accept_clients=True
        )
        rt.spawn(notifier.retry_loop(), "retries")
        rt.stack.callback(
            lambda: logger.info(
                "notifier dropped %s; %d notices still in flight",
                dict(notifier.dropped),
                len(notifier.tracker),
            )
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
