"""The agent's ICMP listener: notices that arrive as ICMP Echo Requests.

:class:`IcmpListener` reads a raw ICMP socket bound to the client's IP and
picks out the Echo Requests addressed to that IP whose data is a notice frame
(``AAAF`` magic, see :mod:`services.radius.notice`). Each
well-formed frame is handed to ``on_notice(server_id, payload,
authenticator, content_type)``, one at a time in arrival order; the callback
verifies it (:func:`services.agent.receive.verify_notice`) and the agent
acks over the bus. Ordinary pings are left alone (the kernel answers them).

A raw socket needs root or CAP_NET_RAW: without it :meth:`IcmpListener.start`
raises :class:`IcmpUnavailable` with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter

from services.agent.receive import NoticeCallback
from services.radius.icmp import (
    ICMP_ECHO_REQUEST,
    ICMP_FILTER,
    SOL_RAW,
    IcmpUnavailable,
    icmp_filter,
    open_raw_icmp,
    parse_echo_request,
)
from services.radius.notice import NoticeMessage, WireError, is_frame, unframe

logger = logging.getLogger(__name__)

__all__ = ["IcmpListener", "IcmpUnavailable"]

MAX_DATAGRAM = 65_535


class IcmpListener:
    """Receives notices as ICMP Echo Requests to one IP, for one client.

    Use ``await listener.start()`` then ``await listener.close()``, or
    ``async with listener:``. ``counters`` counts by label: ``accepted``,
    ``refused``, ``callback-error``, ``malformed``, ``bad-version``,
    ``bad-checksum``, ``not-a-notice`` (ordinary pings), ``other-address``
    and ``overload``.
    """

    def __init__(self, ip: str, on_notice: NoticeCallback, *, queue_size: int = 256) -> None:
        self.ip = ip
        self.on_notice = on_notice
        self.counters: Counter[str] = Counter()
        self._queue: asyncio.Queue[NoticeMessage] = asyncio.Queue(queue_size)
        self._sock: socket.socket | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the raw socket and start listening; IcmpUnavailable without the capability."""
        if self._sock is not None:
            return
        try:
            sock = open_raw_icmp()
        except OSError as exc:
            raise IcmpUnavailable(
                f"cannot listen for ICMP notices on {self.ip}: raw ICMP socket refused "
                f"({exc.strerror or exc}); the icmp-echo transport needs root or CAP_NET_RAW"
            ) from None
        try:
            sock.bind((self.ip, 0))
            try:
                sock.setsockopt(SOL_RAW, ICMP_FILTER, icmp_filter(ICMP_ECHO_REQUEST))
            except OSError as exc:
                logger.debug("no ICMP_FILTER on the listening socket: %s", exc)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._worker = asyncio.create_task(self._work(), name=f"icmp-listener:{self.ip}")
        logger.info("listening for ICMP Echo notices to %s", self.ip)

    async def close(self) -> None:
        """Stop listening and close the socket."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def __aenter__(self) -> IcmpListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                datagram = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("ICMP listener on %s: %s", self.ip, exc)
                return
            self._datagram(datagram)

    def _datagram(self, datagram: bytes) -> None:
        """Queue the notice in one datagram read off the socket, or count why not.

        Never raises, whatever the datagram holds: a failure the parsers do not
        name is counted ``malformed``, so one frame cannot stop the listener.
        """
        try:
            self._pick(datagram)
        except Exception as exc:
            self.counters["malformed"] += 1
            logger.debug("ICMP datagram to %s dropped: %r", self.ip, exc)

    def _pick(self, datagram: bytes) -> None:
        try:
            echo = parse_echo_request(datagram)
        except WireError as exc:
            self.counters[exc.reason] += 1
            return
        if echo is None:
            return
        if echo.destination != self.ip:
            self.counters["other-address"] += 1
            return
        if not is_frame(echo.data):
            self.counters["not-a-notice"] += 1
            return
        try:
            message = unframe(echo.data)
        except WireError as exc:
            self.counters[exc.reason] += 1
            logger.log(
                logging.WARNING if self.counters[exc.reason] == 1 else logging.DEBUG,
                "ICMP notice from %s dropped: %s",
                echo.source,
                exc,
            )
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.counters["overload"] += 1

    async def _work(self) -> None:
        while True:
            await self._deliver(await self._queue.get())

    async def _deliver(self, message: NoticeMessage) -> None:
        """Hand one queued notice to the agent's callback, and count what it made of it."""
        try:
            accepted = await self.on_notice(
                message.server, message.payload, message.authenticator, message.content_type
            )
        except Exception:
            self.counters["callback-error"] += 1
            logger.exception("handling an ICMP notice to %s failed", self.ip)
            return
        self.counters["accepted" if accepted else "refused"] += 1
