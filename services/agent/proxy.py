"""The agent as a failover-aware RADIUS proxy in front of NAS devices.

NAS devices send Access-Requests to ``proxy.ip``:``proxy.auth_port`` and
Accounting-Requests to ``proxy.acct_port`` (when set), under ``nas_secret``.
Each request is verified (its Message-Authenticator when present, the
Request Authenticator of an Accounting-Request), then re-encoded for the
upstream in use under the client's own secret: User-Password (and any
salt-encrypted attribute) is decrypted with the NAS secret and encrypted
again for the upstream, the packet gets a new Request Authenticator and a
Message-Authenticator, and every other attribute, Proxy-State included, is
kept (:mod:`services.radius.reencode`). It goes out from a socket bound to
the client's IP, one set of sockets per upstream, and waits
``response_window_s`` with no retransmission. With no answer the upstream
may turn zombie (:mod:`services.agent.upstreams`) and the same request is
tried once more on the next alive upstream, as FreeRADIUS fails a request
over to another home server. The reply goes back to the NAS re-encoded under
``nas_secret``: Response Authenticator from the NAS's own request,
Message-Authenticator when the upstream's reply has one (or the NAS's
Access-Request had one).

Accounting goes to the upstream's ``acct_port``, by default ``auth_port + 1``
as a FreeRADIUS ``home_server`` of type ``auth+acct`` has it. Status-Server
sent to the proxy is answered by the proxy itself. A retransmission from a
NAS (same source, id and authenticator) is not forwarded again while its
request is in flight, and gets the same reply again for a few seconds after.
Zombies are probed with Status-Server every ``check_interval_s``.

An EAP conversation stays on the upstream that began it
(:mod:`services.agent.affinity`): a request carrying a ``State`` that an
upstream issued goes to that upstream, whichever one new conversations go
to, waiting for it up to ``conversation_wait_s``; if it has failed (dead,
or no answer in that time) the request is dropped and counted rather than
sent to an upstream that can only reject it; the supplicant starts again.
Requests in flight when the upstream in use changes finish against the
upstream they were sent to, except that a
failover notice sends Access-Requests in no conversation on at once
(:meth:`RadiusProxy.leave`). A request that would exceed 4,096 octets once
re-encoded (FreeRADIUS drops those silently) is refused before it is sent,
so it never counts against an upstream's health; so is a reply that would.
What the proxy received, forwarded, answered, failed over and dropped (by
reason) is counted in :class:`ProxyCounters`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyrad import packet

from schemas.errors import AaaFailoverError
from schemas.events import Endpoint, UpstreamChange
from services.agent.affinity import Conversations
from services.agent.tally import Tallies
from services.agent.upstreams import Transition, UpstreamPool
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.endpoint import UdpEndpoint
from services.radius.packet import ACCESS_CHALLENGE, STATUS_SERVER, Dropped, status_request
from services.radius.reencode import (
    MAX_PACKET_OCTETS,
    MESSAGE_AUTHENTICATOR_OCTETS,
    RADIUS_HEADER_OCTETS,
    STATE,
    decode_request,
    nas_reply,
    status_answer,
    upstream_request,
)
from services.runtime.config import ProxyConfig

logger = logging.getLogger(__name__)

RECENT_REPLY_S = 5.0
"""How long a reply is kept to answer a NAS's retransmission (FreeRADIUS ``cleanup_delay``)."""

RECENT_MAX = 65536
"""At most this many replies are kept for retransmissions."""

MAX_IN_FLIGHT = 255
"""Requests in flight on one upstream socket before another socket is opened (ids are 8 bits)."""

QUIET_DROPS = frozenset({"duplicate", "shutdown"})

RequestKey = tuple[bool, tuple[str, int], int, bytes]


# --- the proxy ------------------------------------------------------------------


@dataclass
class ProxyCounters:
    """What the proxy did with the NAS's packets.

    ``received``: datagrams from NAS devices; ``forwarded``: requests sent
    upstream (a fail-over sends one twice); ``answered``: replies sent back;
    ``failed_over``: requests tried again on another upstream (``moved_in_flight``
    of them at once, when a notice moved the client off their server); ``resent``:
    replies sent again to a retransmission; ``status``: Status-Server
    answered by the proxy; ``dropped``: packets left unanswered, by reason.
    """

    received: int = 0
    forwarded: int = 0
    answered: int = 0
    failed_over: int = 0
    moved_in_flight: int = 0
    resent: int = 0
    status: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class _Left(AaaFailoverError):
    """A request in flight was given up on because a notice moved the client off its server."""


@dataclass
class _Slot:
    client: RadiusClient
    in_flight: int = 0


class _Link:
    """Sockets to one upstream address, bound to the client's IP; one more is opened
    whenever every socket has ``MAX_IN_FLIGHT`` requests waiting."""

    def __init__(self, address: tuple[str, int], secret: bytes, bind_ip: str) -> None:
        self.address = address
        self.secret = secret
        self.bind_ip = bind_ip
        self._slots: list[_Slot] = []

    async def send(self, pkt: packet.Packet, timeout_s: float) -> packet.Packet:
        slot = next((s for s in self._slots if s.in_flight < MAX_IN_FLIGHT), None)
        if slot is None:
            client = await RadiusClient.open(self.address, self.secret, bind_ip=self.bind_ip)
            slot = _Slot(client)
            self._slots.append(slot)
        slot.in_flight += 1
        try:
            return await slot.client.send(pkt, timeout_s=timeout_s)
        finally:
            slot.in_flight -= 1

    def close(self) -> None:
        for slot in self._slots:
            slot.client.close()
        self._slots.clear()


class _Listener:
    """The proxy's UDP endpoint for NAS devices: the auth port or the accounting port."""

    def __init__(self, proxy: RadiusProxy, accounting: bool) -> None:
        self.accounting = accounting
        self.endpoint = UdpEndpoint(
            functools.partial(proxy._on_datagram, self),
            name="proxy acct" if accounting else "proxy auth",
        )

    def send(self, raw: bytes, addr: tuple[str, int]) -> None:
        self.endpoint.sendto(raw, addr)

    def close(self) -> None:
        self.endpoint.close()


def _state_of(pkt: packet.Packet) -> bytes | None:
    """The packet's ``State`` attribute (the first, raw), or None."""
    values = OrderedDict.get(pkt, STATE)
    if not values:
        return None
    value = values[0] if isinstance(values, list) else values
    return bytes(value) if isinstance(value, bytes | bytearray) else None


async def _unless(
    sending: Coroutine[Any, Any, packet.Packet], leaving: asyncio.Event
) -> packet.Packet:
    """The reply ``sending`` brings, unless ``leaving`` is set first: then raise _Left."""
    reply = asyncio.ensure_future(sending)
    left = asyncio.ensure_future(leaving.wait())
    try:
        await asyncio.wait({reply, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not reply.done():
            reply.cancel()
        await asyncio.gather(left, reply, return_exceptions=True)
    if reply.cancelled():
        raise _Left
    return reply.result()


class RadiusProxy:
    """One client's RADIUS proxy: NAS listeners, upstream pool, probes and counters."""

    def __init__(
        self,
        *,
        client_id: str,
        client_ip: str,
        secret: bytes,
        nas_secret: bytes,
        settings: ProxyConfig,
        upstreams: Sequence[Endpoint],
        on_switch: Callable[[Endpoint], None] | None = None,
        tallies: Tallies | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.tallies = tallies if tallies is not None else Tallies()
        self.client_ip = client_ip
        self.secret = secret
        self.nas_secret = nas_secret
        self.settings = settings
        self.on_switch = on_switch
        self.on_change = on_change
        self.pool = UpstreamPool(
            upstreams,
            response_window_s=settings.response_window_s,
            check_interval_s=settings.check_interval_s,
            answers_to_alive=settings.answers_to_alive,
        )
        self.counters = ProxyCounters()
        self._in_use = self.pool.in_use()
        self._listeners: list[_Listener] = []
        self._links: dict[tuple[str, int], _Link] = {}
        self._in_flight: set[RequestKey] = set()
        self._recent: OrderedDict[RequestKey, tuple[float, bytes]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_wake = asyncio.Event()
        self._leaving: dict[str, asyncio.Event] = {}
        self.conversations = Conversations()
        self._closing = False
        self._closed = False

    # --- where requests go ----------------------------------------------

    def in_use(self) -> Endpoint:
        """The upstream new requests go to."""
        return self._in_use

    def prefer(self, endpoint: Endpoint) -> None:
        """Make ``endpoint`` the preferred upstream (the one verified notices chose)."""
        if endpoint.server == self.pool.preferred and endpoint in self.pool.order:
            return
        self.pool.prefer(endpoint)
        logger.info("%s: proxy prefers %s", self.client_id, endpoint.server)
        self._check_switch()

    def leave(self, server: str) -> None:
        """A verified notice moved the client off ``server``, an overloaded server: its
        Access-Requests in flight (those in no EAP conversation, which only ``server`` can
        carry on) are sent on at once to the upstream now in use instead of waiting out
        the response window; whichever answer comes first is the NAS's."""
        if self.pool.retry_target(server) is None:
            return  # nowhere else to send them: they wait for their answer
        event = self._leaving.pop(server, None)
        if event is not None:
            event.set()

    def _check_switch(self) -> None:
        now_in_use = self.pool.in_use()
        if now_in_use == self._in_use:
            return
        before, self._in_use = self._in_use, now_in_use
        logger.warning(
            "%s: proxy now sends to %s (was %s; upstreams %s)",
            self.client_id,
            now_in_use.server,
            before.server,
            self.pool.states(),
        )
        if self.on_switch is not None:
            self.on_switch(now_in_use)

    def _after(self, transition: Transition | None) -> None:
        if transition is None:
            return
        log = logger.info if transition.after == "alive" else logger.warning
        log(
            "%s: upstream %s %s -> %s (%s)",
            self.client_id,
            transition.server,
            transition.before,
            transition.after,
            transition.reason,
        )
        self.tallies.changed(
            UpstreamChange(
                server=transition.server,
                before=transition.before,
                after=transition.after,
                reason=transition.reason,
                at=time.time(),
            )
        )
        if transition.after != "alive":
            self._probe_wake.set()
        self._check_switch()
        if self.on_change is not None:
            self.on_change()

    # --- life -----------------------------------------------------------

    async def start(self) -> None:
        """Bind the NAS listeners (auth port, and accounting port when set); raise OSError."""
        ports = [(self.settings.auth_port, False)]
        if self.settings.acct_port is not None:
            ports.append((self.settings.acct_port, True))
        try:
            for port, accounting in ports:
                listener = _Listener(self, accounting)
                self._listeners.append(listener)
                await listener.endpoint.open(local_addr=(self.settings.ip, port))
        except OSError:
            for listener in self._listeners:
                listener.close()
            raise
        logger.info(
            "%s: proxy listening on %s ports %s, upstreams %s",
            self.client_id,
            self.settings.ip,
            [port for port, _ in ports],
            [e.server for e in self.pool.order],
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Probe zombies until ``stopping`` is set, then stop (see :meth:`close`)."""
        try:
            await self._probe_loop(stopping)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop taking requests, let those in flight finish (bounded), close every socket."""
        if self._closed:
            return
        self._closing = True
        for listener in self._listeners:
            listener.close()
        grace = 2 * self.settings.response_window_s + 0.5
        try:
            if self._tasks:
                _, late = await asyncio.wait(set(self._tasks), timeout=grace)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.gather(*late, return_exceptions=True)
        finally:
            self._closed = True
            for link in self._links.values():
                link.close()
            self._links.clear()
            c = self.counters
            logger.info(
                "%s: proxy stopped: received %d, forwarded %d, answered %d, failed over %d, "
                "resent %d, status %d, dropped %s; upstreams %s",
                self.client_id,
                c.received,
                c.forwarded,
                c.answered,
                c.failed_over,
                c.resent,
                c.status,
                dict(c.dropped),
                self.pool.states(),
            )

    def _track(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- probes ---------------------------------------------------------

    async def _probe_loop(self, stopping: asyncio.Event) -> None:
        interval = self.settings.check_interval_s
        while not stopping.is_set():
            now = time.monotonic()
            for endpoint in self.pool.probes_due(now):
                self._track(self._probe(endpoint), f"{self.client_id}:probe:{endpoint.server}")
            due = self.pool.next_probe_at()
            wait = interval if due is None else min(interval, max(0.0, due - now))
            self._probe_wake.clear()
            waiters = [
                asyncio.ensure_future(stopping.wait()),
                asyncio.ensure_future(self._probe_wake.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)

    async def _probe(self, endpoint: Endpoint) -> None:
        answered = False
        try:
            link = self._link((endpoint.ip, endpoint.auth_port))
            await link.send(
                status_request(self.secret, "None"), timeout_s=self.settings.check_timeout_s
            )
            answered = True
        except RadiusTimeout:
            pass
        except (OSError, RuntimeError) as exc:
            logger.debug("%s: probe of %s failed: %s", self.client_id, endpoint.server, exc)
        self._after(self.pool.probed(endpoint.server, answered, time.monotonic()))

    # --- requests -------------------------------------------------------

    def _link(self, address: tuple[str, int]) -> _Link:
        if self._closed:
            raise RuntimeError("proxy is closed")
        link = self._links.get(address)
        if link is None:
            link = _Link(address, self.secret, self.client_ip)
            self._links[address] = link
        return link

    def _on_datagram(self, listener: _Listener, data: bytes, addr: tuple[str, int]) -> None:
        self.counters.received += 1
        try:
            self._accept(listener, data, addr)
        except Dropped as dropped:
            self._drop(dropped, addr)
        except Exception:
            self.counters.dropped["error"] += 1
            logger.exception("%s: proxy failed on a packet from %s", self.client_id, addr[0])

    def _drop(self, dropped: Dropped, addr: tuple[str, int]) -> None:
        self.counters.dropped[dropped.reason] += 1
        level = logging.DEBUG if dropped.reason in QUIET_DROPS else logging.WARNING
        logger.log(level, "%s: proxy dropped a packet from %s: %s", self.client_id, addr, dropped)

    def _accept(self, listener: _Listener, data: bytes, addr: tuple[str, int]) -> None:
        if self._closing:
            raise Dropped("shutdown")
        if len(data) < 20:
            raise Dropped("malformed", f"{len(data)} octets")
        key: RequestKey = (listener.accounting, addr, data[1], data[4:20])
        if key in self._in_flight:
            raise Dropped("duplicate")
        now = time.monotonic()
        cached = self._recent_reply(key, now)
        if cached is not None:
            listener.send(cached, addr)
            self.counters.resent += 1
            return
        request = decode_request(data, self.nas_secret, accounting=listener.accounting)
        if request.code == STATUS_SERVER:
            listener.send(status_answer(request), addr)
            self.counters.status += 1
            return
        self._in_flight.add(key)
        self._track(self._relay(listener, key, request, addr), f"{self.client_id}:request")

    def _recent_reply(self, key: RequestKey, now: float) -> bytes | None:
        recent = self._recent
        while recent:
            oldest = next(iter(recent))
            if recent[oldest][0] > now and len(recent) <= RECENT_MAX:
                break
            del recent[oldest]
        entry = recent.get(key)
        return None if entry is None else entry[1]

    async def _relay(
        self,
        listener: _Listener,
        key: RequestKey,
        request: packet.Packet,
        addr: tuple[str, int],
    ) -> None:
        try:
            raw = await self._forward(request, listener.accounting, addr)
            if raw is None:
                return
            listener.send(raw, addr)
            self.counters.answered += 1
            self._recent[key] = (time.monotonic() + RECENT_REPLY_S, raw)
        except Dropped as dropped:
            self._drop(dropped, addr)
        except Exception:
            self.counters.dropped["error"] += 1
            logger.exception("%s: proxy failed to relay a request from %s", self.client_id, addr)
        finally:
            self._in_flight.discard(key)

    async def _forward(
        self, request: packet.Packet, accounting: bool, addr: tuple[str, int]
    ) -> bytes | None:
        """The reply for the NAS: from the upstream that holds the request's EAP
        conversation, else from the upstream in use or, failing it, the next alive one."""
        state = None if accounting else _state_of(request)
        holder = None if state is None else self.conversations.holder(state, time.monotonic())
        if holder is not None:
            outcome, answered_by = await self._to_holder(holder, request), holder
        else:
            outcome, answered_by = await self._to_pool(request, accounting, addr)
        sent, reply = outcome
        if state is not None:
            self.conversations.answered(state)
        issued = _state_of(reply)
        if reply.code == ACCESS_CHALLENGE and issued is not None:
            self.conversations.issued(issued, answered_by, time.monotonic())
        raw = nas_reply(request, sent, reply)
        if len(raw) > MAX_PACKET_OCTETS:
            raise Dropped("reply-too-big", f"{len(raw)} octets from {answered_by}")
        return raw

    async def _to_holder(
        self, holder: str, request: packet.Packet
    ) -> tuple[packet.Packet, packet.Packet]:
        """A round of an EAP conversation, to the upstream that holds it and no other: no
        other can go on with it, and its rejection would read as a wrong password. It
        waits for that upstream up to ``conversation_wait_s``, longer than the response
        window: a slow answer still carries the conversation on, while the NAS's
        retransmissions meanwhile are duplicates the proxy does not forward."""
        if self.pool.gone(holder, time.monotonic()):  # a zombie may still answer: only it can
            raise Dropped("conversation-lost", f"{holder}, which holds it, is dead and silent")
        endpoint = self.pool.upstream(holder).endpoint
        wait_s = self.settings.conversation_wait_s
        outcome = await self._attempt(endpoint, request, False, wait_s)
        if outcome is None:
            raise Dropped("conversation-lost", f"no answer from {holder}, which holds it")
        return outcome

    async def _to_pool(
        self, request: packet.Packet, accounting: bool, addr: tuple[str, int]
    ) -> tuple[tuple[packet.Packet, packet.Packet], str]:
        """The upstream in use's reply or, failing it, the next alive one's; and whose."""
        first = self.in_use()
        try:
            outcome = await self._attempt(first, request, accounting)
        except _Left:
            outcome = None
            self.counters.moved_in_flight += 1
        if outcome is not None:
            return outcome, first.server
        target = self.pool.retry_target(first.server)
        if target is None:
            raise Dropped("no-answer", f"from {first.server}, no other upstream alive")
        self.counters.failed_over += 1
        self.tallies.resent(first.server)
        logger.debug(
            "%s: request from %s unanswered by %s, tried on %s",
            self.client_id,
            addr[0],
            first.server,
            target.server,
        )
        outcome = await self._attempt(target, request, accounting)
        if outcome is None:
            raise Dropped("no-answer", f"from {first.server} nor {target.server}")
        return outcome, target.server

    async def _attempt(
        self,
        endpoint: Endpoint,
        request: packet.Packet,
        accounting: bool,
        wait_s: float | None = None,
    ) -> tuple[packet.Packet, packet.Packet] | None:
        """Send ``request`` to ``endpoint`` once: (what was sent, its reply), or None
        after ``wait_s`` (the response window unless given).

        Raises _Left when a notice moves the client off ``endpoint`` before the answer
        (see :meth:`leave`).
        """
        port = endpoint.accounting_port if accounting else endpoint.auth_port
        sent = upstream_request(request, self.secret)
        received = len(request.raw_packet or b"")
        if received > MAX_PACKET_OCTETS - MESSAGE_AUTHENTICATOR_OCTETS:
            # re-encoding adds at most a Message-Authenticator: measure only near the limit
            size = RADIUS_HEADER_OCTETS + len(sent._PktEncodeAttributes())
            if size > MAX_PACKET_OCTETS:
                # refused here, before any upstream could drop it and look dead for it
                raise Dropped("too-big", f"{size} octets for {endpoint.server}")
        sent_at = time.monotonic()
        self.counters.forwarded += 1
        movable = not accounting and STATE not in OrderedDict.keys(request)
        window_s = self.settings.response_window_s
        try:
            sending = self._link((endpoint.ip, port)).send(sent, timeout_s=wait_s or window_s)
            if movable:
                leaving = self._leaving.setdefault(endpoint.server, asyncio.Event())
                reply = await _unless(sending, leaving)
            elif wait_s is not None and wait_s > window_s:
                reply = await self._judged_at_window(endpoint.server, sending, sent_at)
            else:
                reply = await sending
        except RadiusTimeout:
            self.tallies.timed_out(endpoint.server)
            self._after(self.pool.unanswered(endpoint.server, sent_at, time.monotonic()))
            return None
        except (OSError, RuntimeError) as exc:
            logger.warning("%s: cannot send to %s: %s", self.client_id, endpoint.server, exc)
            return None
        now = time.monotonic()
        self.tallies.answered(endpoint.server, now - sent_at)
        self.pool.answered(endpoint.server, now)
        return sent, reply

    async def _judged_at_window(
        self, server: str, sending: Coroutine[Any, Any, packet.Packet], sent_at: float
    ) -> packet.Packet:
        """Wait for a reply longer than the response window, but judge ``server`` at the
        window all the same: one that has fallen silent turns zombie then, and new
        conversations go elsewhere, while this request still waits for its answer."""
        task = asyncio.ensure_future(sending)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.settings.response_window_s)
            if not done:
                self._after(self.pool.unanswered(server, sent_at, time.monotonic()))
            return await task
        finally:
            task.cancel()
