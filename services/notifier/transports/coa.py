"""CoA-Requests from the notifier: one UDP socket, RFC 5080 retransmissions, verified answers.

:class:`CoaClient` sends each CoA-Request to its client's ``ip``:``coa_port``
and waits for a CoA-ACK or CoA-NAK that verifies under the client's secret
(Response Authenticator and, when present, Message-Authenticator). With no
such answer it retransmits the very same packet (same identifier, same
Request Authenticator, RFC 5080 section 2.2.1) after each wait of its
back-off, and gives up after the last one. Answers that do not verify are
dropped and counted; when an exchange fails they are named in its reason,
since they mostly mean the two ends hold different secrets. While a client's
secret rotates, the request goes under its ``secret`` and the agent answers
under the secret that verified the request, that same one: the answer is
checked under it alone, and the client's ``verify_secrets`` are not needed here.

:class:`CoaTransport` is the notifier's ``radius-coa`` transport on it: one
exchange task per notice, under the client's RADIUS secret, with the RFC
5080 back-off of the notifier's settings (``coa_timeout_s`` doubling up to
``coa_max_timeout_s``, ``coa_retries`` retransmissions of the same packet).
A CoA-ACK settles the notice; a CoA-NAK or no answer fails that try.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.notifier.deliveries import Pending
from services.notifier.transports.protocol import Deliveries, message_of
from services.radius.endpoint import UdpEndpoint
from services.radius.notice import (
    COA_ACK,
    COA_NAK,
    ErrorCause,
    WireError,
    backoff,
    coa_request,
    error_cause,
    rfc5080_rand,
)
from services.radius.packet import dictionary, verified_reply
from services.runtime.config import ClientConfig, NotifierConfig

logger = logging.getLogger(__name__)

Address = tuple[str, int]
OnRetransmit = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class CoaResult:
    """How one CoA exchange ended.

    ``acked``: a verified CoA-ACK came. Otherwise ``code`` is COA_NAK for a
    verified CoA-NAK (with its ``error_cause``) or None for no verified
    answer; ``reason`` says it in words. ``transmissions`` counts the
    packets sent.
    """

    acked: bool
    transmissions: int
    code: int | None = None
    error_cause: int | None = None
    unverified: int = 0
    reason: str = ""


@dataclass
class _Exchange:
    request: Any
    dest: Address
    answer: asyncio.Future[Any]
    unverified: int = 0


@dataclass
class CoaCounters:
    """What the client sent and what came back."""

    sent: int = 0
    retransmitted: int = 0
    acks: int = 0
    naks: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def describe_cause(cause: int | None) -> str:
    """An Error-Cause in words, e.g. ``407 (Invalid-Attribute-Value)``."""
    if cause is None:
        return "no Error-Cause"
    try:
        return f"{cause} ({ErrorCause(cause).name.title().replace('_', '-')})"
    except ValueError:
        return str(cause)


class CoaClient:
    """CoA exchanges with any number of clients from one UDP socket."""

    def __init__(self) -> None:
        self._endpoint: UdpEndpoint | None = None
        self._exchanges: dict[tuple[Address, int], _Exchange] = {}
        self._next_id: dict[Address, int] = {}
        self.counters = CoaCounters()

    async def open(self, bind_ip: str | None = None) -> None:
        """Open the socket (on ``bind_ip`` if given, any port)."""
        if self._endpoint is not None:
            return
        endpoint = UdpEndpoint(self._on_answer, name="CoA")
        await endpoint.open(local_addr=(bind_ip or "0.0.0.0", 0))
        self._endpoint = endpoint

    def close(self) -> None:
        """Close the socket; exchanges in flight end as unanswered."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        for exchange in self._exchanges.values():
            if not exchange.answer.done():
                exchange.answer.cancel()
        self._exchanges.clear()

    def _allocate_id(self, dest: Address) -> int:
        start = self._next_id.get(dest, 0)
        for offset in range(256):
            candidate = (start + offset) % 256
            if (dest, candidate) not in self._exchanges:
                self._next_id[dest] = (candidate + 1) % 256
                return candidate
        raise RuntimeError(f"256 CoA-Requests in flight to {dest[0]}:{dest[1]}")

    async def exchange(
        self,
        request: Any,
        dest: Address,
        waits: Sequence[float],
        on_retransmit: OnRetransmit | None = None,
    ) -> CoaResult:
        """Send ``request`` (a CoAPacket) to ``dest`` until it is answered or ``waits`` run out.

        One transmission per wait; ``on_retransmit(n)`` is awaited before the
        n-th transmission (n >= 2).
        """
        if self._endpoint is None:
            await self.open()
        assert self._endpoint is not None
        if not waits:
            raise ValueError("an exchange needs at least one wait")
        request.id = self._allocate_id(dest)
        raw = request.RequestPacket()
        key = (dest, request.id)
        exchange = _Exchange(request, dest, asyncio.get_running_loop().create_future())
        self._exchanges[key] = exchange
        sent = 0
        try:
            for wait in waits:
                if sent:
                    if on_retransmit is not None:
                        await on_retransmit(sent + 1)
                    self.counters.retransmitted += 1
                if self._endpoint is None:
                    break
                self._endpoint.sendto(raw, dest)
                self.counters.sent += 1
                sent += 1
                try:
                    answer = await asyncio.wait_for(asyncio.shield(exchange.answer), wait)
                except TimeoutError:
                    continue
                return self._result(answer, sent, exchange.unverified)
            reason = f"no answer after {sent} transmissions"
            if exchange.unverified:
                reason += (
                    f"; {exchange.unverified} answers did not verify"
                    " (do both ends hold the same RADIUS secret?)"
                )
            return CoaResult(
                acked=False, transmissions=sent, unverified=exchange.unverified, reason=reason
            )
        finally:
            self._exchanges.pop(key, None)
            if not exchange.answer.done():
                exchange.answer.cancel()

    def _result(self, answer: Any, sent: int, unverified: int) -> CoaResult:
        if answer.code == COA_ACK:
            self.counters.acks += 1
            return CoaResult(acked=True, transmissions=sent, code=COA_ACK, unverified=unverified)
        self.counters.naks += 1
        cause = error_cause(answer)
        return CoaResult(
            acked=False,
            transmissions=sent,
            code=COA_NAK,
            error_cause=cause,
            unverified=unverified,
            reason=f"CoA-NAK, Error-Cause {describe_cause(cause)}",
        )

    def _on_answer(self, data: bytes, addr: Address) -> None:
        if len(data) < 20 or data[0] not in (COA_ACK, COA_NAK):
            self.counters.dropped["not-an-answer"] += 1
            return
        exchange = self._exchanges.get((addr, data[1]))
        if exchange is None:
            self.counters.dropped["unmatched"] += 1
            return
        answer = verified_reply(exchange.request, data, addr)
        if answer is None:
            exchange.unverified += 1
            self.counters.dropped["unverified"] += 1
            logger.debug("CoA answer from %s:%d does not verify", *addr)
            return
        if not exchange.answer.done():
            exchange.answer.set_result(answer)


def coa_budget_s(settings: NotifierConfig) -> float:
    """The longest a CoA exchange can take (its waits with RFC 5080 spread at most)."""
    waits = backoff(settings.coa_timeout_s, settings.coa_retries, settings.coa_max_timeout_s)
    return 1.1 * sum(waits)


class CoaTransport:
    """Notices as CoA-Requests to each client's ``ip``:``coa_port``, one exchange each."""

    name = "radius-coa"

    def __init__(
        self,
        deliveries: Deliveries,
        settings: NotifierConfig,
        clients: Mapping[str, ClientConfig],
        secrets: Mapping[str, bytes],
        *,
        stopping: asyncio.Event,
        drop: Callable[[str], None],
    ) -> None:
        self.deliveries = deliveries
        self.settings = settings
        self.clients = clients
        self.secrets = secrets
        self.stopping = stopping
        self.drop = drop
        self.client = CoaClient()
        self.rand = rfc5080_rand(random.Random())
        self.jobs: asyncio.Queue[str] = asyncio.Queue()
        self.exchanges: dict[str, asyncio.Task[None]] = {}

    async def open(self) -> None:
        await self.client.open()

    async def transmit(self, pending: Pending, client: ClientConfig) -> None:
        await self.deliveries.hold(pending.notice_id, coa_budget_s(self.settings))
        self.jobs.put_nowait(pending.notice_id)

    def settled(self, notice_id: str) -> None:
        exchange = self.exchanges.get(notice_id)
        if exchange is not None:
            exchange.cancel()

    def close(self) -> None:
        self.client.close()

    async def run(self) -> None:
        """Run one CoA exchange per notice handed to it, until the service stops.

        Exchanges still running at shutdown are cancelled; their notices stay
        in the KV bucket and a restarted notifier tries them again.
        """
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    job = asyncio.ensure_future(self.jobs.get())
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
            self.client.close()

    async def _exchange(self, notice_id: str) -> None:
        try:
            await self._run_exchange(notice_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.drop("coa-error")
            logger.exception("CoA exchange of %s failed", notice_id)
            await self.deliveries.exchange_failed(notice_id, time.time())
        finally:
            self.exchanges.pop(notice_id, None)

    async def _run_exchange(self, notice_id: str) -> None:
        pending = self.deliveries.pending(notice_id)
        if pending is None:
            return
        client = self.clients.get(pending.client)
        if client is None:
            await self.deliveries.give_up(notice_id, f"client {pending.client!r} is not configured")
            return
        settings = self.settings
        try:
            request = coa_request(
                message_of(pending), self.secrets[client.id], dictionary(), now=time.time()
            )
        except WireError as exc:
            await self.deliveries.give_up(notice_id, f"cannot carry it in a CoA-Request: {exc}")
            return

        async def on_retransmit(_: int) -> None:
            await self.deliveries.retransmitted(notice_id)

        waits = backoff(
            settings.coa_timeout_s, settings.coa_retries, settings.coa_max_timeout_s, self.rand
        )
        result = await self.client.exchange(
            request, (client.ip, client.coa_port), waits, on_retransmit
        )
        now = time.time()
        if result.acked:
            delivery = await self.deliveries.acked(notice_id, client.id, now)
            if delivery is None:
                return
            logger.info("%s acked %s by CoA-ACK", client.id, notice_id)
            await self.deliveries.report(delivery)
            return
        self.drop("coa-nak" if result.code is not None else "coa-unanswered")
        logger.warning(
            "CoA of %s to %s (%s:%d): %s",
            notice_id,
            client.id,
            client.ip,
            client.coa_port,
            result.reason,
        )
        await self.deliveries.exchange_failed(notice_id, now)
