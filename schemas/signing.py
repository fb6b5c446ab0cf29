"""Authenticity of events: HMAC-SHA256 over the exact bytes on the wire.

Bus events carry ``Aaa-Key`` (key id, for rotation) and ``Aaa-Sig`` (hex
HMAC-SHA256 under that key of the subject, a newline and the payload) in
their NATS headers: the signature binds the subject, so a signed event copied
onto another subject (a sandbox's plan onto the live prefix, one client's
status onto another's subject) no longer verifies. Receivers verify before
decoding, then reject events outside the replay window and repeated event
ids (:class:`ReplayGuard`).

Notices to a client carry, in ``Aaa-Auth``, an authenticator under that
client's own shared secret over the server's IP, the client's IP and the
notice bytes (:func:`client_authenticator`), so clients never hold a bus key.

A client's secret rotates as a bus key does: while it does, what it signs
verifies under any of its secrets (its ``secret`` and its ``verify_secrets``),
and only ``secret`` signs.

A check that fails raises :class:`schemas.errors.Rejected`, importable from
here too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from schemas.errors import Rejected as Rejected  # re-exported: the checks below raise it

KEY_HEADER = "Aaa-Key"
SIG_HEADER = "Aaa-Sig"
AUTH_HEADER = "Aaa-Auth"
SERVER_HEADER = "Aaa-Server"

CLIENT_KEY_PREFIX = "client:"
SANDBOX_KEY_PREFIX = "sandbox:"

DIGEST_FORMAT = re.compile(r"[0-9a-f]{64}")
"""What ``Aaa-Sig`` and ``Aaa-Auth`` hold: a SHA-256 digest as 64 lowercase hex digits."""
KEY_ID_FORMAT = re.compile(r"[\x20-\x7e]{1,128}")
"""What ``Aaa-Key`` holds: a key id of 1-128 printable ASCII characters (a bus key's id or
``client:`` and a client id)."""


Keys = bytes | tuple[bytes, ...]
"""What a key id verifies with: one key (every bus key), or several tried in turn (a
client's secrets while it rotates: its signing secret, then those that only verify)."""


def _header_text(value: object, limit: int = 64) -> str:
    """A header value as it may be shown in a log line: repr'd and at most ``limit`` long."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def is_digest(value: object) -> bool:
    """Whether ``value`` is a hex SHA-256 digest as this module writes one."""
    return isinstance(value, str) and DIGEST_FORMAT.fullmatch(value) is not None


KEYED_MAX = 4096
"""The most keys :func:`signature` keeps the padded-key hash states of (a bus key each, a
client's secret each); past it they are all made afresh as they come."""
_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_keyed: dict[bytes, tuple[hashlib._Hash, hashlib._Hash]] = {}


def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states with ``key`` XOR ipad, and XOR opad, already hashed (RFC 2104)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def signature(key: bytes, subject: str, payload: bytes) -> str:
    """Hex HMAC-SHA256 under ``key`` of ``subject``, a newline and ``payload`` (a NATS
    subject holds no whitespace, so the two parts cannot be told apart any other way).

    HMAC as RFC 2104 builds it (and as :mod:`hmac` does for a digest OpenSSL's HMAC does
    not take): each key's two padded-key states are hashed once and copied per message,
    which costs less than half of keying an ``hmac.HMAC`` per message.
    """
    pads = _keyed.get(key)
    if pads is None:
        if len(_keyed) >= KEYED_MAX:
            _keyed.clear()
        pads = _keyed[key] = _pads(key)
    inner = pads[0].copy()
    inner.update(subject.encode())
    inner.update(b"\n")
    inner.update(payload)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def sandbox_key(live_key: bytes, prefix: str) -> tuple[str, bytes]:
    """The key id and key a replay sandbox under ``prefix`` signs with: derived from the
    live key (HMAC-SHA256 of the prefix), so the replay tool and the sandbox's services
    agree on it without another secret, and named ``sandbox:<prefix>``, an id no live
    service holds, so whatever a sandbox signs the live side refuses (``unknown-key``)."""
    key = hmac.new(live_key, b"aaa-failover sandbox\n" + prefix.encode(), hashlib.sha256)
    return SANDBOX_KEY_PREFIX + prefix, key.digest()


def sign_headers(key_id: str, key: bytes, subject: str, payload: bytes) -> dict[str, str]:
    """The headers that sign ``payload`` on ``subject`` with the key ``key_id``."""
    return {KEY_HEADER: key_id, SIG_HEADER: signature(key, subject, payload)}


def verify(
    keys: Mapping[str, Keys], headers: Mapping[str, str] | None, subject: str, payload: bytes
) -> str:
    """Check the signature headers of ``payload`` received on ``subject``; return the key id
    that signed it.

    A key id maps to one key, or to a tuple of keys of which any one may have signed
    (a client's secret during its rotation); one key costs one HMAC and one compare, as it
    always did.

    Raises Rejected with reason ``unsigned``, ``bad-key-id`` (``Aaa-Key`` is not
    1-128 printable ASCII characters), ``unknown-key`` or ``bad-signature``
    (also when ``Aaa-Sig`` is not 64 lowercase hex digits: its format is
    checked before any comparison, so no header value reaches
    ``hmac.compare_digest`` that it would refuse).
    """
    if not headers or SIG_HEADER not in headers or KEY_HEADER not in headers:
        raise Rejected("unsigned")
    key_id = headers[KEY_HEADER]
    if not isinstance(key_id, str) or KEY_ID_FORMAT.fullmatch(key_id) is None:
        raise Rejected("bad-key-id", _header_text(key_id))
    sig = headers[SIG_HEADER]
    if not is_digest(sig):
        raise Rejected("bad-signature", f"{key_id}: {SIG_HEADER} {_header_text(sig)} is not hex")
    key = keys.get(key_id)
    if key is None:
        raise Rejected("unknown-key", key_id)
    if isinstance(key, bytes):
        if not hmac.compare_digest(signature(key, subject, payload), sig):
            raise Rejected("bad-signature", key_id)
        return key_id
    for candidate in key:
        if hmac.compare_digest(signature(candidate, subject, payload), sig):
            return key_id
    raise Rejected("bad-signature", key_id)


def client_key_id(client: str) -> str:
    """The key id under which a client signs what it sends (acks, requests)."""
    return CLIENT_KEY_PREFIX + client


def client_authenticator(
    secret: bytes, server_ip: str, client_ip: str, body: bytes, *, legacy: bool = False
) -> str:
    """The authenticator of a notice between a server and a client (claims 13-15).

    Default (claim 14): HMAC-SHA256 keyed by the client's shared secret over
    the server's IP, the client's IP and the notice bytes. ``legacy`` (claim
    15, weaker, opt-in): SHA-256 over the secret, both IPs and the body.
    """
    context = f"{server_ip}\n{client_ip}\n".encode()
    if legacy:
        return hashlib.sha256(secret + b"\n" + context + body).hexdigest()
    return hmac.new(secret, context + body, hashlib.sha256).hexdigest()


def verify_client_authenticator(
    secret: bytes | Sequence[bytes],
    server_ip: str,
    client_ip: str,
    body: bytes,
    authenticator: str | None,
    *,
    legacy: bool = False,
) -> bytes:
    """Raise Rejected unless ``authenticator`` is right for this notice; return the secret
    it verified under.

    ``secret`` is the client's secret, or its secrets during a rotation (each tried in
    turn; one secret costs what it always did). ``unsigned`` if there is no
    authenticator; ``bad-authenticator`` if it is wrong under every secret, or not 64
    lowercase hex digits (checked before comparing).
    """
    if not authenticator:
        raise Rejected("unsigned")
    if not is_digest(authenticator):
        raise Rejected("bad-authenticator", f"not hex: {_header_text(authenticator)}")
    for candidate in (secret,) if isinstance(secret, bytes) else secret:
        expected = client_authenticator(candidate, server_ip, client_ip, body, legacy=legacy)
        if hmac.compare_digest(expected, authenticator):
            return candidate
    raise Rejected("bad-authenticator")


class ReplayGuard:
    """Rejects events outside a time window and event ids seen before.

    An id is remembered until its event could no longer pass the window
    check, and at most ``max_ids`` ids are kept. Neither a flood of new ids
    nor a restart can make a seen event acceptable again: an id pushed out by
    the cap raises a floor, and an event stamped at or before the floor is
    refused as ``stale`` (a flood costs late events, never a replay); a guard
    made with ``since`` (a service's start) refuses what was stamped before
    it, which the service may have seen in its previous life.

    Without ``check_time`` (a replay sandbox, whose events are recorded ones
    with their original times) only repeated ids are rejected.
    """

    def __init__(
        self,
        window_s: float,
        max_ids: int = 200_000,
        *,
        check_time: bool = True,
        since: float | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError("replay window must be positive")
        self.window_s = window_s
        self.max_ids = max_ids
        self.check_time = check_time
        self.floor = since if since is not None and check_time else float("-inf")
        # id -> its event's time (with check_time) or when it came (without)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, event_id: str, event_time: float, now: float) -> None:
        """Raise Rejected (``stale``, ``future`` or ``replayed``), else remember the id."""
        if self.check_time:
            if not event_time >= now - self.window_s:  # NaN too
                raise Rejected("stale", f"{now - event_time:.1f}s old")
            if event_time > now + self.window_s:
                raise Rejected("future", f"{event_time - now:.1f}s ahead")
            if event_time <= self.floor:
                raise Rejected("stale", "stamped before the oldest id this receiver remembers")
            self._forget_before(now - self.window_s)
        else:
            self._forget_before(now - 2 * self.window_s)
        if event_id in self._seen:
            raise Rejected("replayed", event_id)
        self._seen[event_id] = event_time if self.check_time else now
        if len(self._seen) > self.max_ids:
            _, forgotten = self._seen.popitem(last=False)
            if self.check_time:
                self.floor = max(self.floor, forgotten)

    def _forget_before(self, cutoff: float) -> None:
        """Forget, oldest first, the ids whose time is before ``cutoff`` (they can no longer
        pass the window); it stops at the first one still needed."""
        seen = self._seen
        while seen:
            oldest_id = next(iter(seen))
            if seen[oldest_id] >= cutoff:
                break
            del seen[oldest_id]
