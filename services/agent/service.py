"""The agent: the AAA-client side of failover, for one or more clients of the config.

For each client it listens on ``notice.<client>`` without any bus key: a
notice is trusted only if its ``Aaa-Auth`` authenticator, under the client's
own shared secret, covers the exact bytes between the named server's IP and
the client's IP; it is decoded only after that. The client's state machine
(:mod:`services.agent.client`) decides; the agent acks on ``ack.<client>``,
asks to return home on ``request.<home>`` when its timer runs out, sends its
RADIUS load to the current server (:mod:`services.agent.traffic`) and reports
``ClientStatus`` on ``status.<client>`` every second, at each switch and at
shutdown. Everything it publishes is signed with the client's own secret.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter

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
    verify_client_authenticator,
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
from services.agent.traffic import Traffic
from services.runtime.bus import Keyring, Signer
from services.runtime.config import ClientConfig, Config, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service

logger = logging.getLogger(__name__)

NAME = "agent"
STATUS_INTERVAL_S = 1.0


def endpoint(server: ServerConfig) -> Endpoint:
    return Endpoint(server=server.id, ip=server.ip, auth_port=server.auth_port)


class ClientAgent:
    """One client: its notices, timers, RADIUS load and status reports."""

    def __init__(
        self,
        rt: Runtime,
        client: ClientConfig,
        secret: bytes,
        servers: dict[str, ServerConfig],
        rng: Uniform,
    ) -> None:
        self.rt = rt
        self.client = client
        self.secret = secret
        self.servers = servers
        self.rng = rng
        self.signer = Signer(client_key_id(client.id), secret)
        self.state: ClientState = new_state(
            client.id,
            endpoint(servers[client.home]),
            return_after_s=client.return_after_s,
            jitter=client.return_jitter,
        )
        self.rejections: Counter[str] = Counter()
        self._rate_mark: tuple[float, int] | None = None
        self.wake = asyncio.Event()
        self.traffic = Traffic(
            client_id=client.id,
            client_ip=client.ip,
            secret=secret,
            user=client.user,
            password=client.password,
            rate=client.rate,
            timeout_s=client.request_timeout_s,
            retries=client.request_retries,
            current=lambda: self.state.current,
        )

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
        """Requests sent per second since the previous status (None at the first)."""
        now, sent = time.monotonic(), self.traffic.counters.sent
        last, self._rate_mark = self._rate_mark, (now, sent)
        if last is None or now - last[0] < 0.5 * STATUS_INTERVAL_S:
            return None
        return (sent - last[1]) / (now - last[0])

    async def publish_status(self) -> None:
        c = self.traffic.counters
        status = ClientStatus(
            client=self.client.id,
            home=self.state.home.server,
            current=self.state.current.server,
            rate=self._measured_rate(),
            sent=c.sent,
            answered=c.answered,
            rejected=c.rejected,
            lost=c.lost,
            notices_rejected=self.notices_rejected,
            source=self.rt.bus.name,
        )
        await self._publish(self.rt.bus.subjects.status(self.client.id), status)

    async def _ack(self, notice: FailoverNotice | ReadmitNotice, answer: Answer) -> None:
        ack = Ack(
            notice_id=notice.id,
            client=self.client.id,
            server=notice.server,
            accepted=answer.accepted,
            now_on=answer.now_on,
            reason=answer.reason,
            source=self.rt.bus.name,
        )
        await self._publish(self.rt.bus.subjects.ack(self.client.id), ack)

    # --- notices --------------------------------------------------------

    def reject(self, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        logger.warning("%s: rejected notice: %s (%s)", self.client.id, reason, detail)

    def verify(self, msg: Msg) -> FailoverNotice | ReadmitNotice | None:
        """The notice in ``msg`` if it is authentic, else None (rejection counted)."""
        headers = msg.headers or {}
        server_id = headers.get(SERVER_HEADER, "")
        server = self.servers.get(server_id)
        if server is None:
            self.reject("unknown-server", f"server header {server_id!r}")
            return None
        try:
            verify_client_authenticator(
                self.secret,
                server.ip,
                self.client.ip,
                msg.data,
                headers.get(AUTH_HEADER),
                legacy=self.client.legacy_authenticator,
            )
        except Rejected as exc:
            self.reject(exc.reason, f"from {server_id}")
            return None
        try:
            event = codec.decode(msg.data, headers.get(codec.CONTENT_TYPE))
        except codec.DecodeError as exc:
            self.reject("undecodable", str(exc))
            return None
        if not isinstance(event, FailoverNotice | ReadmitNotice):
            self.reject("unexpected-type", type(event).__name__)
            return None
        if event.server != server_id:
            self.reject("server-mismatch", f"{event.server!r} under header {server_id!r}")
            return None
        return event

    async def on_message(self, msg: Msg) -> None:
        notice = self.verify(msg)
        if notice is None:
            return
        before = self.state
        step = on_notice(before, notice, time.time(), self.rng)
        self.state = step.state
        if step.rejected is not None:
            self.reject(step.rejected, f"notice {notice.id} seq {notice.seq}")
        elif step.reack:
            logger.info("%s: notice %s again, acked again", self.client.id, notice.id)
        if step.switched:
            logger.info(
                "%s: %s -> %s (%s)",
                self.client.id,
                before.current.server,
                self.state.current.server,
                type(notice).__name__,
            )
        if step.ack is not None:
            await self._ack(notice, step.ack)
        if step.switched:
            await self.publish_status()
        self.wake.set()

    # --- timers, load and status ------------------------------------------

    async def timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_status = loop.time()
        while True:
            self.wake.clear()
            tick = on_time(self.state, time.time(), self.rng)
            self.state = tick.state
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
            if loop.time() >= next_status:
                await self.publish_status()
                next_status = max(next_status + STATUS_INTERVAL_S, loop.time())
            timeout = next_status - loop.time()
            wakeup = next_wakeup(self.state)
            if wakeup is not None:
                timeout = min(timeout, wakeup - time.time())
            if not await self.rt.nap(timeout, self.wake):
                return

    async def main(self) -> None:
        """Run the load and the timers until shutdown, then report a last status."""
        async with asyncio.TaskGroup() as tg:
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
    servers = {s.id: s for s in config.servers}
    keyring = Keyring(signer=None, bus_keys={}, client_keys=secrets)
    rng = random.Random()

    async def setup(rt: Runtime) -> None:
        for client in clients:
            agent = ClientAgent(rt, client, secrets[client.id], servers, rng)
            await rt.bus.subscribe_raw(rt.bus.subjects.notice(client.id), agent.on_message)
            rt.spawn(agent.main(), client.id)
        logger.info("agent runs %d clients", len(clients))

    await run_service(
        NAME, config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url, keyring=keyring
    )
