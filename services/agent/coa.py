"""The agent's RADIUS CoA listener (RFC 5176): notices that arrive as CoA-Requests.

:class:`CoaListener` listens on the client's ``ip``:``coa_port`` and answers
every CoA-Request it can authenticate:

- The Request Authenticator and a Message-Authenticator must verify under the
  client's RADIUS secret (while it rotates, under one of its secrets, each
  tried in turn: its ``secret``, then its ``verify_secrets``; the answer goes
  under the one that verified, which is the one the sender holds). A request
  that does not (wrong secret, a wrong Message-Authenticator, none at all) is
  discarded silently, as RFC 5176 section 3.5 requires, and counted
  (``bad-authenticator``, ``missing-message-authenticator``): a NAK would
  tell an attacker that the port is there and give it a packet under the
  secret to study.
- An authenticated request must carry an Event-Timestamp (RFC 5176 section
  3.4, against replays): without one it gets a CoA-NAK with Error-Cause 402
  (Missing-Attribute), counted ``missing-event-timestamp``; one outside
  ``timestamp_window_s`` of the local clock gets 404 (Invalid-Request),
  counted ``stale-timestamp``.
- The notice is reassembled from its ``AAA-Failover-Notice`` attributes (402
  if it or its server or authenticator attribute is missing) and handed to
  ``on_notice(server_id, payload, authenticator, content_type)``: True means
  accepted (CoA-ACK), False refused (CoA-NAK, Error-Cause 407,
  Invalid-Attribute-Value); a callback that raises gets 506
  (Resources-Unavailable).
- A retransmission (same source, identifier and Request Authenticator,
  RFC 5080 section 2.2.2) gets the answer already sent, or is dropped while
  the first copy is still being handled; it never reaches the callback twice.
  A request discarded silently leaves nothing behind: its copy again is
  judged again, never answered.
- Whatever the datagram holds, nothing it does to the decoder escapes: a
  packet pyrad cannot read, or whose attributes fail to decode, is counted
  ``malformed`` and discarded silently.

Every answer carries a Message-Authenticator. Requests are handled one at a
time in arrival order. Each reason is logged as a warning the first time and
at debug level after (the counters, on /metrics, count every one): a flood
of forged packets does not flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

from pyrad import packet
from pyrad.dictionary import Dictionary

from services.agent.receive import NoticeCallback
from services.radius.endpoint import UdpEndpoint
from services.radius.notice import (
    COA_NAK,
    COA_REQUEST,
    EVENT_TIMESTAMP,
    ErrorCause,
    WireError,
    read_coa_notice,
)
from services.radius.packet import dictionary as project_dictionary

logger = logging.getLogger(__name__)

Address = tuple[str, int]
_Key = tuple[Address, int, bytes]


class CoaListener:
    """Receives notices as CoA-Requests on one UDP address, for one client.

    Use ``await listener.start()`` then ``await listener.close()``, or
    ``async with listener:``. ``counters`` counts what happened by label:
    ``accepted``, ``refused``, ``bad-authenticator``,
    ``missing-message-authenticator``, ``missing-event-timestamp``,
    ``stale-timestamp``, ``missing-attribute``, ``bad-attribute``, ``callback-error``,
    ``duplicate``, ``malformed``, ``unexpected-code``, ``overload``, and the
    answers sent (``ack-sent``, ``nak-sent``).
    """

    def __init__(
        self,
        ip: str,
        port: int,
        secret: bytes | Sequence[bytes],
        on_notice: NoticeCallback,
        *,
        timestamp_window_s: float | None = 300.0,
        duplicate_window_s: float = 60.0,
        queue_size: int = 256,
        radius_dictionary: Dictionary | None = None,
    ) -> None:
        self.ip = ip
        self.port = port
        self.secrets: tuple[bytes, ...] = (secret,) if isinstance(secret, bytes) else tuple(secret)
        if not self.secrets:
            raise ValueError("a CoA listener needs a secret")
        self.on_notice = on_notice
        self.timestamp_window_s = timestamp_window_s
        self.duplicate_window_s = duplicate_window_s
        self.dictionary = radius_dictionary or project_dictionary()
        self.counters: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[bytes, Address, _Key]] = asyncio.Queue(queue_size)
        self._recent: OrderedDict[_Key, tuple[float, bytes | None]] = OrderedDict()
        self._endpoint: UdpEndpoint | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def address(self) -> Address:
        """The address it listens on (the real port once started, if ``port`` was 0)."""
        bound = None if self._endpoint is None else self._endpoint.address
        return (self.ip, self.port) if bound is None else bound

    async def start(self) -> None:
        """Bind the UDP socket and start answering; OSError if the address is taken."""
        if self._endpoint is not None:
            return
        endpoint = UdpEndpoint(self._received, name="CoA listener")
        await endpoint.open(local_addr=(self.ip, self.port))
        self._endpoint = endpoint
        self._worker = asyncio.create_task(self._work(), name=f"coa-listener:{self.ip}")
        logger.info("listening for CoA notices on %s:%d", *self.address)

    async def close(self) -> None:
        """Stop answering and close the socket."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def __aenter__(self) -> CoaListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- receiving ------------------------------------------------------

    def _received(self, data: bytes, addr: Address) -> None:
        if len(data) < 20:
            self.counters["malformed"] += 1
            return
        if data[0] != COA_REQUEST:
            self.counters["unexpected-code"] += 1
            logger.debug("ignored RADIUS code %d from %s:%d", data[0], *addr)
            return
        now = time.monotonic()
        self._forget_before(now - self.duplicate_window_s)
        key: _Key = (addr, data[1], data[4:20])
        seen = self._recent.get(key)
        if seen is not None:
            self.counters["duplicate"] += 1
            answer = seen[1]
            if answer is not None and self._endpoint is not None:
                self._endpoint.sendto(answer, addr)
            return
        try:
            self._queue.put_nowait((data, addr, key))
        except asyncio.QueueFull:
            self.counters["overload"] += 1
            return
        self._recent[key] = (now, None)
        while len(self._recent) > 4096:
            self._recent.popitem(last=False)

    def _forget_before(self, cutoff: float) -> None:
        while self._recent:
            key, (when, _) = next(iter(self._recent.items()))
            if when >= cutoff:
                break
            del self._recent[key]

    async def _work(self) -> None:
        while True:
            await self._handle(*await self._queue.get())

    async def _handle(self, data: bytes, addr: Address, key: _Key) -> bytes | None:
        """Answer one queued request (and remember the answer for its copies); return the
        answer sent, or None when it is discarded (and then forgotten)."""
        try:
            answer = await self._answer(data, addr)
        except Exception as exc:  # the listener goes on whatever one packet did
            self._note("malformed", "CoA-Request from %s:%d not handled: %r", *addr, exc)
            answer = None
        if answer is None:
            self._recent.pop(key, None)
            return None
        if key in self._recent:
            self._recent[key] = (self._recent[key][0], answer)
        if self._endpoint is not None:
            self._endpoint.sendto(answer, addr)
        return answer

    # --- answering ------------------------------------------------------

    def _reply(self, request: Any, cause: ErrorCause | None) -> bytes:
        reply = request.CreateReply()
        if cause is not None:
            reply.code = COA_NAK
            reply["Error-Cause"] = int(cause)
            self.counters["nak-sent"] += 1
        else:
            self.counters["ack-sent"] += 1
        reply.add_message_authenticator()
        raw: bytes = reply.ReplyPacket()
        return raw

    def _note(self, reason: str, message: str, *args: object) -> None:
        """Count ``reason``; log ``message`` as a warning the first time, at debug after."""
        self.counters[reason] += 1
        level = logging.WARNING if self.counters[reason] == 1 else logging.DEBUG
        logger.log(level, message, *args)

    def _authentic(self, data: bytes, addr: Address) -> Any | None:
        """The request in ``data`` if it decodes and authenticates, else None (counted).

        The Request Authenticator is checked under each secret in turn; the one that
        verifies it is the request's secret from then on (its Message-Authenticator, the
        answer). Never raises: whatever the bytes do to pyrad is ``malformed``.
        """
        try:
            request = packet.CoAPacket(packet=data, secret=self.secrets[0], dict=self.dictionary)
            authentic = bool(request.VerifyCoARequest())
            for secret in self.secrets[1:]:
                if authentic:
                    break
                request.secret = secret
                authentic = bool(request.VerifyCoARequest())
            signed = request.message_authenticator is not None
            if authentic and signed:
                authentic = bool(request.verify_message_authenticator())
        except Exception as exc:
            self._note("malformed", "undecodable CoA-Request from %s:%d: %s", *addr, exc)
            return None
        if not authentic:
            self._note(
                "bad-authenticator",
                "CoA-Request from %s:%d does not verify under this client's secret: discarded",
                *addr,
            )
            return None
        if not signed:
            self._note(
                "missing-message-authenticator",
                "CoA-Request from %s:%d has no Message-Authenticator: discarded",
                *addr,
            )
            return None
        return request

    def _timestamp(self, request: Any) -> float | None:
        """The request's Event-Timestamp; None if it has none, NaN if it does not decode."""
        try:
            if EVENT_TIMESTAMP not in request:
                return None
            return float(request[EVENT_TIMESTAMP][0])
        except Exception:
            return float("nan")

    async def _answer(self, data: bytes, addr: Address) -> bytes | None:
        """The answer to one CoA-Request, or None to send none."""
        request = self._authentic(data, addr)
        if request is None:
            return None
        stamp = self._timestamp(request)
        if stamp is None:
            self._note(
                "missing-event-timestamp", "CoA-Request from %s:%d has no Event-Timestamp", *addr
            )
            return self._reply(request, ErrorCause.MISSING_ATTRIBUTE)
        if self.timestamp_window_s is not None and not (
            abs(time.time() - stamp) <= self.timestamp_window_s
        ):
            self._note(
                "stale-timestamp", "CoA-Request from %s:%d: Event-Timestamp out of window", *addr
            )
            return self._reply(request, ErrorCause.INVALID_REQUEST)
        try:
            message = read_coa_notice(request)
        except WireError as exc:
            self._note(exc.reason, "CoA-Request from %s:%d: %s", *addr, exc)
            cause = (
                ErrorCause.MISSING_ATTRIBUTE
                if exc.reason == "missing-attribute"
                else ErrorCause.INVALID_ATTRIBUTE_VALUE
            )
            return self._reply(request, cause)
        try:
            accepted = await self.on_notice(
                message.server, message.payload, message.authenticator, message.content_type
            )
        except Exception:
            self.counters["callback-error"] += 1
            logger.exception("handling a CoA notice from %s:%d failed", *addr)
            return self._reply(request, ErrorCause.RESOURCES_UNAVAILABLE)
        if accepted:
            self.counters["accepted"] += 1
            return self._reply(request, None)
        self.counters["refused"] += 1
        return self._reply(request, ErrorCause.INVALID_ATTRIBUTE_VALUE)
