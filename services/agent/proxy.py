"""The agent as a failover-aware RADIUS proxy in front of NAS devices.

NAS devices send Access-Requests to ``proxy.ip``:``proxy.auth_port`` and
Accounting-Requests to ``proxy.acct_port`` (when set), under ``nas_secret``.
Each request is verified (its Message-Authenticator, which an Access-Request
must carry, the Request Authenticator of an Accounting-Request), then re-encoded for the
upstream in use under the client's own secret: User-Password (and any
salt-encrypted attribute) is decrypted with the NAS secret and encrypted
again for the upstream, the packet gets a new Request Authenticator and a
Message-Authenticator, and every other attribute, Proxy-State included, is
kept (:mod:`services.radius.reencode`). It goes out from a socket bound to
the client's IP, at most ``max_upstream_sockets`` per upstream, and waits
``response_window_s`` with no retransmission. With no answer the upstream
may turn zombie (:mod:`services.agent.upstreams`) and the same request is
tried once more on the next alive upstream, as FreeRADIUS fails a request
over to another home server. The reply goes back to the NAS re-encoded under
``nas_secret``: Response Authenticator from the NAS's own request, and a
Message-Authenticator, first, in every answer to an Access-Request.

Accounting goes to the upstream's ``acct_port``, by default ``auth_port + 1``
as a FreeRADIUS ``home_server`` of type ``auth+acct`` has it. Status-Server
sent to the proxy is answered by the proxy itself. A retransmission from a
NAS (same source, id and authenticator) is not forwarded again while its
request is in flight, and gets the same reply again for a few seconds after.
Zombies are probed with Status-Server every ``check_interval_s``. Between
probes the proxy's loop sleeps until the next is due; with no upstream socket
open and no warning held back it has no timer at all, so that an idle proxy
costs nothing however many share the process (it is woken when an upstream
stops being alive, a probe ends, a first upstream socket is opened or a first
warning held back).

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

Hardened as FreeRADIUS 3.2.5 and later are against BlastRADIUS
(CVE-2024-3596): datagrams from outside the NAS allowlist are dropped
(:class:`NasFilter`); an Access-Request needs a valid Message-Authenticator
unless its NAS is listed as unable to send one, and then it may carry no
Proxy-State; every answer to an Access-Request goes to the NAS with a
Message-Authenticator first; and an upstream's reply to an Access-Request
without a valid Message-Authenticator is refused and ignored, as FreeRADIUS
ignores it, so the request still waits for a valid one. Everything is
bounded: requests in flight (``max_in_flight``, beyond it ``overload``),
sockets per upstream (``max_upstream_sockets``, idle ones closed after
``socket_idle_s``), replies kept for retransmissions (:class:`RecentReplies`),
conversations (:mod:`services.agent.affinity`); and warnings about dropped
packets are rate-limited (:class:`~services.runtime.ratelimit.LogLimiter`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import AaaFailoverError
from schemas.events import Endpoint, UpstreamChange
from services.agent.affinity import Conversations
from services.agent.tally import Tallies
from services.agent.upstreams import WINDOW_SLACK_S, Transition, UpstreamPool
from services.radius.client import RadiusTimeout
from services.radius.endpoint import UdpEndpoint
from services.radius.packet import (
    ACCESS_CHALLENGE,
    STATUS_SERVER,
    Dropped,
    status_request,
)
from services.radius.reencode import (
    MAX_PACKET_OCTETS,
    Message,
    Outgoing,
    Sent,
    decode_request,
    nas_reply,
    outgoing,
    status_answer,
    upstream_request,
    verify_reply,
)
from services.runtime.config import ProxyConfig
from services.runtime.lifecycle import WakeEvent, doze
from services.runtime.ratelimit import LogLimiter

logger = logging.getLogger(__name__)

RECENT_REPLY_S = 5.0
"""How long a reply is kept to answer a NAS's retransmission (FreeRADIUS ``cleanup_delay``)."""

RECENT_MAX = 65536
"""At most this many replies are kept for retransmissions..."""

RECENT_MAX_OCTETS = 16 * 1024 * 1024
"""...and at most this many octets of them; the oldest go first."""

IDS_PER_SOCKET = 256
"""Requests in flight on one upstream socket: RADIUS ids are 8 bits."""

LOG_INTERVAL_S = 10.0
"""Warnings about dropped packets: the first of each reason per this long, then a count."""

QUIET_DROPS = frozenset({"duplicate", "shutdown"})

UPSTREAM_DROPS = frozenset(
    {
        "upstream-malformed",
        "upstream-stray",
        "upstream-invalid",
        "upstream-no-message-authenticator",
    }
)
"""Reasons a datagram from an upstream was refused (the others are the NAS's datagrams)."""

REFUSED_REPLY = {
    "malformed": "upstream-malformed",
    "no-message-authenticator": "upstream-no-message-authenticator",
}
"""The reason an upstream's reply is counted under, by the reason it did not verify
(:func:`~services.radius.reencode.verify_reply`); any other is ``upstream-invalid``."""

RequestKey = tuple[bool, tuple[str, int], int, bytes]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


# --- what the proxy takes, and what it keeps (pure) ----------------------------------


def _address(host: str) -> Address | None:
    """``host`` (a datagram's source) as an address, IPv4-mapped IPv6 as IPv4; None if not one."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _networks(entries: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def default_nas_addresses(proxy_ip: str, client_ip: str) -> tuple[Network, ...]:
    """Where NAS datagrams may come from when ``nas_addresses`` is not set: the client's
    own ``ip`` (the NAS as the farm knows it), the proxy's ``ip`` (a NAS on the agent's
    host), and all of loopback when the proxy listens on loopback or on every address
    (then a NAS on this host sends from loopback)."""
    found: list[Network] = []
    for host in (client_ip, proxy_ip):
        address = _address(host)
        if address is not None and not address.is_unspecified:
            found.append(ipaddress.ip_network(address))
    listening = _address(proxy_ip)
    if listening is None or listening.is_loopback or listening.is_unspecified:
        found.extend(LOOPBACK)
    return tuple(dict.fromkeys(found))


VERDICTS_KEPT = 1024
"""Sources whose verdict a NAS filter keeps (all forgotten when full: spoofed sources
cannot grow it)."""


class NasFilter:
    """Which sources the proxy takes datagrams from, and which of them may send
    Access-Requests without Message-Authenticator (``nas_without_message_authenticator``).

    Each source's verdict is kept, so a datagram costs a dict lookup rather than an
    address parse and a network scan."""

    def __init__(self, allowed: Sequence[Network], unsigned: Sequence[Network] = ()) -> None:
        if not allowed:
            raise ValueError("a NAS filter needs at least one address or network")
        self.allowed = tuple(allowed)
        self.unsigned = tuple(unsigned)
        self._verdicts: dict[str, tuple[bool, bool]] = {}

    @classmethod
    def of(cls, settings: ProxyConfig, client_ip: str) -> NasFilter:
        allowed = (
            _networks(settings.nas_addresses)
            if settings.nas_addresses is not None
            else default_nas_addresses(settings.ip, client_ip)
        )
        return cls(allowed, _networks(settings.nas_without_message_authenticator))

    def allows(self, host: str) -> bool:
        return self.verdict(host)[0]

    def requires_message_authenticator(self, host: str) -> bool:
        return self.verdict(host)[1]

    def verdict(self, host: str) -> tuple[bool, bool]:
        """Whether ``host`` may send, and whether it must sign its Access-Requests."""
        verdict = self._verdicts.get(host)
        if verdict is None:
            address = _address(host)
            verdict = (
                address is not None and any(address in net for net in self.allowed),
                address is None or not any(address in net for net in self.unsigned),
            )
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict


class RecentReplies:
    """Replies kept to answer a NAS's retransmissions: each for ``ttl_s``, at most
    ``max_entries`` and ``max_octets`` of them, the oldest forgotten first. The caller's
    clock, passed in."""

    def __init__(
        self,
        ttl_s: float = RECENT_REPLY_S,
        max_entries: int = RECENT_MAX,
        max_octets: int = RECENT_MAX_OCTETS,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_octets = max_octets
        self.octets = 0
        self._replies: OrderedDict[RequestKey, tuple[float, bytes]] = OrderedDict()
        self._due = math.inf  # when the oldest reply expires, or earlier: none is older

    def __len__(self) -> int:
        return len(self._replies)

    def _expire(self, now: float) -> None:
        replies = self._replies
        while replies:
            oldest, (expires, raw) = next(iter(replies.items()))
            if (
                expires > now
                and len(replies) <= self.max_entries
                and self.octets <= self.max_octets
            ):
                self._due = expires
                return
            del replies[oldest]
            self.octets -= len(raw)
        self._due = math.inf

    def get(self, key: RequestKey, now: float) -> bytes | None:
        if now >= self._due:
            self._expire(now)
        entry = self._replies.get(key)
        return None if entry is None else entry[1]

    def put(self, key: RequestKey, raw: bytes, now: float) -> None:
        replies = self._replies
        old = replies.pop(key, None)
        if old is not None:
            self.octets -= len(old[1])
        expires = now + self.ttl_s
        replies[key] = (expires, raw)
        self.octets += len(raw)
        if expires < self._due:
            self._due = expires
        if now >= self._due or len(replies) > self.max_entries or self.octets > self.max_octets:
            self._expire(now)


# --- the proxy ------------------------------------------------------------------


@dataclass
class ProxyCounters:
    """What the proxy did with the NAS's packets.

    ``received``: datagrams from NAS devices; ``accepted``: requests taken to
    relay; ``forwarded``: requests sent upstream (a fail-over sends one twice);
    ``answered``: replies sent back; ``failed_over``: requests tried again on
    another upstream (``moved_in_flight`` of them at once, when a notice moved
    the client off their server); ``resent``: replies sent again to a
    retransmission; ``status``: Status-Server answered by the proxy;
    ``dropped``: packets left unanswered, by reason, and the upstreams'
    datagrams refused (the reasons in ``UPSTREAM_DROPS``).

    Every datagram from a NAS ends once: answered, resent, status, or dropped
    for a reason outside ``UPSTREAM_DROPS``; until then it is in flight
    (:meth:`RadiusProxy.in_flight`).
    """

    received: int = 0
    accepted: int = 0
    forwarded: int = 0
    answered: int = 0
    failed_over: int = 0
    moved_in_flight: int = 0
    resent: int = 0
    status: int = 0
    sockets_opened: int = 0
    sockets_closed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def settled(self) -> int:
        """The NAS's datagrams the proxy is done with: answered, resent, status or dropped."""
        refused = sum(n for reason, n in self.dropped.items() if reason not in UPSTREAM_DROPS)
        return self.answered + self.resent + self.status + refused


class _Left(AaaFailoverError):
    """A request in flight was given up on because a notice moved the client off its server."""


Refused = Callable[[str, str], None]


class _Attempt:
    """A request's first attempt on the upstream in use, waited for with no task: it stands
    in its socket's ``pending`` (and a move's watched set) where a future would, and goes on
    by itself when ended, to answer the NAS (:meth:`RadiusProxy._answered`) or to try the
    request once more (:meth:`RadiusProxy._unanswered`), or to let it go (``cancel``, when
    its socket is closed). Its response window is watched by the proxy's one timer for
    every first attempt (:meth:`RadiusProxy._expire_attempts`), not a timer of its own."""

    __slots__ = (
        "addr",
        "endpoint",
        "finished",
        "key",
        "listener",
        "proxy",
        "request",
        "sent",
        "sent_at",
        "sock",
        "state",
        "watched",
    )

    def __init__(
        self,
        proxy: RadiusProxy,
        listener: _Listener,
        key: RequestKey,
        request: Message,
        addr: tuple[str, int],
        endpoint: Endpoint,
        sock: _Socket,
        sent: Sent,
        sent_at: float,
        state: bytes | None,
    ) -> None:
        self.proxy = proxy
        self.listener = listener
        self.key = key
        self.request = request
        self.addr = addr
        self.endpoint = endpoint
        self.sock = sock
        self.sent = sent
        self.sent_at = sent_at
        self.state = state
        self.finished = False
        self.watched: set[Waiter] | None = None

    def done(self) -> bool:
        return self.finished

    def set_result(self, reply: Message) -> None:
        self.proxy._answered(self, reply, self.end())

    def set_exception(self, exc: BaseException) -> None:
        self.proxy._unanswered(self, exc, self.end())

    def cancel(self) -> bool:
        self.end()
        self.proxy._finish(self.key)
        return True

    def expire(self) -> None:
        if not self.finished:
            address = self.sock.endpoint.name
            self.set_exception(RadiusTimeout(f"no reply ({address})"))

    def end(self) -> float:
        """Out of its socket's ``pending`` and watched set, and, with those ended before it,
        out of the proxy's first attempts in order; the time now."""
        self.finished = True
        attempts = self.proxy._attempts
        while attempts and attempts[0].finished:
            attempts.popleft()
        if self.watched is not None:
            self.watched.discard(self)
        now = time.monotonic()
        pending = self.sock.pending
        pending.pop(self.sent.id, None)
        if not pending:
            self.sock.idle_since = now
        return now


Waiter = asyncio.Future[Message] | _Attempt
"""What waits for a reply in a socket's ``pending``: a future, or a first attempt."""


class _Socket:
    """One UDP socket to an upstream (connected, so only its datagrams arrive), bound to
    the client's IP, with up to 256 requests in flight matched by id."""

    def __init__(self, on_refused: Refused, name: str) -> None:
        self.on_refused = on_refused
        self.endpoint = UdpEndpoint(self._on_reply, name=name, addresses_as_given=True)
        self.pending: dict[int, tuple[Sent, bool, Waiter]] = {}
        self.idle_since = time.monotonic()
        self._next_id = 0

    def allocate(self) -> int:
        for _ in range(IDS_PER_SOCKET):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % IDS_PER_SOCKET
            if candidate not in self.pending:
                return candidate
        raise RuntimeError("no free id on the socket")  # the caller checks for room first

    def close(self) -> None:
        self.endpoint.close()
        for _, _, waiter in list(self.pending.values()):  # an attempt leaves it as it ends
            if not waiter.done():
                waiter.cancel()
        self.pending.clear()

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 20:
            self.on_refused("upstream-malformed", f"{len(data)} octets from {addr[0]}")
            return
        entry = self.pending.get(data[1])
        if entry is None or entry[2].done():
            self.on_refused("upstream-stray", f"id {data[1]} from {addr[0]}: none waits for it")
            return
        sent, require_ma, future = entry
        try:
            reply = verify_reply(sent, data, require_message_authenticator=require_ma)
        except Dropped as refused:
            # ignored, as FreeRADIUS ignores it: a valid reply may still come in the window
            reason = REFUSED_REPLY.get(refused.reason, "upstream-invalid")
            self.on_refused(reason, f"reply from {addr[0]}: {refused}")
            return
        future.set_result(reply)


class _Link:
    """Sockets to one upstream address, bound to the client's IP: requests share the first
    socket with a free id, another is opened when every one is full, up to ``max_sockets``,
    and a socket with nothing in flight for ``idle_s`` is closed (:meth:`sweep`)."""

    def __init__(
        self,
        address: tuple[str, int],
        bind_ip: str,
        *,
        max_sockets: int,
        on_refused: Refused,
        counters: ProxyCounters,
    ) -> None:
        self.address = address
        self.bind_ip = bind_ip
        self.max_sockets = max_sockets
        self.on_refused = on_refused
        self.counters = counters
        self.sockets: list[_Socket] = []
        self.sending = 0
        self._opening = asyncio.Lock()

    def _with_room(self) -> _Socket | None:
        for sock in self.sockets:
            if len(sock.pending) < IDS_PER_SOCKET:
                return sock
        return None

    async def _socket(self) -> _Socket:
        """A socket with a free id when none had one: another send may have opened one
        meanwhile, else one is opened (up to ``max_sockets``)."""
        async with self._opening:
            sock = self._with_room()
            if sock is not None:
                return sock
            if len(self.sockets) >= self.max_sockets:
                raise Dropped(
                    "overload",
                    f"{self.max_sockets} sockets to {self.address[0]}:{self.address[1]} are full",
                )
            sock = _Socket(self.on_refused, f"proxy to {self.address[0]}:{self.address[1]}")
            await sock.endpoint.open(local_addr=(self.bind_ip, 0), remote_addr=self.address)
            self.sockets.append(sock)
            self.counters.sockets_opened += 1
            return sock

    async def send(
        self,
        request: Outgoing,
        timeout_s: float,
        *,
        require_ma: bool = False,
        watched: set[Waiter] | None = None,
    ) -> tuple[Sent, Message]:
        """Send ``request`` once, with the id of the socket it goes out on; return it as
        sent and its verified reply. Raise RadiusTimeout, or Dropped (``overload``) when
        every socket allowed is full. While it waits, the reply's future is in
        ``watched``: whoever holds that set may end the wait with an exception (a move
        off the server, :meth:`RadiusProxy.leave`).

        The wait is the reply's future itself, with a timer: no task per request."""
        self.sending += 1
        try:
            sock = self._with_room() or await self._socket()
            sent = request.seal(sock.allocate())
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Message] = loop.create_future()
            sock.pending[sent.id] = (sent, require_ma, future)
            timer = loop.call_later(timeout_s, self._expire, future)
            if watched is not None:
                watched.add(future)
            try:
                sock.endpoint.sendto(sent.raw)
                return sent, await future
            finally:
                timer.cancel()
                if watched is not None:
                    watched.discard(future)
                sock.pending.pop(sent.id, None)
                if not sock.pending:
                    sock.idle_since = time.monotonic()
        finally:
            self.sending -= 1

    def _expire(self, future: asyncio.Future[Message]) -> None:
        if not future.done():
            future.set_exception(
                RadiusTimeout(f"no reply from {self.address[0]}:{self.address[1]}")
            )

    def sweep(self, now: float, idle_s: float) -> int:
        """Close every socket with nothing in flight for ``idle_s``; how many."""
        idle = [s for s in self.sockets if not s.pending and now - s.idle_since >= idle_s]
        for sock in idle:
            sock.close()
            self.sockets.remove(sock)
        self.counters.sockets_closed += len(idle)
        return len(idle)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.counters.sockets_closed += len(self.sockets)
        self.sockets.clear()


class _WakingLog(LogLimiter):
    """The proxy's rate-limited warnings: the first kind to open a window wakes the probe
    loop, which logs each window's count once it is over (:meth:`LogLimiter.flush`)."""

    def __init__(self, wake: asyncio.Event) -> None:
        super().__init__(logger, interval_s=LOG_INTERVAL_S)
        self.wake = wake

    def log(self, level: int, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        idle = not len(self)
        logged = super().log(level, key, msg, *args, **kwargs)
        if idle and len(self):
            self.wake.set()
        return logged


class _Listener:
    """The proxy's UDP endpoint for NAS devices: the auth port or the accounting port."""

    def __init__(self, proxy: RadiusProxy, accounting: bool) -> None:
        self.accounting = accounting
        self.endpoint = UdpEndpoint(
            functools.partial(proxy._on_datagram, self),
            name="proxy acct" if accounting else "proxy auth",
            addresses_as_given=True,
        )

    def send(self, raw: bytes, addr: tuple[str, int]) -> None:
        self.endpoint.sendto(raw, addr)

    def close(self) -> None:
        self.endpoint.close()


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
        self.nas = NasFilter.of(settings, client_ip)
        self.unsigned_upstreams = frozenset(settings.upstreams_without_message_authenticator)
        self._probe_wake = WakeEvent()
        self.log: LogLimiter = _WakingLog(self._probe_wake)
        self._in_use = self.pool.in_use()
        self._listeners: list[_Listener] = []
        self._links: dict[tuple[str, int], _Link] = {}
        self._in_flight: set[RequestKey] = set()
        self._recent = RecentReplies()
        self._tasks: set[asyncio.Task[None]] = set()
        self._leaving: dict[str, set[Waiter]] = {}
        self._drained: asyncio.Future[None] | None = None
        self._abandon = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attempts: deque[_Attempt] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self.conversations = Conversations()
        self._request_task = f"{client_id}:request"
        self._closing = False
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests from NAS devices taken and not yet answered or dropped."""
        return len(self._in_flight)

    def upstream_sockets(self) -> int:
        """Sockets open to upstreams now."""
        return sum(len(link.sockets) for link in self._links.values())

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
        for waiting in list(self._leaving.pop(server, ())):  # an attempt leaves it as it ends
            if not waiting.done():
                waiting.set_exception(_Left())

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
        self._loop = asyncio.get_running_loop()
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
            "%s: proxy listening on %s ports %s for NAS %s, upstreams %s",
            self.client_id,
            self.settings.ip,
            [port for port, _ in ports],
            [str(net) for net in self.nas.allowed],
            [e.server for e in self.pool.order],
        )
        if self.nas.unsigned:
            logger.warning(
                "%s: proxy takes Access-Requests without Message-Authenticator from %s "
                "(vulnerable to BlastRADIUS, CVE-2024-3596: upgrade them)",
                self.client_id,
                [str(net) for net in self.nas.unsigned],
            )
        if self.unsigned_upstreams:
            logger.warning(
                "%s: proxy takes replies without Message-Authenticator from %s "
                "(vulnerable to BlastRADIUS, CVE-2024-3596: upgrade them)",
                self.client_id,
                sorted(self.unsigned_upstreams),
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
        deadline = time.monotonic() + grace
        try:
            if self._in_flight:
                self._drained = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(self._drained, grace)
                except TimeoutError:
                    self._abandon = True  # an attempt ending now is not tried again
            if self._tasks:
                wait_s = max(0.0, deadline - time.monotonic())
                _, late = await asyncio.wait(set(self._tasks), timeout=wait_s)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.gather(*late, return_exceptions=True)
        finally:
            self._abandon = True
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            self._closed = True
            for link in self._links.values():
                link.close()
            self._links.clear()
            self.log.flush(force=True)
            c = self.counters
            logger.info(
                "%s: proxy stopped: received %d, accepted %d, forwarded %d, answered %d, "
                "failed over %d, resent %d, status %d, dropped %s; upstreams %s",
                self.client_id,
                c.received,
                c.accepted,
                c.forwarded,
                c.answered,
                c.failed_over,
                c.resent,
                c.status,
                dict(c.dropped),
                self.pool.states(),
            )

    def _track(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- probes ---------------------------------------------------------

    async def _probe_loop(self, stopping: asyncio.Event) -> None:
        """Send each probe when it is due; close idle upstream sockets and log the counts of
        warnings held back every ``check_interval_s`` while there are any. Between, sleep
        until the next of these is due or ``_probe_wake`` is set: with none due, no timer."""
        interval = self.settings.check_interval_s
        while not stopping.is_set():
            self._probe_wake.clear()
            now = time.monotonic()
            self._sweep(now)
            for endpoint in self.pool.probes_due(now):
                self._track(self._probe(endpoint), f"{self.client_id}:probe:{endpoint.server}")
            due = self.pool.next_probe_at()
            wait = None if due is None else max(0.0, due - now)
            if self._links or len(self.log):
                wait = interval if wait is None else min(wait, interval)
            await doze(wait, stopping, self._probe_wake)

    def _sweep(self, now: float) -> None:
        """Close upstream sockets idle for ``socket_idle_s``, forget links left with none,
        and log the counts of warnings held back."""
        idle_s = self.settings.socket_idle_s
        for address, link in list(self._links.items()):
            link.sweep(now, idle_s)
            if not link.sockets and not link.sending:  # a send may be opening its first
                del self._links[address]
        self.log.flush()

    async def _probe(self, endpoint: Endpoint) -> None:
        answered = False
        try:
            link = self._link((endpoint.ip, endpoint.auth_port))
            # a probe's answer only says the upstream is there: FreeRADIUS 3.2.1 answers
            # Status-Server on its auth port with an unsigned Access-Reject
            probe = outgoing(status_request(self.secret, "None").RequestPacket(), self.secret)
            await link.send(probe, timeout_s=self.settings.check_timeout_s)
            answered = True
        except RadiusTimeout:
            pass
        except (OSError, RuntimeError, Dropped) as exc:
            logger.debug("%s: probe of %s failed: %s", self.client_id, endpoint.server, exc)
        self._after(self.pool.probed(endpoint.server, answered, time.monotonic()))
        self._probe_wake.set()  # the loop sleeps until this upstream's next probe too

    # --- requests -------------------------------------------------------

    def _link(self, address: tuple[str, int]) -> _Link:
        if self._closed:
            raise RuntimeError("proxy is closed")
        link = self._links.get(address)
        if link is None:
            link = _Link(
                address,
                self.client_ip,
                max_sockets=self.settings.max_upstream_sockets,
                on_refused=self._refused,
                counters=self.counters,
            )
            self._links[address] = link
            self._probe_wake.set()  # to be swept once idle
        return link

    def _refused(self, reason: str, detail: str) -> None:
        """An upstream's datagram was refused: counted, and logged at a bounded rate."""
        self.counters.dropped[reason] += 1
        self.log.warning(
            f"{self.client_id} {reason}", "%s: proxy refused %s: %s", self.client_id, reason, detail
        )

    def _on_datagram(self, listener: _Listener, data: bytes, addr: tuple[str, int]) -> None:
        """Every datagram from a NAS: answered at once, taken to relay, or dropped and counted."""
        self.counters.received += 1
        try:
            self._accept(listener, data, addr)
        except Dropped as dropped:
            self._drop(dropped, addr)
        except Exception:
            self.counters.dropped["error"] += 1
            self.log.error(
                f"{self.client_id} error",
                "%s: proxy failed on a packet from %s",
                self.client_id,
                addr[0],
                exc_info=True,
            )

    def _drop(self, dropped: Dropped, addr: tuple[str, int]) -> None:
        reason = dropped.reason
        self.counters.dropped[reason] += 1
        if reason in QUIET_DROPS:
            logger.debug("%s: proxy dropped a packet from %s: %s", self.client_id, addr, dropped)
            return
        self.log.warning(
            f"{self.client_id} {reason}",
            "%s: proxy dropped a packet from %s: %s",
            self.client_id,
            addr[0],
            dropped,
        )

    def _accept(self, listener: _Listener, data: bytes, addr: tuple[str, int]) -> None:
        if self._closing:
            raise Dropped("shutdown")
        allowed, must_sign = self.nas.verdict(addr[0])
        if not allowed:
            raise Dropped("unknown-nas", f"{addr[0]} is not in nas_addresses")
        if len(data) < 20:
            raise Dropped("malformed", f"{len(data)} octets")
        key: RequestKey = (listener.accounting, addr, data[1], data[4:20])
        if key in self._in_flight:
            raise Dropped("duplicate")
        now = time.monotonic()
        cached = self._recent.get(key, now)
        if cached is not None:
            listener.send(cached, addr)
            self.counters.resent += 1
            return
        request = decode_request(
            data,
            self.nas_secret,
            accounting=listener.accounting,
            require_message_authenticator=must_sign,
        )
        if request.code == STATUS_SERVER:
            listener.send(status_answer(request, accounting=listener.accounting), addr)
            self.counters.status += 1
            return
        if len(self._in_flight) >= self.settings.max_in_flight:
            raise Dropped("overload", f"{len(self._in_flight)} requests in flight")
        self.counters.accepted += 1
        self._in_flight.add(key)
        try:
            started = self._first_attempt(listener, key, request, addr)
        except BaseException:
            self._finish(key)
            raise
        if not started:
            self._track(self._relay(listener, key, request, addr), self._request_task)

    def _finish(self, key: RequestKey) -> None:
        """A request taken is done with: answered, dropped, or let go at shutdown."""
        in_flight = self._in_flight
        in_flight.discard(key)
        if not in_flight and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _first_attempt(
        self, listener: _Listener, key: RequestKey, request: Message, addr: tuple[str, int]
    ) -> bool:
        """Send ``request`` to the upstream in use, to be waited for with no task
        (:class:`_Attempt`), when it needs none: it is in no EAP conversation an upstream
        holds and a socket to the upstream in use has a free id. False when it needs one
        (nothing sent: the caller relays it with a task, :meth:`_relay`).

        As :meth:`_attempt` and :meth:`_Link.send` do it, the first attempt of
        :meth:`_to_pool`: the same checks, counts and response window."""
        accounting = listener.accounting
        state = None if accounting else request.state
        if state is not None and self.conversations.holder(state, time.monotonic()) is not None:
            return False
        endpoint = self._in_use
        port = endpoint.accounting_port if accounting else endpoint.auth_port
        link = self._links.get((endpoint.ip, port))
        loop = self._loop
        if link is None or loop is None or self._closed:
            return False
        sock = link._with_room()
        if sock is None:
            return False
        copy = upstream_request(request, self.secret)
        if copy.size > MAX_PACKET_OCTETS:
            # refused here, before any upstream could drop it and look dead for it
            raise Dropped("too-big", f"{copy.size} octets for {endpoint.server}")
        sent_at = time.monotonic()
        self.counters.forwarded += 1
        sent = copy.seal(sock.allocate())
        attempt = _Attempt(self, listener, key, request, addr, endpoint, sock, sent, sent_at, state)
        require_ma = endpoint.server not in self.unsigned_upstreams
        sock.pending[sent.id] = (sent, require_ma, attempt)
        self._attempts.append(attempt)
        if self._expiry is None:
            self._expiry = loop.call_later(self.settings.response_window_s, self._expire_attempts)
        if state is None and not accounting:  # movable: a move off the server ends its wait
            attempt.watched = watched = self._watched(endpoint.server)
            watched.add(attempt)
        try:
            sock.endpoint.sendto(sent.raw)
        except (OSError, RuntimeError) as exc:
            attempt.set_exception(exc)
        return True

    def _expire_attempts(self) -> None:
        """The one timer of every first attempt: those whose response window is over (they
        are in the order they were sent, each with the same window) end unanswered; it is
        set again for the oldest one still waiting, if any. With replies coming, it goes
        off about once a window."""
        self._expiry = None
        attempts = self._attempts
        window_s = self.settings.response_window_s
        now = time.monotonic()
        while attempts:
            oldest = attempts[0]
            if not oldest.finished and now - oldest.sent_at < window_s - WINDOW_SLACK_S:
                break
            attempts.popleft()
            if not oldest.finished:
                oldest.expire()
        if attempts and self._loop is not None:
            wait_s = max(0.0, attempts[0].sent_at + window_s - now)
            self._expiry = self._loop.call_later(wait_s, self._expire_attempts)

    def _answered(self, attempt: _Attempt, reply: Message, now: float) -> None:
        """A first attempt's verified reply: the answer to the NAS."""
        server = attempt.endpoint.server
        try:
            self.tallies.answered(server, now - attempt.sent_at)
            self.pool.answered(server, now)
            raw = self._for_nas(attempt.request, attempt.state, attempt.sent, reply, server)
            attempt.listener.endpoint.sendto(raw, attempt.addr)
            self.counters.answered += 1
            self._recent.put(attempt.key, raw, now)
        except Dropped as dropped:
            self._drop(dropped, attempt.addr)
        except Exception:
            self._failed(attempt.addr)
        finally:
            self._finish(attempt.key)

    def _unanswered(self, attempt: _Attempt, exc: BaseException, now: float) -> None:
        """A first attempt ended with no reply (the response window over, a move off its
        server, a socket error): judged as :meth:`_attempt` judges it, then the request is
        tried once more as :meth:`_to_pool` tries it, with a task."""
        first = attempt.endpoint
        try:
            if isinstance(exc, RadiusTimeout):
                self.tallies.timed_out(first.server)
                self._after(self.pool.unanswered(first.server, attempt.sent_at, now))
            elif isinstance(exc, _Left):
                self.counters.moved_in_flight += 1
            else:
                self._cannot_send(first, exc)
        except Exception:
            self._failed(attempt.addr)
            self._finish(attempt.key)
            return
        if self._abandon:  # the proxy has stopped waiting for requests in flight
            self._finish(attempt.key)
            return
        self._track(
            self._relay(attempt.listener, attempt.key, attempt.request, attempt.addr, first),
            self._request_task,
        )

    def _failed(self, addr: tuple[str, int]) -> None:
        self.counters.dropped["error"] += 1
        self.log.error(
            f"{self.client_id} error",
            "%s: proxy failed to relay a request from %s",
            self.client_id,
            addr[0],
            exc_info=True,
        )

    def _cannot_send(self, endpoint: Endpoint, exc: BaseException) -> None:
        self.log.warning(
            f"{self.client_id} cannot send {endpoint.server}",
            "%s: cannot send to %s: %s",
            self.client_id,
            endpoint.server,
            exc,
        )

    async def _relay(
        self,
        listener: _Listener,
        key: RequestKey,
        request: Message,
        addr: tuple[str, int],
        failed: Endpoint | None = None,
    ) -> None:
        """Relay ``request`` and answer the NAS, with a task: when the first attempt needs
        one (:meth:`_first_attempt`), or after it went unanswered by ``failed``."""
        try:
            raw = await self._forward(request, listener.accounting, addr, failed)
            listener.send(raw, addr)
            self.counters.answered += 1
            self._recent.put(key, raw, time.monotonic())
        except Dropped as dropped:
            self._drop(dropped, addr)
        except Exception:
            self._failed(addr)
        finally:
            self._finish(key)

    async def _forward(
        self,
        request: Message,
        accounting: bool,
        addr: tuple[str, int],
        failed: Endpoint | None = None,
    ) -> bytes:
        """The reply for the NAS: from the upstream that holds the request's EAP
        conversation, else from the upstream in use or, failing it, the next alive one
        (only the next one when ``failed``, the upstream in use, has already failed it)."""
        state = None if accounting else request.state
        holder = None
        if state is not None and failed is None:
            holder = self.conversations.holder(state, time.monotonic())
        if holder is not None:
            outcome, answered_by = await self._to_holder(holder, request), holder
        else:
            outcome, answered_by = await self._to_pool(request, accounting, addr, failed)
        sent, reply = outcome
        return self._for_nas(request, state, sent, reply, answered_by)

    def _for_nas(
        self,
        request: Message,
        state: bytes | None,
        sent: Sent,
        reply: Message,
        answered_by: str,
    ) -> bytes:
        """``answered_by``'s verified ``reply`` to ``sent`` as the NAS's answer to
        ``request`` (in the EAP conversation of ``state``, if any: carried on, or begun,
        and noted)."""
        if state is not None:
            self.conversations.answered(state)
        if reply.code == ACCESS_CHALLENGE:
            issued = reply.state
            if issued is not None:
                self.conversations.issued(issued, answered_by, time.monotonic())
        raw = nas_reply(request, sent, reply)
        if len(raw) > MAX_PACKET_OCTETS:
            raise Dropped("reply-too-big", f"{len(raw)} octets from {answered_by}")
        return raw

    async def _to_holder(self, holder: str, request: Message) -> tuple[Sent, Message]:
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
        self,
        request: Message,
        accounting: bool,
        addr: tuple[str, int],
        failed: Endpoint | None = None,
    ) -> tuple[tuple[Sent, Message], str]:
        """The upstream in use's reply or, failing it, the next alive one's; and whose.
        Only the next one's when ``failed``, the upstream in use, has already failed it."""
        if failed is None:
            first = self.in_use()
            try:
                outcome = await self._attempt(first, request, accounting)
            except _Left:
                outcome = None
                self.counters.moved_in_flight += 1
            if outcome is not None:
                return outcome, first.server
        else:
            first = failed
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
        request: Message,
        accounting: bool,
        wait_s: float | None = None,
    ) -> tuple[Sent, Message] | None:
        """Send ``request`` to ``endpoint`` once: (what was sent, its reply), or None
        after ``wait_s`` (the response window unless given).

        Raises _Left when a notice moves the client off ``endpoint`` before the answer
        (see :meth:`leave`).
        """
        port = endpoint.accounting_port if accounting else endpoint.auth_port
        copy = upstream_request(request, self.secret)
        if copy.size > MAX_PACKET_OCTETS:
            # refused here, before any upstream could drop it and look dead for it
            raise Dropped("too-big", f"{copy.size} octets for {endpoint.server}")
        sent_at = time.monotonic()
        self.counters.forwarded += 1
        movable = not accounting and request.state is None
        window_s = self.settings.response_window_s
        require_ma = endpoint.server not in self.unsigned_upstreams
        try:
            watched = self._watched(endpoint.server) if movable else None
            sending = self._link((endpoint.ip, port)).send(
                copy, wait_s or window_s, require_ma=require_ma, watched=watched
            )
            if movable:
                outcome = await sending
            elif wait_s is not None and wait_s > window_s:
                outcome = await self._judged_at_window(endpoint.server, sending, sent_at)
            else:
                outcome = await sending
        except RadiusTimeout:
            self.tallies.timed_out(endpoint.server)
            self._after(self.pool.unanswered(endpoint.server, sent_at, time.monotonic()))
            return None
        except (OSError, RuntimeError) as exc:
            self._cannot_send(endpoint, exc)
            return None
        now = time.monotonic()
        self.tallies.answered(endpoint.server, now - sent_at)
        self.pool.answered(endpoint.server, now)
        return outcome

    def _watched(self, server: str) -> set[Waiter]:
        """The replies awaited from ``server`` that a move off it ends (:meth:`leave`)."""
        watched = self._leaving.get(server)
        if watched is None:
            watched = self._leaving[server] = set()
        return watched

    async def _judged_at_window(
        self, server: str, sending: Coroutine[Any, Any, tuple[Sent, Message]], sent_at: float
    ) -> tuple[Sent, Message]:
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
