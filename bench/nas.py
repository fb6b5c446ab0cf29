"""A NAS load generator: Access-Requests at a steady rate, each waited for as a NAS does.

Request ``i`` is due at ``start + i / rate``, so send times are spread evenly
(no bursts; if the loop ever falls behind, the record shows by how much). A
request goes to one target (ip, port, secret), chosen when it is first sent;
it is retransmitted ``retries`` times, ``timeout_s`` apart, with the same id
and Request Authenticator, as a real NAS does, and counts as lost when the
last try has gone unanswered for ``timeout_s``. Packets are built by
``services.radius.packet.access_request`` (PAP password,
Message-Authenticator) and replies verified by pyrad (Response Authenticator,
Message-Authenticator), so a reply to a retransmitted request is matched to
it whichever of its copies it answers, and a reply that belongs to no request
in flight is counted as stray.

Ids are 8 bits: each UDP socket holds up to 256 requests in flight, and
another socket is opened when all are full. A socket hands out its ids in
turn, so an id comes back into use only after the others have, the way NAS
devices reuse them.

Every request leaves a :class:`Request` record (when it was due and sent,
its outcome, when it was answered, and whether only after the NAS timeout,
that is, on a retry); :func:`summarize` turns records into counts and
latency percentiles, without I/O.

Run against a server: ``.venv/bin/python bench/nas.py --target 127.0.0.1:1812
--secret S [--rate 100] [--duration 60]``; it prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyrad import packet  # noqa: E402

from bench.common import percentile  # noqa: E402
from services.radius.packet import ACCESS_ACCEPT, access_request, verified_reply  # noqa: E402

logger = logging.getLogger(__name__)

TIMEOUT_S = 3.0
RETRIES = 2
NAS_IDENTIFIER = "bench-nas"
USERS = (("alice", "wonderland"),)
IDS_PER_SOCKET = 256
START_DELAY_S = 0.05
"""The first request is due this long after ``run`` is called (sockets are open by then)."""

Outcome = Literal["accepted", "rejected", "lost"]


@dataclass(frozen=True)
class Target:
    """Where a request goes: a RADIUS server's auth port and the secret it knows this NAS by."""

    ip: str
    port: int
    secret: bytes

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass
class Request:
    """What became of one Access-Request. Times are ``time.monotonic()`` seconds."""

    index: int
    target: tuple[str, int]
    user: str
    due_at: float
    sent_at: float
    outcome: Outcome = "lost"
    answered_at: float | None = None
    code: int | None = None
    transmissions: int = 1
    late: bool = False
    """Answered only after the NAS timeout had passed, that is, after a retransmission."""

    @property
    def latency_s(self) -> float | None:
        """From the first transmission to the answer."""
        return None if self.answered_at is None else self.answered_at - self.sent_at


@dataclass(frozen=True)
class Summary:
    """Counts and percentiles over a run's records (see :func:`summarize`)."""

    sent: int
    accepted: int
    rejected: int
    lost: int
    answered_late: int
    retransmissions: int
    latency_s: dict[str, float]
    send_lag_s: dict[str, float]
    span_s: float
    rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def summarize(requests: Sequence[Request]) -> Summary:
    """Counts by outcome, answers that came only after the NAS timeout, latency percentiles
    (nearest rank, over answered requests), how far sends lagged behind their schedule, and
    the rate achieved between the first and the last send."""
    answered = [r.latency_s for r in requests if r.latency_s is not None]
    sends = sorted(r.sent_at for r in requests)
    span = sends[-1] - sends[0] if len(sends) > 1 else 0.0
    return Summary(
        sent=len(requests),
        accepted=sum(r.outcome == "accepted" for r in requests),
        rejected=sum(r.outcome == "rejected" for r in requests),
        lost=sum(r.outcome == "lost" for r in requests),
        answered_late=sum(r.late for r in requests if r.outcome != "lost"),
        retransmissions=sum(r.transmissions - 1 for r in requests),
        latency_s=_percentiles(answered),
        send_lag_s=_percentiles([max(0.0, r.sent_at - r.due_at) for r in requests]),
        span_s=span,
        rate=(len(sends) - 1) / span if span > 0 else 0.0,
    )


@dataclass
class _InFlight:
    record: Request
    packet: packet.AuthPacket
    raw: bytes
    socket: _Socket
    timer: asyncio.TimerHandle | None = None


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket and the (up to 256) requests in flight on it, by id."""

    def __init__(self, nas: Nas) -> None:
        self.nas = nas
        self.transport: asyncio.DatagramTransport | None = None
        self.in_flight: dict[int, _InFlight] = {}
        self.next_id = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.nas._on_reply(self, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        logger.debug("NAS socket error: %s", exc)

    def free_id(self) -> int | None:
        """The next id not in flight, in turn; None when all 256 are."""
        if len(self.in_flight) >= IDS_PER_SOCKET:
            return None
        while self.next_id in self.in_flight:
            self.next_id = (self.next_id + 1) % IDS_PER_SOCKET
        chosen = self.next_id
        self.next_id = (self.next_id + 1) % IDS_PER_SOCKET
        return chosen


class Nas:
    """A NAS sending Access-Requests at a steady rate: ``async with Nas() as nas:
    records = await nas.run(target, rate=100, duration_s=60)``."""

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        retries: int = RETRIES,
        users: Sequence[tuple[str, str]] = USERS,
        nas_identifier: str = NAS_IDENTIFIER,
        bind_ip: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or not users:
            raise ValueError("timeout_s must be positive, retries >= 0, users not empty")
        self.timeout_s = timeout_s
        self.retries = retries
        self.users = list(users)
        self.nas_identifier = nas_identifier
        self.bind_ip = bind_ip
        self.attributes = dict(attributes or {})
        self.sockets: list[_Socket] = []
        self.stray_replies = 0
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Nas:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every retransmission timer and close the sockets; requests in flight stay lost."""
        for sock in self.sockets:
            for flight in sock.in_flight.values():
                if flight.timer is not None:
                    flight.timer.cancel()
            sock.in_flight.clear()
            if sock.transport is not None:
                sock.transport.close()
        self.sockets.clear()
        self._outstanding = 0
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._outstanding

    async def run(
        self,
        target: Target | Callable[[int], Target],
        *,
        rate: float,
        count: int | None = None,
        duration_s: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> list[Request]:
        """Send ``count`` requests (or ``rate * duration_s``) at ``rate`` per second, to
        ``target`` or to ``target(i)`` for request ``i``; wait until each is answered or
        lost, and return their records in order. ``stop`` set ends the sending early."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        if count is None:
            if duration_s is None:
                raise ValueError("give count or duration_s")
            count = round(rate * duration_s)
        choose = target if callable(target) else (lambda _i: target)
        loop = asyncio.get_running_loop()
        records: list[Request] = []
        await self._socket()
        start = loop.time() + START_DELAY_S
        # loop.time() is time.monotonic(): records carry that clock
        for i in range(count):
            if stop is not None and stop.is_set():
                break
            due = start + i / rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            records.append(await self._send_new(i, due, choose(i)))
        await self._idle.wait()
        return records

    async def _socket(self) -> _Socket:
        """A socket with a free id, opening one when every socket has 256 requests in flight."""
        for sock in self.sockets:
            if len(sock.in_flight) < IDS_PER_SOCKET:
                return sock
        loop = asyncio.get_running_loop()
        transport, sock = await loop.create_datagram_endpoint(
            lambda: _Socket(self), local_addr=(self.bind_ip or "0.0.0.0", 0)
        )
        sock.transport = transport
        self.sockets.append(sock)
        return sock

    async def _send_new(self, index: int, due: float, target: Target) -> Request:
        sock = await self._socket()
        ident = sock.free_id()
        assert ident is not None
        user, password = self.users[index % len(self.users)]
        pkt = access_request(
            target.secret,
            user,
            password,
            NAS_Identifier=self.nas_identifier,
            **self.attributes,
        )
        pkt.id = ident
        raw = pkt.RequestPacket()
        now = time.monotonic()
        record = Request(index=index, target=target.address, user=user, due_at=due, sent_at=now)
        flight = _InFlight(record, pkt, raw, sock)
        sock.in_flight[ident] = flight
        self._outstanding += 1
        self._idle.clear()
        self._transmit(flight)
        return record

    def _transmit(self, flight: _InFlight) -> None:
        assert flight.socket.transport is not None
        flight.socket.transport.sendto(flight.raw, flight.record.target)
        loop = asyncio.get_running_loop()
        flight.timer = loop.call_later(self.timeout_s, self._on_timeout, flight)

    def _on_timeout(self, flight: _InFlight) -> None:
        flight.timer = None
        if flight.record.transmissions <= self.retries:
            flight.record.transmissions += 1
            self._transmit(flight)
            return
        self._finish(flight)

    def _finish(self, flight: _InFlight) -> None:
        if flight.timer is not None:
            flight.timer.cancel()
            flight.timer = None
        del flight.socket.in_flight[flight.packet.id]
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def _on_reply(self, sock: _Socket, data: bytes, addr: tuple[str, int]) -> None:
        flight = sock.in_flight.get(data[1]) if len(data) >= 20 else None
        if flight is None or addr != flight.record.target:
            self.stray_replies += 1
            return
        reply = verified_reply(flight.packet, data, addr)
        if reply is None:
            # e.g. a late reply to an earlier request that had this id
            self.stray_replies += 1
            return
        record = flight.record
        record.answered_at = time.monotonic()
        record.code = reply.code
        record.outcome = "accepted" if reply.code == ACCESS_ACCEPT else "rejected"
        record.late = record.transmissions > 1
        self._finish(flight)


def _target(text: str, secret: str) -> Target:
    ip, _, port = text.rpartition(":")
    return Target(ip, int(port), secret.encode())


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    target = _target(args.target, args.secret)
    cpu = time.process_time()
    async with Nas(
        timeout_s=args.timeout,
        retries=args.retries,
        users=[(args.user, args.password)],
        nas_identifier=args.nas_identifier,
        bind_ip=args.bind_ip,
    ) as nas:
        records = await nas.run(target, rate=args.rate, duration_s=args.duration)
        stray, sockets = nas.stray_replies, len(nas.sockets)
    summary = summarize(records).as_dict()
    elapsed = records[-1].sent_at - records[0].sent_at if records else 0.0
    return {
        **summary,
        "stray_replies": stray,
        "sockets": sockets,
        "cpu_s": time.process_time() - cpu,
        "cpu_share_of_sending": (time.process_time() - cpu) / elapsed if elapsed else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="IP:PORT of the RADIUS server")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="NAS timeout, s")
    parser.add_argument("--retries", type=int, default=RETRIES)
    parser.add_argument("--user", default=USERS[0][0])
    parser.add_argument("--password", default=USERS[0][1])
    parser.add_argument("--nas-identifier", default=NAS_IDENTIFIER)
    parser.add_argument("--bind-ip", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_main(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
