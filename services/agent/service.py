"""The agent: the AAA-client side of failover, for one or more clients of the config.

For each client it listens on ``notice.<client>`` without any bus key: a
notice is trusted only if its ``Aaa-Auth`` authenticator, under the client's
own shared secret, covers the exact bytes between the named server's IP and
the client's IP; it is decoded only after that. The client's state machine
(:mod:`services.agent.client`) decides; the agent acks on ``ack.<client>``,
asks to return home on ``request.<home>`` when its timer runs out, sends its
RADIUS load to the current server (:mod:`services.agent.traffic`) and reports
``ClientStatus`` on ``status.<client>`` every second, at each switch and at
shutdown. Everything it publishes is signed with the client's own secret;
what it receives verifies under that secret or, while it rotates, one of the
client's ``verify_secrets``.

A client with a ``proxy`` section is also a RADIUS proxy in front of its NAS
devices (:mod:`services.agent.proxy`): notices choose its preferred upstream,
and the proxy fails over by itself when an upstream stops answering, so the
server it reports as ``current`` (and its simulated load goes to) is the
upstream actually in use.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace

import nats.errors
from nats.aio.msg import Msg

from schemas import codec
from schemas.events import (
    Ack,
    ClientStatus,
    Endpoint,
    Event,
    FailoverNotice,
    ReadmitNotice,
    ReadmitRequest,
)
from schemas.signing import (
    AUTH_HEADER,
    SERVER_HEADER,
    Rejected,
    client_key_id,
)
from services.agent.client import (
    Answer,
    ClientState,
    Uniform,
    new_state,
    next_wakeup,
    on_notice,
    on_time,
)
from services.agent.coa import CoaListener
from services.agent.icmp import IcmpListener, IcmpUnavailable
from services.agent.memory import MemoryFile, Unreadable, boot_id, remembered, restored
from services.agent.metrics import PacketCounts, UpstreamMetrics
from services.agent.proxy import RadiusProxy
from services.agent.receive import verify_notice
from services.agent.tally import Tallies
from services.agent.traffic import Traffic
from services.runtime.bus import Keyring, Signer
from services.runtime.config import ClientConfig, Config, ConfigError, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, WakeEvent, run_service

logger = logging.getLogger(__name__)

NAME = "agent"


class ClientAgent:
    """One client: its notices, timers, RADIUS load and status reports."""

    def __init__(
        self,
        rt: Runtime,
        client: ClientConfig,
        secret: bytes,
        servers: dict[str, ServerConfig],
        rng: Uniform,
        *,
        nas_secret: bytes | None = None,
        verify_secrets: Sequence[bytes] = (),
        metrics: UpstreamMetrics | None = None,
        memory: MemoryFile | None = None,
    ) -> None:
        self.rt = rt
        self.client = client
        self.secret = secret
        self.status_interval_s = rt.config.agent.status_interval_s
        # what notices and CoA-Requests verify under: the secret alone, or while it
        # rotates the secret and those that only verify (it signs with ``secret`` alone)
        self.verifying: bytes | tuple[bytes, ...] = (
            (secret, *verify_secrets) if verify_secrets else secret
        )
        self.servers = servers
        # where each server of the configuration is: the only addresses a notice can name
        self.endpoints = {sid: server.endpoint for sid, server in servers.items()}
        self.rng = rng
        self.signer = Signer(client_key_id(client.id), secret)
        self.state: ClientState = new_state(
            client.id,
            servers[client.home].endpoint,
            return_after_s=client.return_after_s,
            jitter=client.return_jitter,
        )
        self.memory = memory
        self._syncing: set[asyncio.Future[None]] = set()
        self._recall()
        self.rejections: Counter[str] = Counter()
        self.tallies = Tallies()
        self.metrics = metrics
        self._rate_mark: tuple[float, int] | None = None
        self._status_mark: float | None = None
        self.wake = WakeEvent()  # the timer loop naps on it with no task of its own
        self._status_due = False
        self.proxy: RadiusProxy | None = None
        if client.proxy is not None:
            if nas_secret is None:
                raise ValueError(f"client {client.id} has a proxy but no NAS secret was given")
            self.proxy = RadiusProxy(
                client_id=client.id,
                client_ip=client.ip,
                secret=secret,
                nas_secret=nas_secret,
                settings=client.proxy,
                upstreams=[servers[s].endpoint for s in (client.home, *client.alternates)],
                on_switch=self._on_proxy_switch,
                tallies=self.tallies,
                on_change=self._on_proxy_change,
            )
        self.traffic = Traffic(
            client_id=client.id,
            client_ip=client.ip,
            secret=secret,
            user=client.user,
            password=client.password,
            rate=client.own_rate,
            timeout_s=client.request_timeout_s,
            retries=client.request_retries,
            current=self.current,
            tallies=self.tallies,
            phase=rng.uniform(0.0, 1.0),
        )

    def current(self) -> Endpoint:
        """Where requests go: the proxy's upstream in use, else the notices' choice."""
        return self.proxy.in_use() if self.proxy is not None else self.state.current

    def _on_proxy_switch(self, now_in_use: Endpoint) -> None:
        self._on_proxy_change()

    def _on_proxy_change(self) -> None:
        """An upstream changed state: the bus hears of it at once."""
        self._status_due = True
        self.wake.set()

    def _follow_notices(self) -> None:
        """Give the proxy the upstream the notices chose."""
        if self.proxy is not None:
            self.proxy.prefer(self.state.current)

    @property
    def notices_rejected(self) -> int:
        return sum(self.rejections.values())

    # --- publishing -----------------------------------------------------

    async def _publish(self, subject: str, event: Event) -> None:
        try:
            await self.rt.bus.publish(subject, event, signer=self.signer)
        except nats.errors.Error as exc:
            logger.warning("%s: cannot publish on %s: %s", self.client.id, subject, exc)

    def _measured_rate(self) -> float | None:
        """Requests per second since the previous status, its own and those it relays.

        None at the first status, or when too little time has passed to tell.
        """
        sent = self.traffic.counters.sent
        if self.proxy is not None:
            sent += self.proxy.counters.accepted
        now = time.monotonic()
        last, self._rate_mark = self._rate_mark, (now, sent)
        if last is None or now - last[0] < 0.5 * self.status_interval_s:
            return None
        return (sent - last[1]) / (now - last[0])

    def _period(self) -> float | None:
        """Seconds since the previous status, None at the first."""
        now = time.monotonic()
        last, self._status_mark = self._status_mark, now
        return None if last is None else now - last

    async def publish_status(self) -> None:
        c = self.traffic.counters
        proxy = self.proxy
        states = dict(proxy.pool.states()) if proxy is not None else {}
        now = time.monotonic()
        held = {s: proxy.conversations.held_by(s, now) for s in states} if proxy else {}
        upstreams, changes = self.tallies.drain(states, held)
        if self.metrics is not None:
            self.metrics.record(self.client.id, upstreams, changes)
        relayed = answered = lost = 0
        if proxy is not None:
            relayed = proxy.counters.accepted
            answered = proxy.counters.answered
            lost = proxy.counters.dropped["no-answer"]
        window = (
            self.client.proxy.response_window_s
            if self.client.proxy is not None
            else self.client.request_timeout_s * (self.client.request_retries + 1)
        )
        status = ClientStatus(
            client=self.client.id,
            home=self.state.home.server,
            current=self.current().server,
            rate=self._measured_rate(),
            sent=c.sent,
            answered=c.answered,
            rejected=c.rejected,
            lost=c.lost,
            notices_rejected=self.notices_rejected,
            relayed=relayed,
            relayed_answered=answered,
            relayed_lost=lost,
            period_s=self._period(),
            response_window_s=window,
            upstreams=upstreams,
            changes=changes,
            source=self.rt.bus.name,
        )
        await self._publish(self.rt.bus.subjects.status(self.client.id), status)

    async def _ack(
        self,
        notice: FailoverNotice | ReadmitNotice,
        answer: Answer,
        draining: int = 0,
        *,
        again: bool = False,
    ) -> None:
        ack = Ack(
            notice_id=notice.id,
            client=self.client.id,
            server=notice.server,
            accepted=answer.accepted,
            now_on=answer.now_on,
            reason=answer.reason,
            draining=draining,
            again=again,
            source=self.rt.bus.name,
        )
        await self._publish(self.rt.bus.subjects.ack(self.client.id), ack)

    # --- notices --------------------------------------------------------

    def _recall(self) -> None:
        """Start from what the client's memory file says, if there is one: where it was, its
        last notice and sequence number, its timers. An unreadable file puts the sequence
        floor at now, so no notice issued before this start is taken."""
        if self.memory is None:
            return
        try:
            saved = self.memory.load(self.client.id)
        except Unreadable:
            floor = int(time.time() * 1_000_000)
            self.state = replace(self.state, last_seq=max(self.state.last_seq, floor))
            return
        if saved is None:
            return
        self.state = restored(self.state, saved, self.endpoints)
        logger.info(
            "%s: remembered: on %s, last notice seq %d",
            self.client.id,
            self.state.current.server,
            self.state.last_seq,
        )

    def _remember(self) -> None:
        """Write down what the client must not forget; a failure is logged and counted (the
        agent goes on: refusing genuine notices would hurt more). The line is written now
        and synced to disk in a thread (see memory.py), so the loop goes on meanwhile, an
        ack after this included."""
        if self.memory is None:
            return
        try:
            self.memory.save(remembered(self.state))
        except OSError as exc:
            self.rt.bus.counters.drop("memory-not-written")
            logger.error("%s: cannot write %s: %s", self.client.id, self.memory.path, exc)
            return
        syncing = self.memory.detach()
        if syncing is not None:
            task = asyncio.ensure_future(asyncio.to_thread(syncing))
            self._syncing.add(task)
            task.add_done_callback(self._syncing.discard)

    def reject(self, reason: str, detail: str) -> None:
        """A notice refused: counted for the status, and on the bus's drop counters (so on
        /metrics as ``aaa_failover_events_dropped``, as every service's dropped events)."""
        self.rejections[reason] += 1
        self.rt.bus.counters.drop(reason)
        logger.warning("%s: rejected notice: %s (%s)", self.client.id, reason, detail)

    async def on_notice(
        self, server_id: str, payload: bytes, authenticator: str | None, content_type: str | None
    ) -> bool:
        """Handle a notice from any transport; True if it was verified and acted on.

        Nothing is decoded before the authenticator under the client's own
        secret (or one of its ``verify_secrets``) checks out
        (:func:`services.agent.receive.verify_notice`).
        """
        try:
            notice = verify_notice(
                self.client,
                self.verifying,
                self.servers,
                server_id,
                payload,
                authenticator,
                content_type,
            )
        except Rejected as exc:
            self.reject(exc.reason, f"from {server_id!r}: {exc.detail}")
            return False
        before = self.state
        was_on = self.current().server
        step = on_notice(before, notice, time.time(), self.rng, self.endpoints)
        self.state = step.state
        self._remember()  # before the ack: what was acked is never forgotten
        self._follow_notices()
        if step.switched and isinstance(notice, FailoverNotice) and self.proxy is not None:
            self.proxy.leave(notice.server)
        if step.rejected is not None:
            self.reject(step.rejected, f"notice {notice.id} seq {notice.seq}")
        elif step.reack:
            logger.info("%s: notice %s again, acked again", self.client.id, notice.id)
        if step.ack is not None:
            draining = 0
            if step.switched and self.proxy is not None:
                draining = self.proxy.conversations.held_by(was_on, time.monotonic())
            await self._ack(notice, step.ack, draining, again=step.reack)
        if step.switched:
            # the ack leaves before the status is built and the switch logged
            await asyncio.sleep(0)
            logger.info(
                "%s: %s -> %s (%s)",
                self.client.id,
                before.current.server,
                self.state.current.server,
                type(notice).__name__,
            )
            self._status_due = False
            await self.publish_status()
        self.wake.set()
        return step.rejected is None

    async def on_message(self, msg: Msg) -> None:
        """A notice over the bus."""
        headers = msg.headers or {}
        await self.on_notice(
            headers.get(SERVER_HEADER, ""),
            msg.data,
            headers.get(AUTH_HEADER),
            headers.get(codec.CONTENT_TYPE),
        )

    async def listen(self, stack: AsyncExitStack) -> Mapping[str, int] | None:
        """Receive notices by the client's transport: the bus, RADIUS CoA or ICMP Echo.

        Returns the listener's counts by outcome (None on the bus, whose drops
        are the bus's own counters)."""
        transport = self.client.transport
        if transport == "nats":
            await self.rt.bus.subscribe_raw(
                self.rt.bus.subjects.notice(self.client.id), self.on_message
            )
            return None
        listener: CoaListener | IcmpListener
        if transport == "radius-coa":
            listener = CoaListener(
                self.client.ip, self.client.coa_port, self.verifying, self.on_notice
            )
        else:
            listener = IcmpListener(self.client.ip, self.on_notice)
        try:
            await listener.start()
        except IcmpUnavailable as exc:
            raise ConfigError(f"client {self.client.id}: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"client {self.client.id}: cannot listen for {transport} notices: {exc}"
            ) from None
        stack.push_async_callback(listener.close)
        return listener.counters

    # --- timers, load and status ------------------------------------------

    async def timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_status = loop.time()
        while True:
            self.wake.clear()
            tick = on_time(self.state, time.time(), self.rng)
            if tick.state != self.state:
                self.state = tick.state
                self._remember()
            self._follow_notices()
            if tick.action == "request-return":
                home = self.state.home.server
                logger.info("%s: asking to return to %s", self.client.id, home)
                request = ReadmitRequest(
                    client=self.client.id, server=home, source=self.rt.bus.name
                )
                await self._publish(self.rt.bus.subjects.request(home), request)
            elif tick.action == "lease-over":
                logger.warning(
                    "%s: no word before the notice expired, back to %s",
                    self.client.id,
                    self.state.home.server,
                )
                await self.publish_status()
            if self._status_due or loop.time() >= next_status:
                self._status_due = False
                await self.publish_status()
                next_status = max(next_status + self.status_interval_s, loop.time())
            timeout = next_status - loop.time()
            wakeup = next_wakeup(self.state)
            if wakeup is not None:
                timeout = min(timeout, wakeup - time.time())
            if not await self.rt.nap(timeout, self.wake):
                return

    async def main(self) -> None:
        """Run the proxy, the load and the timers until shutdown, then report a last status."""
        async with asyncio.TaskGroup() as tg:
            if self.proxy is not None:
                tg.create_task(self.proxy.run(self.rt.stopping), name=f"{self.client.id}:proxy")
            tg.create_task(self.traffic.run(self.rt.sleep), name=f"{self.client.id}:traffic")
            await self.timer_loop()
        await self.publish_status()
        c = self.traffic.counters
        logger.info(
            "%s stopped on %s: sent %d, answered %d, rejected %d, lost %d; notices rejected %s",
            self.client.id,
            self.state.current.server,
            c.sent,
            c.answered,
            c.rejected,
            c.lost,
            dict(self.rejections),
        )


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the agent of every client of ``config`` (or of those in ``only``)."""
    clients = config.select_clients(only)
    secrets = {c.id: config.read_secret(c.secret) for c in clients}
    verify_secrets = {c.id: [config.read_secret(s) for s in c.verify_secrets] for c in clients}
    nas_secrets = {
        c.id: config.read_secret(c.proxy.nas_secret) for c in clients if c.proxy is not None
    }
    servers = {s.id: s for s in config.servers}
    keyring = Keyring(signer=None, bus_keys={}, client_keys=secrets)
    state_dir = config.path(config.agent.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"agent.state_dir {state_dir}: {exc}") from None
    rng = random.Random()

    async def setup(rt: Runtime) -> None:
        metrics = UpstreamMetrics(rt.metrics.registry)
        packets = PacketCounts(rt.metrics.registry)
        boot = boot_id()
        for client in clients:
            agent = ClientAgent(
                rt,
                client,
                secrets[client.id],
                servers,
                rng,
                nas_secret=nas_secrets.get(client.id),
                verify_secrets=verify_secrets[client.id],
                metrics=metrics,
                memory=MemoryFile(state_dir / f"{client.id}.json", boot),
            )
            if agent.memory is not None:
                rt.stack.callback(agent.memory.sync)
            if agent.proxy is not None:
                rt.stack.push_async_callback(agent.proxy.close)
                await agent.proxy.start()
                packets.add(client.id, "proxy", agent.proxy.counters.dropped)
            counts = await agent.listen(rt.stack)
            if counts is not None:
                packets.add(client.id, client.transport, counts)
            rt.spawn(agent.main(), client.id)
        proxies = sum(1 for c in clients if c.proxy is not None)
        logger.info("agent runs %d clients, %d of them as RADIUS proxies", len(clients), proxies)

    await run_service(
        NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url, keyring=keyring
    )
