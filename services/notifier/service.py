"""The notifier: turns failover plans and readmission waves into notices to clients.

Every notice carries the client's own authenticator over its exact bytes
(``Aaa-Auth``) and the server it concerns (``Aaa-Server``), and goes by the
client's ``transport`` only:

- ``nats``: to ``notice.<client>``, also signed with the bus key; the agent
  answers with an Ack on the bus (:mod:`services.notifier.transports.bus`).
- ``radius-coa``: as a CoA-Request (RFC 5176) to the client's ``ip``:``coa_port``
  under its RADIUS secret (:mod:`services.notifier.transports.coa`); a CoA-ACK
  settles it, a CoA-NAK or no answer after the RFC 5080 back-off
  (``coa_timeout_s`` doubling up to ``coa_max_timeout_s``, ``coa_retries``
  retransmissions of the same packet) fails that try.
- ``icmp-echo``: as an ICMP Echo Request to the client's ``ip`` (needs root or
  CAP_NET_RAW); the agent answers with an Ack on the bus
  (:mod:`services.notifier.transports.icmp`).

The notifier holds one object of each transport, all of one protocol
(:class:`services.notifier.transports.protocol.Transport`), and hands each
notice to its client's. What it drops is counted by the bus's one drop path,
so it shows on /metrics as ``aaa_failover_events_dropped``.

Its fate is reported on ``delivery.<client>`` whatever the transport: sent,
retried (again, while no Ack or CoA-ACK comes; each CoA retransmission too),
acked, or failed. Notices in flight are kept in the ``notifier`` KV bucket,
those sent together in chunks of a value each (:mod:`services.notifier.chunks`), so a
restarted notifier goes on retrying them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import nats.errors
import prometheus_client

from schemas.events import (
    Ack,
    Delivery,
    FailoverNotice,
    FailoverPlan,
    ReadmitNotice,
    ReadmitWave,
)
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator
from services.notifier.chunks import Chunks, Stored, notices_of, orphaned
from services.notifier.deliveries import DeliveryTracker, Failed, Pending, Sequencer, notice_id
from services.notifier.transports.bus import BusTransport
from services.notifier.transports.coa import CoaTransport
from services.notifier.transports.icmp import IcmpTransport
from services.notifier.transports.protocol import Transport
from services.runtime.config import ClientConfig, Config, ServerConfig
from services.runtime.durable import consume
from services.runtime.lifecycle import Runtime, ShutdownTrigger, WakeEvent, run_service
from services.runtime.permissions import durable_name
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

SEND_CONCURRENCY = 64
"""KV writes of chunks of notices in flight at once, whatever the plans they belong to."""
PARTS_IN_FLIGHT = 16
"""Plans (or plan parts) handled side by side: the notices of the next part go out while
the last part's are being stored. Waves are handled in order: a client told to wait by
one wave and let back by the next must hear them in that order."""

NAME = "notifier"

Notice = FailoverNotice | ReadmitNotice


def notice_type(notice: Notice) -> str:
    """The wire tag of a notice (``notice.failover`` or ``notice.readmit``)."""
    return str(type(notice).__struct_config__.tag)


class Notifier:
    """The notifier's state: config lookups, sequence numbers, deliveries in flight."""

    def __init__(self, rt: Runtime, store: StateStore[Stored]) -> None:
        self.rt = rt
        self.config = rt.config
        self.store = store
        self.servers = {s.id: s for s in rt.config.servers}
        self.clients = {c.id: c for c in rt.config.clients}
        self.secrets = {c.id: rt.config.read_secret(c.secret) for c in rt.config.clients}
        self.seq = Sequencer()
        self.chunks = Chunks()
        self.tracker = DeliveryTracker(
            ack_timeout_s=rt.config.notifier.ack_timeout_s,
            retries=rt.config.notifier.retries,
            source=rt.bus.name,
        )
        self.wake = WakeEvent()
        self.writes = asyncio.Semaphore(SEND_CONCURRENCY)
        self.unreported: dict[str, Delivery] = {}
        """The ``sent`` reports of the batch being sent, published once all of it went out."""
        drop = rt.bus.counters.drop
        transports: list[Transport] = [
            BusTransport(rt.bus),
            CoaTransport(
                self,
                rt.config.notifier,
                self.clients,
                self.secrets,
                stopping=rt.stopping,
                drop=drop,
            ),
            IcmpTransport(self, drop),
        ]
        self.transports = {t.name: t for t in transports}
        self.deliveries_total = prometheus_client.Counter(
            "aaa_failover_deliveries",
            "Delivery reports of notices, by outcome and the client's transport.",
            ["outcome", "transport"],
            registry=rt.metrics.registry,
        )
        self._counted: dict[tuple[str, str], prometheus_client.Counter] = {}
        """``deliveries_total``'s counter of each outcome and transport, found once."""

    async def open_transports(self) -> None:
        """Open what the configured clients' transports send with, and say what is missing.

        Without raw sockets the icmp-echo transport cannot work: that is said
        once, here, and each ICMP notice then fails at once.
        """
        for name in sorted({c.transport for c in self.clients.values()}):
            await self.transports[name].open()

    def drop(self, reason: str, detail: str) -> None:
        """Drop an input through the bus's one drop path (``aaa_failover_events_dropped``)."""
        self.rt.bus.drop(reason, detail)

    # --- state in the KV bucket -----------------------------------------

    async def load(self) -> None:
        """Take over the notices that were in flight before a restart."""
        for key, value in (await self.store.load_all()).items():
            self._take(key, notices_of(value))
        if self.tracker.pending:
            logger.info("resumed %d notices in flight", len(self.tracker))

    def _take(self, key: str, notices: list[Pending]) -> int:
        """Track the notices of a stored chunk; how many were not tracked already."""
        taken = self.chunks.restore(key, notices)
        for pending in taken:
            self.tracker.restore(pending)
        return len(taken)

    async def _write(self, key: str | None) -> None:
        """Write the chunk ``key`` as it is now (removed once nothing of it is in flight)."""
        if key is None:
            return
        async with self.writes:
            notices = self.chunks.snapshot(key, self.tracker.pending)
            if notices is None:
                return
            if notices:
                if not await self.store.put(key, notices):
                    self.chunks.behind.add(key)  # the store away: tried again next round
            else:
                await self.store.delete(key)

    async def _write_all(self, keys: list[str]) -> None:
        """Write chunks side by side, up to ``SEND_CONCURRENCY`` at once."""
        async with asyncio.TaskGroup() as tg:
            for key in keys:
                tg.create_task(self._write(key))

    async def _forget(self, notice_id: str) -> None:
        """A notice no longer in flight: its chunk written now if it shrank enough."""
        await self._write(self.chunks.removed(notice_id))

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

    async def send_all(
        self, batch: list[tuple[Notice, ClientConfig]], server: ServerConfig, decision: str
    ) -> None:
        """Send a plan's or a wave's notices, then report them sent, then store them as in
        flight, in chunks (:mod:`services.notifier.chunks`).

        The notices go out first, one after the other, so the last client hears
        of the plan after one encoding, two authenticators and one publish per
        notice, not after their reports and KV writes too. Nothing is lost by it: the
        plan or wave is acknowledged to the stream only once this returns, so a
        notifier that dies before its notices are stored is offered it again
        and sends the same notices (same ids, taken once by the agent) again.
        The chunks' writes then go side by side, up to ``SEND_CONCURRENCY`` at once.
        """
        sent: list[Pending] = []
        for notice, client in batch:
            pending, delivery = self._track(notice, client, server, decision)
            self.unreported[pending.notice_id] = delivery
            await self._transmit(pending)
            sent.append(pending)
        # let the parts of a plan handled beside this one send their notices before any
        # part reports and stores its own
        await asyncio.sleep(0)
        for pending in sent:
            unreported = self.unreported.pop(pending.notice_id, None)
            if unreported is not None:
                await self.report(unreported)
        await self._write_all(self.chunks.add(sent))

    def _track(
        self, notice: Notice, client: ClientConfig, server: ServerConfig, decision: str
    ) -> tuple[Pending, Delivery]:
        """Encode ``notice``, sign it for the bus and for its client, and track it with the
        others of ``decision`` (the plan part or wave it comes from)."""
        bus = self.rt.bus
        subject = bus.subjects.notice(client.id)
        payload, headers = bus.encode(subject, notice)
        headers.update(self._authenticate(client, server)(payload))
        return self.tracker.sent(
            notice_id=notice.id,
            notice_type=notice_type(notice),
            client=client.id,
            server=server.id,
            subject=subject,
            payload=payload,
            headers=headers,
            now=time.time(),
            batch=decision,
        )

    async def _transmit(self, pending: Pending) -> None:
        """Send a tracked notice (again) by its client's transport."""
        client = self.clients.get(pending.client)
        if client is None:
            await self.give_up(pending.notice_id, f"client {pending.client!r} is not configured")
            return
        await self.transports[client.transport].transmit(pending, client)

    # --- what the transports tell (transports.protocol.Deliveries) -------

    def pending(self, notice_id: str) -> Pending | None:
        return self.tracker.pending.get(notice_id)

    async def hold(self, notice_id: str, hold_s: float) -> None:
        # stored with the notice right after its transmission (send_all, retry_loop)
        self.tracker.begin_exchange(notice_id, time.time(), hold_s)

    async def retransmitted(self, notice_id: str) -> None:
        delivery = self.tracker.retransmitted(notice_id, time.time())
        if delivery is not None:
            await self.report(delivery)

    async def acked(self, notice_id: str, client: str, now: float) -> Delivery | None:
        delivery = self.tracker.acked(notice_id, client, now)
        if delivery is not None:
            await self._forget(notice_id)
        return delivery

    async def give_up(self, notice_id: str, reason: str) -> None:
        """Fail a notice that cannot be sent at all, and report it."""
        delivery = self.tracker.fail(notice_id, time.time())
        if delivery is None:
            return
        await self._forget(notice_id)
        logger.warning("notice %s to %s failed: %s", notice_id, delivery.client, reason)
        await self.report(delivery)

    async def report(self, delivery: Delivery) -> None:
        """Publish ``delivery`` on ``delivery.<client>``, after the ``sent`` report of its
        notice if that has not gone yet (an answer faster than the rest of its batch)."""
        if delivery.outcome != "sent":
            sent = self.unreported.pop(delivery.notice_id, None)
            if sent is not None:
                await self.report(sent)
        client = self.clients.get(delivery.client)
        transport = client.transport if client is not None else "unknown"
        counted = (delivery.outcome, transport)
        counter = self._counted.get(counted)
        if counter is None:
            counter = self._counted[counted] = self.deliveries_total.labels(*counted)
        counter.inc()
        await self.rt.bus.publish(self.rt.bus.subjects.delivery(delivery.client), delivery)

    async def exchange_failed(self, notice_id: str, now: float) -> None:
        """Schedule a failed exchange's notice for another try, or report it failed."""
        outcome = self.tracker.exchange_failed(notice_id, now)
        if isinstance(outcome, Failed):
            await self._forget(notice_id)
            logger.warning(
                "notice %s to %s failed after %d attempts",
                notice_id,
                outcome.pending.client,
                outcome.pending.attempts,
            )
            await self.report(outcome.delivery)
        elif outcome is not None:
            await self._write(self.chunks.changed(notice_id))
            self.wake.set()

    # --- handlers -------------------------------------------------------

    async def on_plan(self, plan: FailoverPlan) -> None:
        server = self.servers.get(plan.server)
        if server is None:
            self.drop("unknown-server", f"plan {plan.plan_id} for server {plan.server!r}")
            return
        now = time.time()
        valid_until = now + self.config.notifier.notice_validity_s
        batch: list[tuple[Notice, ClientConfig]] = []
        for move in plan.moves:
            client = self.clients.get(move.client)
            if client is None:
                self.drop("unknown-client", f"plan {plan.plan_id} moves {move.client!r}")
                continue
            alternates = []
            for sid in move.alternates:
                if sid not in self.servers or sid == plan.server:
                    self.drop("bad-alternate", f"plan {plan.plan_id} offers {sid!r}")
                    continue
                alternates.append(sid)
            nid = notice_id(plan.id, client.id)
            if nid in self.tracker.pending:
                continue  # this plan, offered again: its notice is in flight already
            notice = FailoverNotice(
                id=nid,
                incident_id=plan.incident_id,
                server=server.id,
                client=client.id,
                alternates=alternates,
                seq=self.seq.next(client.id, now),
                valid_until=valid_until,
                source=self.rt.bus.name,
            )
            batch.append((notice, client))
        await self.send_all(batch, server, plan.id)

    async def on_wave(self, wave: ReadmitWave) -> None:
        server = self.servers.get(wave.server)
        if server is None:
            self.drop("unknown-server", f"wave {wave.wave} for server {wave.server!r}")
            return
        now = time.time()
        valid_until = now + self.config.notifier.notice_validity_s
        batch: list[tuple[Notice, ClientConfig]] = []
        for granted, ids in ((True, wave.clients), (False, wave.deferred)):
            for cid in ids:
                client = self.clients.get(cid)
                if client is None:
                    self.drop("unknown-client", f"wave {wave.wave} of {wave.server} names {cid!r}")
                    continue
                if client.home != server.id:
                    self.drop("not-home", f"wave of {server.id} names {cid!r} of {client.home}")
                    continue
                nid = notice_id(wave.id, client.id)
                if nid in self.tracker.pending:
                    continue  # this wave, offered again: its notice is in flight already
                notice = ReadmitNotice(
                    id=nid,
                    incident_id=wave.incident_id,
                    server=server.id,
                    client=client.id,
                    granted=granted,
                    wave=wave.wave,
                    retry_after_s=0.0 if granted else wave.retry_after_s,
                    seq=self.seq.next(client.id, now),
                    valid_until=valid_until,
                    source=self.rt.bus.name,
                )
                batch.append((notice, client))
        await self.send_all(batch, server, wave.id)

    async def on_ack(self, ack: Ack) -> None:
        delivery = await self.acked(ack.notice_id, ack.client, time.time())
        if delivery is None:
            self.rt.bus.counters.drop("unmatched-ack")
            logger.debug("ack of %s by %s matches nothing in flight", ack.notice_id, ack.client)
            return
        for transport in self.transports.values():
            transport.settled(ack.notice_id)
        logger.info(
            "%s acked %s (accepted=%s, on %s, %s)",
            ack.client,
            ack.notice_id,
            ack.accepted,
            ack.now_on or "-",
            ack.reason or "-",
        )
        await self.report(delivery)

    # --- retries --------------------------------------------------------

    async def adopt_orphans(self) -> None:
        """Now and then, take over the stored notices in flight that no live
        notifier tends (a replica that died holding them)."""
        grace = 2 * self.config.notifier.ack_timeout_s + 1.0
        while await self.rt.sleep(max(grace, 5.0)):
            try:
                stored = await self.store.load_all()
            except (nats.errors.Error, TimeoutError) as exc:
                # the store away (a cluster electing a leader): the next look will do
                logger.warning("could not look for notices of a notifier gone: %r", exc)
                continue
            chunks = {key: notices_of(value) for key, value in stored.items()}
            adopted = orphaned(
                chunks, self.tracker.pending, self.chunks.members, time.time(), grace
            )
            taken = sum(self._take(key, notices) for key, notices in adopted.items())
            if taken:
                logger.info("took over %d notices in flight of a notifier gone", taken)
                self.wake.set()

    async def retry_loop(self) -> None:
        """Re-send unacknowledged notices and give up on them after the last retry."""
        timeout = self.config.notifier.ack_timeout_s
        while True:
            now = time.time()
            changed: set[str] = set()
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
                    await self.report(action.delivery)
                else:
                    await self._transmit(pending)
                    if (key := self.chunks.changed(pending.notice_id)) is not None:
                        changed.add(key)
                    await self.report(action.delivery)
            # each chunk written once a round: what was sent again, and what was answered
            await self._write_all(sorted(changed.union(self.chunks.unwritten())))
            deadline = self.tracker.next_deadline()
            wait = timeout if deadline is None else min(timeout, deadline - time.time())
            self.wake.clear()
            if not await self.rt.nap(max(wait, 0.005), self.wake):
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
        notifier = Notifier(rt, await StateStore.open(rt.bus, NAME, cast("type[Stored]", Stored)))
        await notifier.load()
        await notifier.open_transports()
        subjects = rt.bus.subjects
        # replicas share these consumers: each plan and wave is handled by one of them
        await consume(
            rt.bus,
            subjects.plan("*"),
            notifier.on_plan,
            types=(FailoverPlan,),
            durable=durable_name(NAME, "plan"),
            in_flight=PARTS_IN_FLIGHT,
        )
        await consume(
            rt.bus,
            subjects.readmit("*"),
            notifier.on_wave,
            types=(ReadmitWave,),
            durable=durable_name(NAME, "readmit"),
        )
        # Not a queue group: every replica hears every Ack and the one holding
        # the notice settles it.
        await rt.bus.subscribe(
            subjects.ack("*"), notifier.on_ack, types=(Ack,), accept_clients=True
        )
        rt.spawn(notifier.retry_loop(), "retries")
        rt.spawn(notifier.adopt_orphans(), "orphans")
        for transport in notifier.transports.values():
            rt.spawn(transport.run(), transport.name)
            rt.stack.callback(transport.close)
        # what it dropped is in the bus's counters, logged as the service stops
        rt.stack.callback(
            lambda: logger.info("notifier: %d notices still in flight", len(notifier.tracker))
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
