"""The notifier: turns failover plans and readmission waves into notices to clients.

Every notice carries the client's own authenticator over its exact bytes
(``Aaa-Auth``) and the server it concerns (``Aaa-Server``), and goes by the
client's ``transport`` only:

- ``nats``: to ``notice.<client>``, also signed with the bus key; the agent
  answers with an Ack on the bus.
- ``radius-coa``: as a CoA-Request (RFC 5176) to the client's ``ip``:``coa_port``
  under its RADIUS secret (:mod:`services.notifier.transports`); a CoA-ACK
  settles it, a CoA-NAK or no answer after the RFC 5080 back-off
  (``coa_timeout_s`` doubling up to ``coa_max_timeout_s``, ``coa_retries``
  retransmissions of the same packet) fails that try.
- ``icmp-echo``: as an ICMP Echo Request to the client's ``ip`` (needs root or
  CAP_NET_RAW); the agent answers with an Ack on the bus.

Its fate is reported on ``delivery.<client>`` whatever the transport: sent,
retried (again, while no Ack or CoA-ACK comes; each CoA retransmission too),
acked, or failed. Notices in flight are kept in the ``notifier`` KV bucket,
so a restarted notifier goes on retrying them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable

import prometheus_client

from schemas import codec
from schemas.events import (
    Ack,
    Delivery,
    FailoverNotice,
    FailoverPlan,
    ReadmitNotice,
    ReadmitWave,
)
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator
from services.notifier.deliveries import DeliveryTracker, Failed, Pending, Sequencer
from services.notifier.transports.coa import CoaClient
from services.notifier.transports.icmp import IcmpSender
from services.radius.icmp import IcmpUnavailable
from services.radius.notice import (
    NoticeMessage,
    WireError,
    backoff,
    coa_request,
    frame,
    rfc5080_rand,
)
from services.radius.packet import dictionary
from services.runtime.config import (
    ClientConfig,
    Config,
    ConfigError,
    NotifierConfig,
    ServerConfig,
)
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service
from services.runtime.state import StateStore

logger = logging.getLogger(__name__)

SEND_CONCURRENCY = 256

NAME = "notifier"

Notice = FailoverNotice | ReadmitNotice


def notice_type(notice: Notice) -> str:
    """The wire tag of a notice (``notice.failover`` or ``notice.readmit``)."""
    return str(type(notice).__struct_config__.tag)


def message_of(pending: Pending) -> NoticeMessage:
    """The notice of a delivery in flight, as the CoA and ICMP transports carry it."""
    return NoticeMessage(
        server=pending.server,
        payload=pending.payload,
        authenticator=pending.headers.get(AUTH_HEADER, ""),
        content_type=pending.headers.get(codec.CONTENT_TYPE, codec.JSON_TYPE),
    )


def check_transport_settings(settings: NotifierConfig) -> None:
    """Raise ConfigError for CoA settings no back-off can be made of."""
    if settings.coa_timeout_s <= 0:
        raise ConfigError("notifier.coa_timeout_s must be positive")
    if settings.coa_retries < 0:
        raise ConfigError("notifier.coa_retries must not be negative")
    if settings.coa_max_timeout_s < settings.coa_timeout_s:
        raise ConfigError("notifier.coa_max_timeout_s must be at least coa_timeout_s")


def coa_budget_s(settings: NotifierConfig) -> float:
    """The longest a CoA exchange can take (its waits with RFC 5080 spread at most)."""
    waits = backoff(settings.coa_timeout_s, settings.coa_retries, settings.coa_max_timeout_s)
    return 1.1 * sum(waits)


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
        self.wake = asyncio.Event()
        self.coa = CoaClient()
        self.icmp = IcmpSender()
        self.rand = rfc5080_rand(random.Random())
        self.coa_jobs: asyncio.Queue[str] = asyncio.Queue()
        self.exchanges: dict[str, asyncio.Task[None]] = {}
        self.deliveries_total = prometheus_client.Counter(
            "aaa_failover_deliveries",
            "Delivery reports of notices, by outcome and the client's transport.",
            ["outcome", "transport"],
            registry=rt.metrics.registry,
        )

    async def open_transports(self) -> None:
        """Open the sockets the configured clients' transports need, and say what is missing.

        Without raw sockets the icmp-echo transport cannot work: that is said
        once, here, and each ICMP notice then fails at once.
        """
        transports = {c.transport for c in self.clients.values()}
        if "radius-coa" in transports:
            await self.coa.open()
        if "icmp-echo" in transports:
            try:
                self.icmp.open()
            except IcmpUnavailable as exc:
                self._icmp_unavailable(exc)

    def _icmp_unavailable(self, exc: IcmpUnavailable) -> None:
        if self.dropped["icmp-unavailable"] == 0:
            logger.error("%s", exc)
        self.dropped["icmp-unavailable"] += 1

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

    async def send_all(
        self, batch: list[tuple[Notice, ClientConfig]], server: ServerConfig
    ) -> None:
        """Send a plan's or a wave's notices, up to ``SEND_CONCURRENCY`` at once.

        Each notice is still stored before it goes out; sending them side by
        side lets those KV round trips overlap instead of queueing.
        """
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(notice: Notice, client: ClientConfig) -> None:
            async with limit:
                await self.send(notice, client, server)

        async with asyncio.TaskGroup() as tg:
            for notice, client in batch:
                tg.create_task(one(notice, client))

    async def send(self, notice: Notice, client: ClientConfig, server: ServerConfig) -> None:
        """Send ``notice`` to ``client`` by its transport, track it and report it sent."""
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
        await self._report(delivery)
        await self._transmit(pending)

    async def _transmit(self, pending: Pending) -> None:
        """Send a tracked notice (again) by its client's transport."""
        client = self.clients.get(pending.client)
        if client is None:
            await self._give_up(pending.notice_id, f"client {pending.client!r} is not configured")
            return
        if client.transport == "radius-coa":
            self.tracker.begin_exchange(
                pending.notice_id, time.time(), coa_budget_s(self.config.notifier)
            )
            await self._save(pending)
            self.coa_jobs.put_nowait(pending.notice_id)
        elif client.transport == "icmp-echo":
            await self._send_icmp(pending, client)
        else:
            await self.rt.bus.nc.publish(pending.subject, pending.payload, headers=pending.headers)
            self.rt.bus.counters.published += 1

    async def _give_up(self, notice_id: str, reason: str) -> None:
        """Fail a notice that cannot be sent at all, and report it."""
        delivery = self.tracker.fail(notice_id, time.time())
        if delivery is None:
            return
        await self._forget(notice_id)
        logger.warning("notice %s to %s failed: %s", notice_id, delivery.client, reason)
        await self._report(delivery)

    async def _send_icmp(self, pending: Pending, client: ClientConfig) -> None:
        try:
            data = frame(message_of(pending))
            await self.icmp.send(client.ip, data)
        except IcmpUnavailable as exc:
            self._icmp_unavailable(exc)
            await self._give_up(pending.notice_id, str(exc))
        except WireError as exc:
            await self._give_up(pending.notice_id, f"cannot frame it for ICMP: {exc}")
        except OSError as exc:
            # the ack timeout sends it again
            self.dropped["icmp-send-error"] += 1
            logger.warning("ICMP Echo to %s for %s: %s", client.ip, pending.notice_id, exc)

    async def _report(self, delivery: Delivery) -> None:
        client = self.clients.get(delivery.client)
        transport = client.transport if client is not None else "unknown"
        self.deliveries_total.labels(delivery.outcome, transport).inc()
        await self.rt.bus.publish(self.rt.bus.subjects.delivery(delivery.client), delivery)

    # --- CoA exchanges --------------------------------------------------

    async def coa_loop(self) -> None:
        """Run one CoA exchange per notice handed to it, until the service stops.

        Exchanges still running at shutdown are cancelled; their notices stay
        in the KV bucket and a restarted notifier tries them again.
        """
        stopping = asyncio.ensure_future(self.rt.stopping.wait())
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    job = asyncio.ensure_future(self.coa_jobs.get())
                    await asyncio.wait({job, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not job.done():
                        job.cancel()
                        break
                    notice_id = job.result()
                    self.exchanges[notice_id] = tg.create_task(
                        self._exchange(notice_id), name=f"coa:{notice_id}"
                    )
                for task in list(self.exchanges.values()):
                    task.cancel()
        finally:
            stopping.cancel()
            self.coa.close()

    async def _exchange(self, notice_id: str) -> None:
        try:
            await self._run_exchange(notice_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.dropped["coa-error"] += 1
            logger.exception("CoA exchange of %s failed", notice_id)
            await self._after_exchange_failed(notice_id, time.time())
        finally:
            self.exchanges.pop(notice_id, None)

    async def _run_exchange(self, notice_id: str) -> None:
        pending = self.tracker.pending.get(notice_id)
        if pending is None:
            return
        client = self.clients.get(pending.client)
        if client is None:
            await self._give_up(notice_id, f"client {pending.client!r} is not configured")
            return
        settings = self.config.notifier
        try:
            request = coa_request(
                message_of(pending), self.secrets[client.id], dictionary(), now=time.time()
            )
        except WireError as exc:
            await self._give_up(notice_id, f"cannot carry it in a CoA-Request: {exc}")
            return

        async def on_retransmit(_: int) -> None:
            delivery = self.tracker.retransmitted(notice_id, time.time())
            if delivery is not None:
                await self._report(delivery)

        waits = backoff(
            settings.coa_timeout_s, settings.coa_retries, settings.coa_max_timeout_s, self.rand
        )
        result = await self.coa.exchange(
            request, (client.ip, client.coa_port), waits, on_retransmit
        )
        now = time.time()
        if result.acked:
            delivery = self.tracker.acked(notice_id, client.id, now)
            if delivery is None:
                return
            await self._forget(notice_id)
            logger.info("%s acked %s by CoA-ACK", client.id, notice_id)
            await self._report(delivery)
            return
        self.dropped["coa-nak" if result.code is not None else "coa-unanswered"] += 1
        logger.warning(
            "CoA of %s to %s (%s:%d): %s",
            notice_id,
            client.id,
            client.ip,
            client.coa_port,
            result.reason,
        )
        await self._after_exchange_failed(notice_id, now)

    async def _after_exchange_failed(self, notice_id: str, now: float) -> None:
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
            await self._report(outcome.delivery)
        elif outcome is not None:
            await self._save(outcome)
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
                alternate = self.servers.get(sid)
                if alternate is None or sid == plan.server:
                    self.drop("bad-alternate", f"plan {plan.plan_id} offers {sid!r}")
                    continue
                alternates.append(alternate.endpoint)
            notice = FailoverNotice(
                incident_id=plan.incident_id,
                server=server.id,
                client=client.id,
                alternates=alternates,
                seq=self.seq.next(client.id, now),
                valid_until=valid_until,
                source=self.rt.bus.name,
            )
            batch.append((notice, client))
        await self.send_all(batch, server)

    async def on_wave(self, wave: ReadmitWave) -> None:
        server = self.servers.get(wave.server)
        if server is None:
            self.drop("unknown-server", f"wave {wave.wave} for server {wave.server!r}")
            return
        now = time.time()
        valid_until = now + self.config.notifier.notice_validity_s
        home = server.endpoint
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
                batch.append((notice, client))
        await self.send_all(batch, server)

    async def on_ack(self, ack: Ack) -> None:
        delivery = self.tracker.acked(ack.notice_id, ack.client, time.time())
        exchange = self.exchanges.get(ack.notice_id)
        if delivery is not None and exchange is not None:
            exchange.cancel()
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
                    await self._report(action.delivery)
                else:
                    await self._save(pending)
                    await self._report(action.delivery)
                    await self._transmit(pending)
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
    check_transport_settings(config.notifier)

    async def setup(rt: Runtime) -> None:
        notifier = Notifier(rt, await StateStore.open(rt.bus, NAME, Pending))
        await notifier.load()
        await notifier.open_transports()
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
        rt.spawn(notifier.coa_loop(), "coa")
        rt.stack.callback(notifier.icmp.close)
        rt.stack.callback(
            lambda: logger.info(
                "notifier dropped %s; %d notices still in flight",
                dict(notifier.dropped),
                len(notifier.tracker),
            )
        )

    await run_service(NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
