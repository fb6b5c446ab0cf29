"""The NATS bus as every service sees it: signed publish, verified subscribe.

A :class:`Bus` holds one connection (reconnecting forever), the keys to sign
and verify with, and the counters of what it dropped. A subscription is a
chain: verify (signature, decoding, replay window, type), then the
subscription's guards (:mod:`services.runtime.middleware`),
then the handler, timed. Whatever is dropped on the way, by the bus, a guard
or the handler raising :class:`~schemas.signing.Rejected`, goes through one
path, :meth:`Bus.drop`: counted by reason (and so on /metrics) and logged
once. Nothing raises into the loop, and neither does a handler that fails.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.client import _validate_subject
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.protocol.command import hpub_cmd
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

from schemas import codec
from schemas.events import Event
from schemas.signing import (
    CLIENT_KEY_PREFIX,
    KEY_HEADER,
    SIG_HEADER,
    Keys,
    Rejected,
    ReplayGuard,
    sign_headers,
    signature,
    verify,
)
from schemas.subjects import Subjects, named_in
from services.runtime import busauth
from services.runtime.config import BusConfig, ConfigError, split_urls
from services.runtime.keyring import Keyring as Keyring  # re-exported: every bus user needs it
from services.runtime.keyring import Signer as Signer
from services.runtime.middleware import Guard, admits, kind
from services.runtime.permissions import inbox, user_for
from services.runtime.ratelimit import LogLimiter

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
R = TypeVar("R")

SETTLE_S = 30.0
"""How long a start-up JetStream request is tried again while JetStream does not answer
(a cluster electing the leader of the stream or of a bucket)."""
UNSETTLED = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


class Recorded(Protocol):
    """A message as stored: its exact payload and its headers."""

    @property
    def payload(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


Handler = Callable[[E], Awaitable[None]]


class BusAuthError(ConfigError):
    """The bus refused the user and password a process joins with."""


def abandon(nc: NatsClient) -> None:
    """Close the socket of a client whose first connection failed."""
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        transport.close()


HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""What a header name may hold on the way out (an HTTP token, as nats-py checks)."""
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
HEADER_NAMES_MAX = 1024
"""The most header names the client keeps encoded (going out) or decoded (coming in)."""
SUBJECTS_MAX = 4096
"""The most subjects the bus keeps what it writes per subject for (checked subject, signer)."""
_names_out: dict[str, bytes] = {}
_names_in: dict[bytes, str | None] = {}


def _name_out(name: str) -> bytes:
    """``Name: `` as bytes, b"" for a blank name (left out); BadHeaderError if not a token."""
    key = name.strip()
    if not key:
        return b""
    if not HEADER_NAME.fullmatch(key):
        raise nats.errors.BadHeaderError(key)
    return key.encode() + b": "


def header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS header block of ``headers``, byte for byte as nats-py 2.16 writes it: names
    stripped and checked (a blank one left out), values stripped with CR and LF made spaces
    (so no value can end its line and add a header or a command). Each name is checked and
    encoded once (the bus sends the same four on every event)."""
    parts = [b"NATS/1.0\r\n"]
    append = parts.append
    for name, value in headers.items():
        encoded = _names_out.get(name)
        if encoded is None:
            encoded = _name_out(name)
            if len(_names_out) < HEADER_NAMES_MAX:
                _names_out[name] = encoded
        if not encoded:
            continue
        text = value.strip()
        if "\r" in text or "\n" in text:
            text = text.translate(_NEWLINES)
        append(encoded)
        append(text.encode())
        append(b"\r\n")
    append(b"\r\n")
    return b"".join(parts)


def _name_in(raw: bytes) -> str | None:
    """A received header name, or None for one nats-py leaves out (not ASCII, or with
    whitespace inside)."""
    try:
        name = raw.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(c.isspace() for c in name) else name


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """The headers in a received block's ``Name: Value`` lines, as nats-py 2.16 parses them
    (a line without a colon, or whose name is not ASCII or holds whitespace, is left out;
    values stripped and decoded as UTF-8 with replacement). Each name is decoded and checked
    once."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = _names_in[name]
        except KeyError:
            key = _name_in(name)
            if len(_names_in) < HEADER_NAMES_MAX:
                _names_in[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def header_value(value: str) -> bytes:
    """One header value as :func:`header_block` writes it: stripped, CR and LF made spaces."""
    text = value.strip()
    if "\r" in text or "\n" in text:
        text = text.translate(_NEWLINES)
    return text.encode()


class BusParser(Parser):
    """nats-py's protocol parser, reading the messages with headers the server sends
    (``HMSG <subject> <sid> [reply] <header bytes> <total bytes>``, single spaces) without
    its regular expressions; anything else, and a line it does not read so, is left to
    nats-py's own parsing, which reads the rest of the buffer."""

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        nc = self.nc
        while buf and self.state == AWAITING_CONTROL_LINE and buf.startswith(b"HMSG "):
            end = buf.find(b"\r\n", 0, MAX_CONTROL_LINE_SIZE)
            if end < 0:
                break
            args = bytes(buf[5:end]).split(b" ")
            if len(args) == 4:
                subject, sid, header_size, size = args
                reply = b""
            elif len(args) == 5:
                subject, sid, reply, header_size, size = args
            else:
                break
            if not (subject and sid.isdigit() and header_size.isdigit() and size.isdigit()):
                break
            start = end + 2
            needed = int(size)
            if len(buf) < start + needed + 2:
                return  # the rest of this message is still to come
            header_end = start + int(header_size)
            headers = bytes(buf[start:header_end]) if header_end > start else None
            payload = bytes(buf[header_end : start + needed])
            del buf[: start + needed + 2]
            await nc._process_msg(int(sid), subject, reply, payload, headers)
        if buf:
            await super().parse()


class BusClient(NatsClient):
    """nats-py's client, with the headers of every message written and read at less cost.

    Each event carries four headers (key id, signature, content type, message id), and
    nats-py checks and encodes each name on every publish and decodes and checks each one
    on every message received: :func:`header_block` and :func:`parse_header_lines` give the
    same bytes and the same dict, doing that once per name.

    :meth:`publish_now` queues a message whose header block is already written without a
    coroutine per layer (publish, send, command, flush): what nats-py's publish does, in
    one call, for the bus's own events.
    """

    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._hpub_heads: dict[str, bytes] = {}
        self._ps = BusParser(self)

    def publish_now(self, subject: str, block: bytes, payload: bytes) -> bool:
        """Queue ``payload`` with the header block ``block`` on ``subject`` for the flusher,
        as ``await publish(subject, payload, headers=...)`` does with the headers ``block``
        holds: the same checks and errors, the same bytes, the same counters, the flusher
        kicked the same way. True if nats-py would now wait for a flush (the pending buffer
        is over its limit, or the flusher is not running): the caller then awaits
        :meth:`flush_pending_now`, as nats-py's publish would have before returning."""
        heads = self._hpub_heads
        head = heads.get(subject)
        if head is None:
            if not self._skip_subject_validation:
                _validate_subject(subject)
            head = f"HPUB {subject}  ".encode()
            if len(heads) < SUBJECTS_MAX:
                heads[subject] = head
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        payload_size = len(payload)
        if not self.is_connected and (
            self._max_pending_size <= 0
            or payload_size + self._pending_data_size > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        if payload_size > self._max_payload:
            raise nats.errors.MaxPayloadError
        hdr_len = len(block)
        command = b"%b%d %d\r\n%b%b\r\n" % (head, hdr_len, hdr_len + payload_size, block, payload)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += payload_size
        self._pending.append(command)
        self._pending_data_size += len(command)
        if self._max_pending_size > 0 and self._pending_data_size > self._max_pending_size:
            return True
        flush_queue = self._flush_queue
        if flush_queue is not None and flush_queue.empty() and self.is_connected:
            flusher = self._flusher_task
            if flusher is None or flusher.done():
                return True
            flush_queue.put_nowait(asyncio.get_running_loop().create_future())
        return False

    async def flush_pending_now(self) -> None:
        """Wait for the flush nats-py's publish waits for when :meth:`publish_now` says so."""
        await self._flush_pending(force_flush=True)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if subject == "":
            raise nats.errors.BadSubjectError
        command = hpub_cmd(subject, reply, header_block(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


QUIET_DROPS = frozenset({"unexpected-type"})
"""Drops counted but logged at debug level only: a subscription that takes some kinds of
event on its subjects (a tool's on everything) sees the other kinds go by all the time."""


async def settled(what: str, request: Callable[[], Awaitable[R]], settle_s: float = SETTLE_S) -> R:
    """``request`` (JetStream requests a service makes as it starts), made again while
    JetStream does not answer, up to ``settle_s``: on a cluster whose node was just
    started or lost, the stream's and each bucket's leader are elected first."""
    deadline = time.monotonic() + settle_s
    delay = 0.25
    while True:
        try:
            return await request()
        except UNSETTLED as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: JetStream does not answer yet (%r); again", what, exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)


@dataclass
class DropCounters:
    """What a bus received, accepted and dropped (by reason), and how long handlers took.

    ``handled`` counts the events each handler finished, by event kind, and
    ``handling_s`` the seconds they took in all.
    """

    published: int = 0
    received: int = 0
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    handled: Counter[str] = field(default_factory=Counter)
    handling_s: dict[str, float] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def handled_in(self, kind: str, seconds: float) -> None:
        """One event of ``kind`` handled in ``seconds``."""
        if kind in self.handling_s:
            self.handled[kind] += 1
            self.handling_s[kind] += seconds
        else:
            self.handled[kind] = 1
            self.handling_s[kind] = seconds


_named: dict[str, tuple[str, str] | None] = {}
"""What each subject's last token names (``named_in``), found once per subject."""


def verify_event(
    keys: Mapping[str, Keys],
    headers: Mapping[str, str] | None,
    subject: str,
    payload: bytes,
    may_sign: Callable[[str, str], bool] | None = None,
) -> Event:
    """Verify the signature of ``payload`` on ``subject``, decode it, and check who signed
    it and that it is about what its subject names.

    A key signs only the kinds of subject ``may_sign`` lets it (``key-not-allowed``:
    see :mod:`services.runtime.keyring`); a client's key signs only events
    naming that client (``impersonation``);
    an event on ``status.nas-01`` must name the client ``nas-01``, one on
    ``plan.A`` the server ``A`` (``wrong-subject``). Raises Rejected. Time and
    repeats are not checked here (see :class:`ReplayGuard`), so a recorded
    event read back from the stream verifies as it did when live.
    """
    key_id = verify(keys, headers, subject, payload)
    if may_sign is not None and not may_sign(key_id, subject):
        raise Rejected("key-not-allowed", f"{key_id} may not sign on {subject}")
    try:
        event = codec.decode(payload, (headers or {}).get(codec.CONTENT_TYPE))
    except codec.DecodeError as exc:
        raise Rejected("undecodable", str(exc)) from None
    if key_id.startswith(CLIENT_KEY_PREFIX):
        claimed = getattr(event, "client", None)
        if claimed != key_id[len(CLIENT_KEY_PREFIX) :]:
            raise Rejected("impersonation", f"{key_id} signed for {claimed!r}")
    try:
        named = _named[subject]
    except KeyError:
        named = named_in(subject)
        if len(_named) < SUBJECTS_MAX:
            _named[subject] = named
    if named is not None:
        field, token = named
        about = getattr(event, field, None)
        if about != token:
            raise Rejected(
                "wrong-subject", f"{type(event).__name__} of {field} {about!r} on {subject}"
            )
    return event


class Bus:
    """One service's connection to the bus."""

    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        keyring: Keyring,
        *,
        codec_name: codec.CodecName = "json",
        replay_window_s: float = 30.0,
        sandbox: bool = False,
        name: str = "",
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.keyring = keyring
        self.codec_name = codec_name
        self.name = name
        self.replicas = replicas
        # nothing stamped before this bus existed: it may have been seen before a restart
        self.guard = ReplayGuard(replay_window_s, check_time=not sandbox, since=time.time())
        self.counters = DropCounters()
        self._subs: list[Subscription] = []
        self._consumers: list[tuple[Callable[[], None], asyncio.Future[None], Subscription]] = []
        self._js: JetStreamContext | None = None
        self._signing: dict[str, tuple[Signer, bytes, bytes]] = {}

    # --- connection -----------------------------------------------------

    @classmethod
    async def connect(
        cls,
        bus: BusConfig,
        keyring: Keyring,
        *,
        name: str,
        stack: AsyncExitStack,
        url: str | None = None,
        user: str | None = None,
    ) -> Bus:
        """Connect (retrying forever on loss) and register the close on ``stack``.

        The connection joins as ``user``, else as the user its ``name`` has
        (services/runtime/permissions.py), with the password read from its file
        (services/runtime/busauth.py), and over TLS when ``bus.tls`` is set. A URL
        holding a user or password is refused (ConfigError), as is a password
        the bus does not take (:class:`BusAuthError`).
        """
        target = busauth.check_url(url or bus.url or "nats://127.0.0.1:4222")
        login = busauth.credentials(bus, user or user_for(name, sandbox=bus.sandbox))
        tls = busauth.ssl_context(bus)
        nc = BusClient()
        # nats-py types these as int; it takes float seconds
        options: dict[str, Any] = {
            "connect_timeout": bus.connect_timeout_s,
            "reconnect_time_wait": 0.5,
        }
        if login is not None:

            def password() -> str:
                # Read at CONNECT, once the server has said whether it takes TLS. A tls://
                # bus that does not (not ours) is refused; the embedded bus's password
                # goes over TLS only: to a plain server (the one replay starts on a
                # stopped farm's store, which has no users) none is sent.
                if not nc._server_info.get("tls_required"):
                    if target.startswith("tls://"):
                        raise ConfigError(
                            f"the bus at {target} does not take TLS: the password of "
                            f"user {login.user!r} is not sent"
                        )
                    if login.embedded:
                        return ""
                return login.password

            options.update(user=login.user, password=password, inbox_prefix=inbox(login.user))
        if tls is not None:
            options["tls"] = tls

        joined = False
        # while the bus is away nats-py reports every failed attempt (two a second): the
        # first of each kind is logged, the rest counted ("... and N more like it")
        errors = LogLimiter(logger, interval_s=30.0)

        async def on_error(exc: Exception) -> None:
            if not joined:
                # nats-py tries a first connection forever: not when the bus refuses
                # this user's password or the server's certificate does not verify
                if "authorization violation" in str(exc).lower():
                    who = f"user {login.user!r}" if login is not None else "no user"
                    raise BusAuthError(f"the bus at {target} refused {who}: {exc}")
                if isinstance(exc, ssl.SSLError):
                    raise ConfigError(f"bus.tls: the bus at {target}: {exc}")
            errors.warning(type(exc).__name__, "bus error: %s", exc)

        closing = False

        async def on_disconnect() -> None:
            if not closing:
                logger.warning("bus disconnected from %s", target)

        async def on_reconnect() -> None:
            errors.flush(force=True)
            logger.info("bus reconnected to %s", target)

        try:
            await nc.connect(
                servers=split_urls(target),
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                **options,
            )
        except BaseException as exc:
            # a refused first connection leaves its socket open: close it (not with
            # nc.close(), which waits for ever after a failed TLS handshake)
            abandon(nc)
            if isinstance(exc, nats.errors.Error) and "authorization" in str(exc).lower():
                who = f"user {login.user!r}" if login is not None else "no user"
                raise BusAuthError(f"the bus at {target} refused {who}: {exc}") from None
            raise
        joined = True
        self = cls(
            nc,
            Subjects(bus.prefix),
            keyring,
            codec_name=bus.codec,
            replay_window_s=bus.replay_window_s,
            sandbox=bus.sandbox,
            name=name,
            replicas=bus.replicas,
        )

        async def close() -> None:
            nonlocal closing
            closing = True
            await self.close()

        stack.push_async_callback(close)
        return self

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        if self.nc.is_closed:
            return
        if self.nc.is_connected:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            except (TimeoutError, nats.errors.Error) as exc:
                logger.warning("bus drain did not finish: %s", exc)
        if not self.nc.is_closed:
            # while the bus is away (reconnecting) there is nothing to drain, and the dead
            # socket may raise as nats-py flushes to it: the close is complete all the same
            try:
                await self.nc.close()
            except (OSError, AttributeError, nats.errors.Error) as exc:
                logger.warning("bus closed while disconnected: %r", exc)
                abandon(self.nc)

    def adopt(
        self, sub: Subscription, stop: Callable[[], None], running: asyncio.Future[None]
    ) -> None:
        """Stop a durable consumer (services/runtime/durable.py) with the subscriptions:
        ``stop`` it, wait for ``running`` to finish the message in hand, then unsubscribe
        its inbox ``sub`` (what else came there is offered again by the stream)."""
        self._consumers.append((stop, running, sub))

    async def stop_receiving(self) -> None:
        """Stop taking new work: stop the durable consumers once the message each has in
        hand is handled and acknowledged, and drain every subscription of this bus."""
        consumers, self._consumers = self._consumers, []
        for stop, _, _ in consumers:
            stop()
        if consumers:
            await asyncio.wait([running for _, running, _ in consumers], timeout=10)
        for _, running, inbox_sub in consumers:
            running.cancel()
            try:
                await inbox_sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("unsubscribing %s: %s", inbox_sub.subject, exc)
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:
                logger.debug("draining %s: %s", sub.subject, exc)

    # --- JetStream ------------------------------------------------------

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def ensure_stream(self, *, max_age_s: float, max_bytes: int) -> None:
        """Create or update the stream that captures every subject of the prefix."""
        await settled("the stream", lambda: self._ensure_stream(max_age_s, max_bytes))

    async def _ensure_stream(self, max_age_s: float, max_bytes: int) -> None:
        config = StreamConfig(
            name=self.subjects.stream_name(),
            subjects=[self.subjects.all],
            storage=StorageType.FILE,
            max_age=max_age_s,
            max_bytes=max_bytes,
            num_replicas=self.replicas,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)

    async def kv(self, bucket: str) -> KeyValue:
        """The key-value bucket ``<PREFIX>_<bucket>``, created if missing."""
        return await settled(f"bucket {bucket}", lambda: self._kv(bucket))

    async def _kv(self, bucket: str) -> KeyValue:
        name = f"{self.subjects.stream_name()}_{bucket}"
        try:
            kv = await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(bucket=name, history=1, replicas=self.replicas)
        # a bucket made on one server keeps one copy when the farm moves to a cluster
        info = await self.js.stream_info(f"KV_{name}")
        if info.config.num_replicas != self.replicas:
            logger.info(
                "bucket %s: %s replicas, now %d", name, info.config.num_replicas, self.replicas
            )
            info.config.num_replicas = self.replicas
            await self.js.update_stream(info.config)
        return kv

    async def lease_bucket(self, lease_s: float) -> KeyValue:
        """The bucket of leases (services/runtime/lease.py): entries live ``lease_s``."""
        return await settled("the leases", lambda: self._lease_bucket(lease_s))

    async def _lease_bucket(self, lease_s: float) -> KeyValue:
        name = f"{self.subjects.stream_name()}_leases"
        try:
            kv = await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(
                bucket=name, history=1, ttl=lease_s, replicas=self.replicas
            )
        # made with another bus.lease_s: an entry lives as long as the bucket says
        info = await self.js.stream_info(f"KV_{name}")
        if info.config.max_age != lease_s:
            logger.info("leases: entries lived %ss, now %ss", info.config.max_age, lease_s)
            info.config.max_age = lease_s
            await self.js.update_stream(info.config)
        return kv

    # --- publish --------------------------------------------------------

    def encode(
        self, subject: str, event: Event, signer: Signer | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The payload of ``event`` and the headers that sign it on ``subject`` (by default
        with the key this process signs that kind of subject with)."""
        signer = signer or self.keyring.signer_for(subject)
        if signer is None:
            raise RuntimeError("this bus has no key to sign with")
        payload = codec.encode(event, self.codec_name)
        headers = sign_headers(signer.key_id, signer.key, subject, payload)
        headers[codec.CONTENT_TYPE] = codec.content_type(self.codec_name)
        headers["Nats-Msg-Id"] = event.id
        return payload, headers

    def _signing_on(self, subject: str) -> tuple[Signer, bytes, bytes]:
        """The signer of ``subject``, the header block up to its signature, and the block
        from the signature to the message id (found once per subject: the keyring of a
        bus does not change)."""
        found = self._signing.get(subject)
        if found is None:
            signer = self.keyring.signer_for(subject)
            if signer is None:
                raise RuntimeError("this bus has no key to sign with")
            # header_block's own bytes, so the blocks below are byte for byte what it writes
            start = header_block({KEY_HEADER: signer.key_id})[:-2] + SIG_HEADER.encode() + b": "
            middle = (
                b"\r\n"
                + header_block({codec.CONTENT_TYPE: codec.content_type(self.codec_name)})[10:-2]
                + b"Nats-Msg-Id: "
            )
            found = (signer, start, middle)
            if len(self._signing) < SUBJECTS_MAX:
                self._signing[subject] = found
        return found

    def publish_now(self, subject: str, event: Event) -> Callable[[], Awaitable[None]] | None:
        """Sign ``event`` and queue it on ``subject`` at once, with the bytes and headers
        :meth:`publish` sends; None if it is queued as ``await publish(subject, event)``
        would have left it, else what to await to finish it (the client's buffer is over
        its limit and nats-py waits for a flush; or the client is not a BusClient)."""
        nc = self.nc
        if not isinstance(nc, BusClient):
            return partial(self.publish, subject, event)
        signer, start, middle = self._signing_on(subject)
        payload = codec.encode(event, self.codec_name)
        block = b"%b%b%b%b\r\n\r\n" % (
            start,
            signature(signer.key, subject, payload).encode(),
            middle,
            header_value(event.id),
        )
        wait = nc.publish_now(subject, block, payload)
        self.counters.published += 1
        return nc.flush_pending_now if wait else None

    async def publish(
        self,
        subject: str,
        event: Event,
        *,
        signer: Signer | None = None,
        headers: Mapping[str, str] | None = None,
        authenticate: Callable[[bytes], Mapping[str, str]] | None = None,
    ) -> None:
        """Sign ``event`` and publish it on ``subject``.

        ``authenticate`` adds headers computed over the exact payload bytes
        (a notice's client authenticator).
        """
        if (
            signer is None
            and not headers
            and authenticate is None
            and isinstance(self.nc, BusClient)
        ):
            wait = self.publish_now(subject, event)
            if wait is not None:
                await wait()
            return
        payload, signed = self.encode(subject, event, signer)
        if headers:
            signed.update(headers)
        if authenticate is not None:
            signed.update(authenticate(payload))
        await self.publish_encoded(subject, payload, signed)

    def resign(self, subject: str, recorded: Recorded) -> tuple[str, bytes, dict[str, str]]:
        """A recorded message's bytes, signed with this bus's key for ``subject`` (a replay
        into a sandbox): its content type and message id kept, its signature new."""
        signer = self.keyring.signer
        if signer is None:
            raise RuntimeError("this bus has no key to sign with")
        headers = sign_headers(signer.key_id, signer.key, subject, recorded.payload)
        for name in (codec.CONTENT_TYPE, "Nats-Msg-Id"):
            value = recorded.headers.get(name)
            if value is not None:
                headers[name] = value
        return subject, recorded.payload, headers

    async def publish_encoded(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish bytes :meth:`encode` made and signed, as they are: a stored event sent
        again verbatim (a notice's retry), counted as every publish is."""
        await self.nc.publish(subject, payload, headers=headers)
        self.counters.published += 1

    # --- subscribe ------------------------------------------------------

    def verify(self, msg: Msg, accept_clients: bool = False) -> Event:
        """Verify and decode one message (no replay check); raise Rejected if bad."""
        keys = self.keyring.verification_keys(accept_clients)
        return verify_event(keys, msg.headers, msg.subject, msg.data, self.keyring.may_sign)

    def check(self, msg: Msg, accept_clients: bool = False) -> Event:
        """Verify, decode and replay-check one message; raise Rejected if bad."""
        event = self.verify(msg, accept_clients)
        self.guard.check(event.id, event.time, time.time())
        return event

    def drop(self, reason: str, detail: str = "", *, subject: str = "", key: str = "") -> None:
        """The one drop path: count ``reason`` (shown on /metrics) and log the drop once,
        at debug level for the reasons in ``QUIET_DROPS``."""
        self.counters.drop(reason)
        if reason in QUIET_DROPS and not logger.isEnabledFor(logging.DEBUG):
            return
        where = f" on {subject}" if subject else ""
        signed = f" (key {key})" if key else ""
        logger.log(
            logging.DEBUG if reason in QUIET_DROPS else logging.WARNING,
            "dropped event%s: %s%s",
            where,
            f"{reason}: {detail}" if detail else reason,
            signed,
        )

    async def subscribe(
        self,
        subject: str,
        handler: Handler[E],
        *,
        types: tuple[type[E], ...],
        queue: str = "",
        accept_clients: bool = False,
        guards: Sequence[Guard] = (),
    ) -> Subscription:
        """Deliver to ``handler`` each verified event of ``types`` on ``subject``.

        Each accepted event passes ``guards`` in order (see
        :mod:`services.runtime.middleware`), then goes to the handler, which
        is timed. Everything dropped (by the checks, a guard or the handler
        raising Rejected) goes through :meth:`drop`; ``accept_clients`` lets
        events signed by a client's own secret through (acks, readmit
        requests).
        """

        def checked(msg: Msg) -> Event:
            return self.check(msg, accept_clients)

        async def on_message(msg: Msg) -> None:
            await self.deliver(msg, handler, types, guards, checked)

        sub = await self.nc.subscribe(subject, queue=queue, cb=on_message)
        self._subs.append(sub)
        return sub

    async def deliver(
        self,
        msg: Msg,
        handler: Handler[E],
        types: tuple[type[E], ...],
        guards: Sequence[Guard],
        checked: Callable[[Msg], Event],
    ) -> bool:
        """Run one received message through ``checked`` (the bus's checks, which raise
        Rejected), the type filter, ``guards`` and ``handler``. True if the handler
        finished or the message was dropped for good; False if the handler failed
        (a stored message is then offered again)."""
        self.counters.received += 1
        try:
            event = checked(msg)
            if not isinstance(event, types):
                raise Rejected("unexpected-type", type(event).__name__)
        except Rejected as rejected:
            self._dropped(msg, rejected)
            return True
        self.counters.accepted += 1
        try:
            if guards and not admits(guards, event):
                return True
            started = time.perf_counter()
            await handler(event)
            self.counters.handled_in(type(event).__name__, time.perf_counter() - started)
        except Rejected as rejected:
            self._dropped(msg, rejected)
        except Exception:
            self.counters.handler_errors += 1
            logger.exception("handler for %s failed on %s", msg.subject, kind(event))
            return False
        return True

    def _dropped(self, msg: Msg, rejected: Rejected) -> None:
        self._dropped_on(msg.subject, msg.headers, rejected)

    def _dropped_on(
        self, subject: str, headers: Mapping[str, str] | None, rejected: Rejected
    ) -> None:
        key = str((headers or {}).get(KEY_HEADER, "-"))
        shown = key if len(key) <= 64 else key[:61] + "..."  # a header can be anything
        self.drop(rejected.reason, rejected.detail, subject=subject, key=repr(shown)[1:-1])

    async def subscribe_raw(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        """Deliver raw messages (for receivers that verify by other means)."""

        async def on_message(msg: Msg) -> None:
            self.counters.received += 1
            try:
                await handler(msg)
            except Exception:
                self.counters.handler_errors += 1
                logger.exception("raw handler for %s failed", subject)

        sub = await self.nc.subscribe(subject, cb=on_message)
        self._subs.append(sub)
        return sub

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "published": c.published,
            "received": c.received,
            "accepted": c.accepted,
            "dropped": dict(c.dropped),
            "handler_errors": c.handler_errors,
            "handled": dict(c.handled),
        }
