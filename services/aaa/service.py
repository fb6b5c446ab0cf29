"""The reference RADIUS server: every configured server with ``reference`` set.

Each server listens on UDP (ip, auth_port). An Access-Request is decoded in
the event loop under the secret of the client its source address belongs
to, then queued to a real pool of worker threads (:mod:`services.aaa.pool`);
a worker waits the service time, checks the password against
``reference.users`` and hands the reply back to the loop to send. A full
queue drops the request, as an overloaded server does, and a retransmission
of a request still in hand is dropped as a duplicate. Status-Server is
answered from the loop at once, with the pool's figures as FreeRADIUS
statistics. Threads-Active is the workers busy on average over the last
second (``pool.BUSY_WINDOW_S``), not at that instant: clients that send in
lock-step fill every worker for a few milliseconds at a time. The queue
length is read at the instant, as a full queue drops requests at once.
``ServerControl`` events on the bus stall workers or change the service time,
which is how the demo and tests overload a server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyrad import packet

from schemas.events import ServerControl
from services.aaa.packets import (
    ServerFigures,
    access_reply,
    challenge_reply,
    check_password,
    decode,
    state_of,
    status_reply,
)
from services.aaa.pool import WorkerPool
from services.aaa.sessions import ChallengeSessions
from services.radius.endpoint import UdpEndpoint
from services.radius.packet import ACCESS_REQUEST, STATUS_SERVER, Dropped
from services.runtime.config import Config, ConfigError, ServerConfig
from services.runtime.lifecycle import Runtime, ShutdownTrigger, run_service

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 3.0
"""How long shutdown waits for a server's worker threads to end."""

QUIET_DROPS = frozenset({"queue-full", "duplicate"})
"""Drop reasons of an overloaded server: counted, logged at debug level only."""

RequestKey = tuple[tuple[str, int], int, bytes]
Outcome = Literal["accept", "reject", "challenge", "unknown-session"]


@dataclass(frozen=True)
class KnownClient:
    """A client the servers answer, found by its source address."""

    id: str
    secret: bytes


@dataclass
class ServerCounters:
    """What one reference server received, answered and dropped (by reason).

    ``requests`` counts every datagram received, as FreeRADIUS counts its
    ``Total-Access-Requests`` (Status-Server and dropped packets included);
    ``dropped`` counts packets not answered; ``control_dropped`` counts
    ServerControl events that were verified but not applied.
    """

    requests: int = 0
    accepts: int = 0
    rejects: int = 0
    challenges: int = 0
    unknown_sessions: int = 0
    status: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    control_dropped: Counter[str] = field(default_factory=Counter)


class AaaServer:
    """One reference RADIUS server: a UDP endpoint in front of a worker pool."""

    def __init__(
        self,
        server: ServerConfig,
        *,
        clients: Mapping[str, KnownClient],
        status_secret: bytes,
        pid_file: Path | None,
    ) -> None:
        reference = server.reference
        if reference is None:
            raise ValueError(f"server {server.id} has no reference section")
        self.id = server.id
        self.address = (server.ip, server.auth_port)
        self.clients = dict(clients)
        self.status_secret = status_secret
        self.users = dict(reference.users)
        self.sessions = (
            ChallengeSessions(reference.challenge_rounds) if reference.challenge_rounds else None
        )
        self.pid_file = pid_file
        self.pool = WorkerPool(
            f"aaa-{server.id}",
            workers=reference.workers,
            queue_max=reference.queue_max,
            service_time_s=reference.service_time_ms / 1000.0,
        )
        self.counters = ServerCounters()
        self._last_rates = (time.monotonic(), 0, 0)
        self._in_flight: set[RequestKey] = set()
        self._endpoint = UdpEndpoint(self.datagram_received, name=f"aaa {self.id}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- life -----------------------------------------------------------

    async def start(self) -> None:
        """Start the workers, bind the UDP endpoint and write the pid file."""
        self._loop = asyncio.get_running_loop()
        self.pool.start()
        await self._endpoint.open(local_addr=self.address)
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{os.getpid()}\n")
        logger.info(
            "aaa %s listening on %s:%d with %d workers",
            self.id,
            *self.address,
            self.pool.workers,
        )

    async def close(self) -> None:
        """Stop the endpoint, release stalled workers, join them (bounded), remove the pid file."""
        if self._closed:
            return
        self._closed = True
        self._endpoint.close()
        dropped = self.pool.stop()
        if dropped:
            self.counters.dropped["shutdown"] += dropped
        await asyncio.to_thread(self.pool.join, JOIN_TIMEOUT_S)
        self._remove_pid_file()
        logger.info(
            "aaa %s stopped: %d requests, %d accepted, %d rejected, dropped %s, control %s",
            self.id,
            self.counters.requests,
            self.counters.accepts,
            self.counters.rejects,
            dict(self.counters.dropped),
            dict(self.counters.control_dropped),
        )

    def _remove_pid_file(self) -> None:
        if self.pid_file is None:
            return
        try:
            if self.pid_file.read_text().strip() == str(os.getpid()):
                self.pid_file.unlink()
        except OSError as exc:
            logger.debug("pid file %s: %s", self.pid_file, exc)

    # --- figures and control --------------------------------------------

    def _packet_rates(self) -> tuple[int, int]:
        """Requests in and replies out per second since the previous call."""
        now = time.monotonic()
        replies = self.counters.accepts + self.counters.rejects + self.counters.challenges
        then, requests_then, replies_then = self._last_rates
        self._last_rates = (now, self.counters.requests, replies)
        elapsed = now - then
        if elapsed <= 0:
            return 0, 0
        return (
            round((self.counters.requests - requests_then) / elapsed),
            round((replies - replies_then) / elapsed),
        )

    def figures(self) -> ServerFigures:
        """The figures of a Status-Server reply.

        Threads active is the pool's mean of busy workers over its window,
        rounded half up to whole workers (the attribute is an integer).
        """
        stats = self.pool.stats()
        pps_in, pps_out = self._packet_rates()
        return ServerFigures(
            threads_active=math.floor(stats.busy_mean + 0.5),
            threads_total=stats.alive,
            threads_max=stats.workers,
            queue_len=stats.queued,
            requests=self.counters.requests,
            accepts=self.counters.accepts,
            rejects=self.counters.rejects,
            challenges=self.counters.challenges,
            dropped=sum(self.counters.dropped.values()),
            pps_in=pps_in,
            pps_out=pps_out,
        )

    async def on_control(self, event: ServerControl) -> None:
        """Apply a verified ServerControl; fields left None stay as they are."""
        if event.server != self.id:
            self.counters.control_dropped["wrong-server"] += 1
            logger.warning("aaa %s: dropped control for server %r", self.id, event.server)
            return
        stalled, service_time_ms = event.stalled_workers, event.service_time_ms
        if (stalled is not None and stalled < 0) or (
            service_time_ms is not None and not service_time_ms >= 0
        ):
            self.counters.control_dropped["bad-value"] += 1
            logger.warning("aaa %s: dropped control with bad values: %s", self.id, event)
            return
        if stalled is not None:
            self.pool.set_stalled(stalled)
        if service_time_ms is not None:
            self.pool.set_service_time(service_time_ms / 1000.0)
        logger.info(
            "aaa %s: stalled workers %s, service time %s ms",
            self.id,
            "unchanged" if stalled is None else stalled,
            "unchanged" if service_time_ms is None else service_time_ms,
        )

    # --- datagrams ------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._handle(data, addr)
        except Dropped as dropped:
            self.counters.dropped[dropped.reason] += 1
            level = logging.DEBUG if dropped.reason in QUIET_DROPS else logging.WARNING
            logger.log(level, "aaa %s dropped packet from %s: %s", self.id, addr[0], dropped)
        except Exception:
            self.counters.dropped["error"] += 1
            logger.exception("aaa %s failed on a packet from %s", self.id, addr[0])

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            raise Dropped("shutdown")
        # Every datagram counts as an Access-Request, as FreeRADIUS counts them:
        # Status-Server and dropped ones included, though they never count as responses.
        self.counters.requests += 1
        if len(data) < 20:
            raise Dropped("malformed", f"{len(data)} octets")
        code = data[0]
        if code == ACCESS_REQUEST:
            self._access_request(data, addr)
        elif code == STATUS_SERVER:
            self._status_server(data, addr)
        else:
            raise Dropped("unsupported-code", str(code))

    def _status_server(self, data: bytes, addr: tuple[str, int]) -> None:
        """Answer at once, under the status secret or the sending client's own secret."""
        try:
            request = decode(data, self.status_secret)
        except Dropped:
            client = self.clients.get(addr[0])
            if client is None:
                raise
            request = decode(data, client.secret)
        self.counters.status += 1
        self._send(status_reply(request, self.figures()), addr)

    def _access_request(self, data: bytes, addr: tuple[str, int]) -> None:
        client = self.clients.get(addr[0])
        if client is None:
            raise Dropped("unknown-client", addr[0])
        request = decode(data, client.secret)
        key: RequestKey = (addr, request.id, request.authenticator)
        if key in self._in_flight:
            raise Dropped("duplicate")
        if not self.pool.submit(functools.partial(self._work, request, addr, key)):
            raise Dropped("queue-full")
        self._in_flight.add(key)

    def _work(self, request: packet.AuthPacket, addr: tuple[str, int], key: RequestKey) -> None:
        """In a worker thread: decide (or challenge), build the reply, hand it to the loop."""
        step, issued = "decide", None
        if self.sessions is not None:
            step, issued = self.sessions.step(state_of(request), time.monotonic())
        outcome: Outcome
        if step == "challenge" and issued is not None:
            raw, outcome = challenge_reply(request, issued), "challenge"
        elif step == "unknown":
            raw, outcome = access_reply(request, False), "unknown-session"
        else:
            accepted = check_password(request, self.users)
            raw, outcome = access_reply(request, accepted), "accept" if accepted else "reject"
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._answer, raw, addr, key, outcome)
        except RuntimeError:
            logger.debug("aaa %s: loop closed before a reply was sent", self.id)

    def _answer(self, raw: bytes, addr: tuple[str, int], key: RequestKey, outcome: Outcome) -> None:
        self._in_flight.discard(key)
        if outcome == "accept":
            self.counters.accepts += 1
        elif outcome == "challenge":
            self.counters.challenges += 1
        else:
            self.counters.rejects += 1
            if outcome == "unknown-session":
                self.counters.unknown_sessions += 1
        self._send(raw, addr)

    def _send(self, raw: bytes, addr: tuple[str, int]) -> None:
        self._endpoint.sendto(raw, addr)


def known_clients(config: Config) -> dict[str, KnownClient]:
    """Every configured client by its IP address, with its secret."""
    clients: dict[str, KnownClient] = {}
    for client in config.clients:
        if client.ip in clients:
            logger.warning(
                "client %s shares %s with %s: requests from it use %s's secret",
                client.id,
                client.ip,
                clients[client.ip].id,
                clients[client.ip].id,
            )
            continue
        clients[client.ip] = KnownClient(client.id, config.read_secret(client.secret))
    return clients


def probe_client(server: ServerConfig, config: Config) -> dict[str, KnownClient]:
    """The collector as a client of ``server`` when it probes it, by its probes' source address."""
    if server.probe is None:
        return {}
    ip = server.probe.source_ip or "127.0.0.1"
    return {
        ip: KnownClient(f"collector-probe-{server.id}", config.read_secret(server.probe.secret))
    }


def build_servers(config: Config, only: list[str] | None = None) -> list[AaaServer]:
    """The reference servers to run (those named in ``only``, else all); raise ConfigError."""
    with_reference = [s for s in config.select_servers(only) if s.reference is not None]
    if only and len(with_reference) < len(set(only)):
        missing = sorted(set(only) - {s.id for s in with_reference})
        raise ConfigError(f"aaa: no server with a [reference] section named {missing}")
    if not with_reference:
        raise ConfigError("aaa: no server has a [reference] section")
    clients = known_clients(config)
    servers = []
    for server in with_reference:
        assert server.reference is not None
        pid_file = server.reference.pid_file
        servers.append(
            AaaServer(
                server,
                clients=clients | probe_client(server, config),
                status_secret=config.read_secret(server.status_secret),
                pid_file=config.path(pid_file) if pid_file else None,
            )
        )
    return servers


async def run(
    config: Config,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    only: list[str] | None = None,
) -> None:
    """Run the reference servers of ``config`` (or those in ``only``) until shutdown."""
    servers = build_servers(config, only)

    async def close_all() -> None:
        await asyncio.gather(*(server.close() for server in servers))

    async def serve(rt: Runtime) -> None:
        await rt.stopping.wait()
        await close_all()

    async def setup(rt: Runtime) -> None:
        rt.stack.push_async_callback(close_all)
        for server in servers:
            await server.start()
            await rt.bus.subscribe(
                rt.bus.subjects.control(server.id), server.on_control, types=(ServerControl,)
            )
        rt.spawn(serve(rt), "serve")

    await run_service("aaa", config, setup, shutdown_trigger=shutdown_trigger, bus_url=bus_url)
