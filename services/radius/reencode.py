"""A proxied RADIUS packet carried from one shared secret to another, at the byte level.

What a proxy between NAS devices and upstream servers does to each packet
(:mod:`services.agent.proxy`), with no sockets and no decoded attribute
values: a NAS's request is verified under the NAS secret
(:func:`decode_request`) and re-encoded for the upstream under the client's
own secret (:func:`upstream_request`, sealed with its id by
:meth:`Outgoing.seal`); the upstream's reply is verified against what was
sent (:func:`verify_reply`) and re-encoded as the answer to the NAS
(:func:`nas_reply`).

A packet is walked once into a :class:`Message`: its bytes, code, id,
authenticator, and where each attribute lies. Re-encoding copies the
attribute bytes as they came, Proxy-State included and in their order, and
only touches what the secret protects: User-Password hiding (RFC 2865
section 5.2) and salt-encrypted values (Tunnel-Password, RFC 2868 section
3.5, after its tag; MS-MPPE-Send-Key and MS-MPPE-Recv-Key, RFC 2548, inside
Vendor-Specific) are decrypted under one secret and vector and encrypted
again under the other; the incoming Message-Authenticator is dropped and a
new one computed (HMAC-MD5, RFC 3579 section 3.2, RFC 2869 section 5.14);
the Request Authenticator of an Accounting-Request (RFC 2866 section 3) and
the Response Authenticator of a reply (RFC 2865 section 3) are computed
again. Every digest is compared in constant time. A packet that does not
verify or does not parse raises :class:`~services.radius.packet.Dropped`.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import secrets
from collections.abc import Callable
from typing import NamedTuple, Protocol

from services.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    STATUS_SERVER,
    Dropped,
)

MAX_PACKET_OCTETS = 4096
"""RFC 2865's largest RADIUS packet; FreeRADIUS drops anything longer without a word."""

RADIUS_HEADER_OCTETS = 20
MESSAGE_AUTHENTICATOR_OCTETS = 18

USER_PASSWORD = 2
CHAP_PASSWORD = 3
STATE = 24
VENDOR_SPECIFIC = 26
PROXY_STATE = 33
CHAP_CHALLENGE = 60
TUNNEL_PASSWORD = 69
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80
MICROSOFT = 311
MS_MPPE_KEYS = frozenset({16, 17})
"""MS-MPPE-Send-Key and MS-MPPE-Recv-Key (RFC 2548 sections 2.4.2, 2.4.3): salt-encrypted."""

COMPUTED_AUTHENTICATOR = frozenset({ACCOUNTING_REQUEST, 40, 43})
"""Requests whose Request Authenticator is an MD5 over the packet (Accounting-Request,
Disconnect-Request, CoA-Request), not random; their hidden values use a zero vector."""

REPLY_CODES: dict[int, frozenset[int]] = {
    ACCESS_REQUEST: frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE}),
    ACCOUNTING_REQUEST: frozenset({ACCOUNTING_RESPONSE}),
}
"""The reply codes that answer each request code (Status-Server takes any answer)."""

ZERO_VECTOR = bytes(16)
_MICROSOFT_ID = MICROSOFT.to_bytes(4, "big")
_EMPTY_MESSAGE_AUTHENTICATOR = bytes((MESSAGE_AUTHENTICATOR, 18)) + ZERO_VECTOR

# kinds of hidden value, as a Message lists them
PASSWORD = 0
"""A User-Password (RFC 2865 section 5.2)."""
SALTED = 1
"""A salt-encrypted value (RFC 2868 section 3.5): salt, then cipher blocks."""
TAGGED = 2
"""A salt-encrypted value after a tag octet (Tunnel-Password)."""


Attribute = tuple[int, int, int]
"""One attribute of a packet: (type, start, end), from its type octet to just past it."""


Hidden = tuple[int, int, int]
"""Where a hidden value lies in a packet: (start, end, kind), kind PASSWORD, SALTED or TAGGED."""


# --- digests and randomness, as cheap as they can be made ------------------------------


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> _Hash: ...


def _builtin_md5() -> Callable[[bytes], _Hash]:
    """CPython's own MD5 (``_md5``), else hashlib's: the same digest, but OpenSSL 3 sets up
    and frees an EVP context with each of its digests, about half the cost of one of a
    RADIUS packet (a request and its reply take a dozen)."""
    try:
        md5: Callable[[bytes], _Hash] = importlib.import_module("_md5").md5
    except ImportError:
        return hashlib.md5
    return md5


_md5 = _builtin_md5()

_HMAC_BLOCK = 64
_HMAC_PADS_KEPT = 64
_hmac_pads: dict[bytes, tuple[_Hash, _Hash]] = {}


def _pads(secret: bytes) -> tuple[_Hash, _Hash]:
    """MD5 states after the inner and the outer padded key of HMAC-MD5 under ``secret``
    (RFC 2104), kept per secret: a proxy signs and checks under two or three."""
    pads = _hmac_pads.get(secret)
    if pads is None:
        key = _md5(secret).digest() if len(secret) > _HMAC_BLOCK else secret
        key = key.ljust(_HMAC_BLOCK, b"\0")
        pads = (
            _md5(bytes(octet ^ 0x36 for octet in key)),
            _md5(bytes(octet ^ 0x5C for octet in key)),
        )
        if len(_hmac_pads) >= _HMAC_PADS_KEPT:
            _hmac_pads.clear()
        _hmac_pads[secret] = pads
    return pads


def hmac_md5(secret: bytes, message: bytes) -> bytes:
    """HMAC-MD5 (RFC 2104) of ``message`` under ``secret``, as ``hmac.digest(secret, message,
    "md5")`` but from the key's padded MD5 states computed once: OpenSSL's one-shot HMAC
    looks MD5 up and keys itself again on every call, twice the cost of the digest."""
    pads = _hmac_pads.get(secret)
    inner, outer = _pads(secret) if pads is None else pads
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


_RANDOM_OCTETS = 4096
_random = b""
_random_at = 0


def random_authenticator() -> bytes:
    """16 octets from the OS's CSPRNG (as ``secrets.token_bytes(16)``), drawn 4,096 at a
    time: one system call per 256 Request Authenticators rather than one each."""
    global _random, _random_at
    at = _random_at
    if at + 16 > len(_random):
        _random = secrets.token_bytes(_RANDOM_OCTETS)
        at = 0
    _random_at = at + 16
    return _random[at : at + 16]


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)  # a child never sends its parent's


class Message(NamedTuple):
    """A RADIUS packet as the proxy reads it: verified, walked once, nothing decoded.

    ``raw`` is the packet up to its Length field (padding after it dropped);
    ``attributes`` says where each attribute lies in it; ``secret`` is the one
    it verified under. ``message_authenticator_at`` is where its
    Message-Authenticator starts (-1 without one), ``hidden`` where its
    encrypted values lie.
    """

    raw: bytes
    code: int
    id: int
    authenticator: bytes
    attributes: tuple[Attribute, ...]
    secret: bytes
    message_authenticator_at: int
    hidden: tuple[Hidden, ...]

    @property
    def message_authenticator(self) -> bool:
        """Whether the packet carried a Message-Authenticator (verified, when it did)."""
        return self.message_authenticator_at >= 0

    def values(self, type_: int) -> list[bytes]:
        """The values of every attribute of type ``type_``, in order."""
        raw = self.raw
        return [raw[start + 2 : end] for t, start, end in self.attributes if t == type_]

    def first(self, type_: int) -> bytes | None:
        """The value of the first attribute of type ``type_``, or None."""
        for t, start, end in self.attributes:
            if t == type_:
                return self.raw[start + 2 : end]
        return None

    @property
    def state(self) -> bytes | None:
        """The first ``State`` (an EAP conversation's, issued by its upstream), or None."""
        return self.first(STATE)


class Sent(NamedTuple):
    """A request as it went to an upstream: what its reply is verified against."""

    raw: bytes
    code: int
    id: int
    authenticator: bytes
    secret: bytes

    def proxy_states(self) -> list[bytes]:
        """The values of its Proxy-State attributes, in order."""
        raw = self.raw
        attributes, _, _ = _walk(raw, False)
        return [raw[start + 2 : end] for t, start, end in attributes if t == PROXY_STATE]


class Outgoing(NamedTuple):
    """A request for an upstream, complete but for its id (set when a socket has one free,
    and signed with it by :meth:`seal`).

    ``attributes`` are encoded as they go, the Message-Authenticator's value (at
    ``message_authenticator_at`` in them, -1 without one) zeroed; ``authenticator``
    is the Request Authenticator of an Access-Request or Status-Server, zeros for
    a request whose authenticator is computed over the packet.
    """

    code: int
    authenticator: bytes
    attributes: bytes
    message_authenticator_at: int
    secret: bytes

    @property
    def size(self) -> int:
        """Octets on the wire."""
        return RADIUS_HEADER_OCTETS + len(self.attributes)

    def seal(self, id_: int) -> Sent:
        """The request with id ``id_``: Message-Authenticator and, for accounting, the
        Request Authenticator computed."""
        attributes = self.attributes
        secret = self.secret
        head = bytes((self.code, id_)) + (RADIUS_HEADER_OCTETS + len(attributes)).to_bytes(2, "big")
        computed = self.code in COMPUTED_AUTHENTICATOR
        at = self.message_authenticator_at
        if at >= 0:
            vector = ZERO_VECTOR if computed else self.authenticator
            mac = hmac_md5(secret, b"".join((head, vector, attributes)))
            attributes = b"".join((attributes[: at + 2], mac, attributes[at + 18 :]))
        if computed:
            authenticator = _md5(b"".join((head, ZERO_VECTOR, attributes, secret))).digest()
        else:
            authenticator = self.authenticator
        raw = b"".join((head, authenticator, attributes))
        return Sent(raw, self.code, id_, authenticator, secret)


# --- hiding (RFC 2865 section 5.2, RFC 2868 section 3.5) --------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _check_password(octets: int) -> None:
    if not octets or octets % 16 or octets > 128:
        raise Dropped("malformed", f"User-Password of {octets} octets")


def _check_salted(octets: int) -> None:
    if octets < 18 or (octets - 2) % 16:
        raise Dropped("malformed", f"salt-encrypted value of {octets} octets")


def hide_password(padded: bytes, secret: bytes, vector: bytes) -> bytes:
    """User-Password hiding (RFC 2865 section 5.2) of ``padded`` (a multiple of 16 octets)."""
    if not padded or len(padded) % 16:
        raise ValueError("a hidden password is a multiple of 16 octets")
    out = []
    last = vector
    for i in range(0, len(padded), 16):
        last = _xor(padded[i : i + 16], _md5(secret + last).digest())
        out.append(last)
    return b"".join(out)


def _recrypt(
    cipher: bytes, from_secret: bytes, from_chain: bytes, to_secret: bytes, to_chain: bytes
) -> bytes:
    """Cipher blocks of RFC 2865 section 5.2's chaining (each block's key the MD5 of the
    secret and the cipher block before it, ``*_chain`` before the first) decrypted under
    one secret and encrypted again under another, in one pass."""
    out = []
    for i in range(0, len(cipher), 16):
        block = cipher[i : i + 16]
        keys = int.from_bytes(_md5(from_secret + from_chain).digest(), "big") ^ int.from_bytes(
            _md5(to_secret + to_chain).digest(), "big"
        )
        from_chain = block
        to_chain = (int.from_bytes(block, "big") ^ keys).to_bytes(16, "big")
        out.append(to_chain)
    return b"".join(out)


def rehide_password(
    hidden: bytes, *, from_secret: bytes, from_vector: bytes, to_secret: bytes, to_vector: bytes
) -> bytes:
    """A hidden User-Password (RFC 2865 section 5.2) revealed under one secret and vector and
    hidden again under another; raise Dropped if its length is wrong."""
    _check_password(len(hidden))
    return _recrypt(hidden, from_secret, from_vector, to_secret, to_vector)


def reveal_password(hidden: bytes, secret: bytes, vector: bytes) -> bytes:
    """The padded plaintext of a hidden User-Password; raise Dropped if its length is wrong."""
    _check_password(len(hidden))
    out = []
    last = vector
    for i in range(0, len(hidden), 16):
        block = hidden[i : i + 16]
        out.append(_xor(block, _md5(secret + last).digest()))
        last = block
    return b"".join(out)


def resalt(
    value: bytes,
    tagged: bool,
    *,
    from_secret: bytes,
    from_vector: bytes,
    to_secret: bytes,
    to_vector: bytes,
) -> bytes:
    """A salt-encrypted value (RFC 2868 section 3.5) decrypted under one secret and
    vector and encrypted again, with the same salt, under another."""
    tag, body = (value[:1], value[1:]) if tagged else (b"", value)
    _check_salted(len(body))
    salt = body[:2]
    cipher = _recrypt(body[2:], from_secret, from_vector + salt, to_secret, to_vector + salt)
    return tag + salt + cipher


# --- walking a packet --------------------------------------------------------------------


def _framed(data: bytes, limit: int | None) -> bytes:
    """``data`` (at least a header) up to its Length field; raise Dropped("malformed") if the
    field is under a header, beyond the datagram, or over ``limit``."""
    length = data[2] << 8 | data[3]
    if length < RADIUS_HEADER_OCTETS or length > len(data):
        raise Dropped("malformed", f"Length {length} in a datagram of {len(data)} octets")
    if limit is not None and length > limit:
        raise Dropped("malformed", f"Length {length}, over {limit}")
    return data if length == len(data) else data[:length]


_LOOKED_AT = frozenset({USER_PASSWORD, VENDOR_SPECIFIC, TUNNEL_PASSWORD, MESSAGE_AUTHENTICATOR})


def _walk(raw: bytes, password: bool) -> tuple[list[Attribute], int, list[Hidden]]:
    """The attributes of ``raw`` (a framed packet), where its Message-Authenticator starts
    (-1 without one), and where its encrypted values lie (User-Password only when
    ``password``: an Access-Request's). Raise Dropped("malformed") on a length under 2 or
    running past the packet, or on a Message-Authenticator that is not 18 octets or not
    the only one."""
    attributes: list[Attribute] = []
    hidden: list[Hidden] = []
    append = attributes.append
    length = len(raw)
    at = RADIUS_HEADER_OCTETS
    message_authenticator_at = -1
    while at < length:
        if at + 2 > length:
            raise Dropped("malformed", f"an attribute header cut short at octet {at}")
        type_ = raw[at]
        size = raw[at + 1]
        end = at + size
        if size < 2 or end > length:
            raise Dropped("malformed", f"attribute {type_} of length {size} at octet {at}")
        if type_ in _LOOKED_AT:
            if type_ == MESSAGE_AUTHENTICATOR:
                if size != MESSAGE_AUTHENTICATOR_OCTETS or message_authenticator_at >= 0:
                    raise Dropped("malformed", f"Message-Authenticator of length {size}, or two")
                message_authenticator_at = at
            elif type_ == USER_PASSWORD:
                if password:
                    hidden.append((at + 2, end, PASSWORD))
            elif type_ == TUNNEL_PASSWORD:
                hidden.append((at + 2, end, TAGGED))
            elif raw[at + 2 : at + 6] == _MICROSOFT_ID:
                hidden.extend(_mppe_keys(raw, at + 6, end))
        append((type_, at, end))
        at = end
    return attributes, message_authenticator_at, hidden


def _mppe_keys(raw: bytes, at: int, end: int) -> list[Hidden]:
    """Where the MS-MPPE keys lie in Microsoft's Vendor-Specific value from ``at`` to ``end``
    (its sub-attributes, RFC 2865 section 5.26); none when their lengths do not add up (the
    attribute is then copied as it is, opaque)."""
    found: list[Hidden] = []
    while at < end:
        if at + 2 > end:
            return []
        size = raw[at + 1]
        if size < 2 or at + size > end:
            return []
        if raw[at] in MS_MPPE_KEYS:
            found.append((at + 2, at + size, SALTED))
        at += size
    return found


def _message_authenticator_valid(raw: bytes, at: int, vector: bytes, secret: bytes) -> bool:
    """Whether the Message-Authenticator at ``at`` is the HMAC-MD5 of ``raw`` with it zeroed
    and ``vector`` for the authenticator field (RFC 3579 section 3.2)."""
    expected = hmac_md5(
        secret, b"".join((raw[:4], vector, raw[20 : at + 2], ZERO_VECTOR, raw[at + 18 :]))
    )
    return hmac.compare_digest(expected, raw[at + 2 : at + 18])


def _rewrite(
    raw: bytes,
    message_authenticator_at: int,
    hidden: tuple[Hidden, ...],
    secrets_vectors: tuple[bytes, bytes, bytes, bytes],
    sign: bool,
) -> bytes:
    """The attributes of ``raw`` as they go on: copied, each hidden value decrypted under
    ``secrets_vectors`` (from secret, from vector, to secret, to vector) and encrypted
    again under the other two (its length kept), the Message-Authenticator left out, and
    a zeroed one first when ``sign``."""
    if not hidden and message_authenticator_at < 0:
        return _EMPTY_MESSAGE_AUTHENTICATOR + raw[20:] if sign else raw[20:]
    parts = [_EMPTY_MESSAGE_AUTHENTICATOR] if sign else []
    cuts: list[tuple[int, int, int]] = list(hidden)
    if message_authenticator_at >= 0:
        cuts.append((message_authenticator_at, message_authenticator_at + 18, -1))
        if hidden:
            cuts.sort()
    from_secret, from_vector, to_secret, to_vector = secrets_vectors
    copied = RADIUS_HEADER_OCTETS
    for start, end, kind in cuts:
        parts.append(raw[copied:start])
        if kind == PASSWORD:
            parts.append(
                rehide_password(
                    raw[start:end],
                    from_secret=from_secret,
                    from_vector=from_vector,
                    to_secret=to_secret,
                    to_vector=to_vector,
                )
            )
        elif kind >= 0:
            parts.append(
                resalt(
                    raw[start:end],
                    kind == TAGGED,
                    from_secret=from_secret,
                    from_vector=from_vector,
                    to_secret=to_secret,
                    to_vector=to_vector,
                )
            )
        copied = end
    parts.append(raw[copied:])
    return b"".join(parts)


# --- a NAS's request, and its copy for an upstream -----------------------------------------


def decode_request(
    data: bytes, secret: bytes, *, accounting: bool, require_message_authenticator: bool = True
) -> Message:
    """A NAS's request, verified under ``secret``; raise Dropped.

    The auth port takes Access-Request and Status-Server, the accounting port
    Accounting-Request and Status-Server. A Message-Authenticator is checked
    when present, and required on Status-Server, on an Access-Request that
    carries EAP-Message (RFC 3579) and, with ``require_message_authenticator``
    (FreeRADIUS's ``require_message_authenticator = yes``), on every
    Access-Request. Without it, an Access-Request that carries Proxy-State but
    no Message-Authenticator is refused all the same (FreeRADIUS's
    ``limit_proxy_state``: a NAS sends no Proxy-State, and BlastRADIUS hides
    its chosen prefix in one). The Request Authenticator of an
    Accounting-Request is always checked, which is why FreeRADIUS requires
    nothing more of accounting.

    A packet whose Length is under a header, beyond the datagram or over
    4,096 octets, whose attributes' lengths do not add up to it, that has two
    Message-Authenticators or one not 18 octets long, or whose User-Password
    or salt-encrypted values cannot be the length of one, is ``malformed``.
    """
    if len(data) < RADIUS_HEADER_OCTETS:
        raise Dropped("malformed", f"{len(data)} octets")
    code = data[0]
    if code != (ACCOUNTING_REQUEST if accounting else ACCESS_REQUEST) and code != STATUS_SERVER:
        raise Dropped("unsupported-code", str(code))
    raw = _framed(data, MAX_PACKET_OCTETS)
    attributes, message_authenticator_at, hidden = _walk(raw, code == ACCESS_REQUEST)
    authenticator = raw[4:20]
    if code == ACCOUNTING_REQUEST:
        expected = _md5(b"".join((raw[:4], ZERO_VECTOR, raw[20:], secret))).digest()
        if not hmac.compare_digest(expected, authenticator):
            raise Dropped("bad-authenticator")
    if message_authenticator_at >= 0:
        vector = ZERO_VECTOR if code == ACCOUNTING_REQUEST else authenticator
        if not _message_authenticator_valid(raw, message_authenticator_at, vector, secret):
            raise Dropped("bad-message-authenticator")
    elif code == STATUS_SERVER:
        raise Dropped("no-message-authenticator")
    elif code == ACCESS_REQUEST:
        types = {t for t, _, _ in attributes}
        if require_message_authenticator or EAP_MESSAGE in types:
            raise Dropped("no-message-authenticator")
        if PROXY_STATE in types:
            raise Dropped("proxy-state-unsigned")
    for start, end, kind in hidden:
        if kind == PASSWORD:
            _check_password(end - start)
        else:
            _check_salted(end - start - (kind == TAGGED))
    return Message(
        raw,
        code,
        raw[1],
        authenticator,
        tuple(attributes),
        secret,
        message_authenticator_at,
        tuple(hidden),
    )


def upstream_request(request: Message, secret: bytes) -> Outgoing:
    """``request`` (from a NAS, decoded under its secret) re-encoded for an upstream.

    The copy has a new Request Authenticator (random for an Access-Request,
    computed over the packet for an Accounting-Request when sealed), the
    User-Password and salted values encrypted again under ``secret``, a
    Message-Authenticator first (on an Accounting-Request only when the NAS
    sent one), and every other attribute as it came and in its order,
    Proxy-State included. A CHAP-Password without CHAP-Challenge gets the NAS's
    Request Authenticator as CHAP-Challenge, since that was the challenge. The
    id is set when it is sent (:meth:`Outgoing.seal`).
    """
    access = request.code == ACCESS_REQUEST
    if access:
        authenticator = random_authenticator()
        from_vector = request.authenticator
    else:
        authenticator = from_vector = ZERO_VECTOR
    sign = access or request.message_authenticator_at >= 0
    attributes = _rewrite(
        request.raw,
        request.message_authenticator_at,
        request.hidden,
        (request.secret, from_vector, secret, authenticator),
        sign,
    )
    if access:
        types = {t for t, _, _ in request.attributes}
        if CHAP_PASSWORD in types and CHAP_CHALLENGE not in types:
            attributes += bytes((CHAP_CHALLENGE, 18)) + request.authenticator
    return Outgoing(request.code, authenticator, attributes, 0 if sign else -1, secret)


def outgoing(raw: bytes, secret: bytes) -> Outgoing:
    """A request already encoded (as pyrad builds a Status-Server probe), to be sent under
    ``secret`` with the id of the socket it goes out on."""
    framed = _framed(raw, None)
    _, at, _ = _walk(framed, False)
    body = framed[RADIUS_HEADER_OCTETS:]
    if at >= 0:
        at -= RADIUS_HEADER_OCTETS
        body = body[: at + 2] + ZERO_VECTOR + body[at + 18 :]
    authenticator = ZERO_VECTOR if framed[0] in COMPUTED_AUTHENTICATOR else framed[4:20]
    return Outgoing(framed[0], authenticator, body, at, secret)


# --- an upstream's reply, and its copy for the NAS ----------------------------------------


def verify_reply(sent: Sent, data: bytes, *, require_message_authenticator: bool) -> Message:
    """``data`` verified as the upstream's reply to ``sent``; raise Dropped.

    The reply must carry ``sent``'s id and a Response Authenticator computed
    from its Request Authenticator under its secret, answer with a code that
    answers it, carry a valid Message-Authenticator if it has one and, when
    ``require_message_authenticator``, have one in answer to an Access-Request
    (BlastRADIUS: ``no-message-authenticator``); and an answer to an
    Access-Request or Status-Server may carry no Proxy-State that was not sent
    (pyrad's ``VerifyReply``). Reasons: ``malformed`` (the lengths do not add
    up), ``no-message-authenticator``, and ``invalid`` for all else.
    """
    if len(data) < RADIUS_HEADER_OCTETS:
        raise Dropped("malformed", f"{len(data)} octets")
    raw = _framed(data, None)
    code = raw[0]
    if raw[1] != sent.id:
        raise Dropped("invalid", f"id {raw[1]}, not {sent.id}")
    expected = _md5(b"".join((raw[:4], sent.authenticator, raw[20:], sent.secret))).digest()
    if not hmac.compare_digest(expected, raw[4:20]):
        raise Dropped("invalid", "wrong Response Authenticator")
    answers = REPLY_CODES.get(sent.code)
    if answers is not None and code not in answers:
        raise Dropped("invalid", f"code {code} in answer to code {sent.code}")
    attributes, at, hidden = _walk(raw, False)
    if at >= 0:
        zeroed = code == ACCOUNTING_RESPONSE and sent.code != STATUS_SERVER
        vector = ZERO_VECTOR if zeroed else sent.authenticator
        if not _message_authenticator_valid(raw, at, vector, sent.secret):
            raise Dropped("invalid", "wrong Message-Authenticator")
    elif require_message_authenticator and sent.code == ACCESS_REQUEST:
        raise Dropped("no-message-authenticator")
    if sent.code in (ACCESS_REQUEST, STATUS_SERVER):
        received = [raw[start + 2 : end] for t, start, end in attributes if t == PROXY_STATE]
        if received and received != sent.proxy_states()[: len(received)]:
            raise Dropped("invalid", "Proxy-State that was not sent")
    return Message(raw, code, raw[1], raw[4:20], tuple(attributes), sent.secret, at, tuple(hidden))


def _answer(code: int, request: Message, attributes: bytes, *, sign: bool) -> bytes:
    """A reply to ``request`` with ``attributes`` (a zeroed Message-Authenticator first when
    ``sign``): Message-Authenticator and Response Authenticator computed."""
    secret = request.secret
    head = bytes((code, request.id)) + (RADIUS_HEADER_OCTETS + len(attributes)).to_bytes(2, "big")
    if sign:
        zeroed = code == ACCOUNTING_RESPONSE and request.code != STATUS_SERVER
        vector = ZERO_VECTOR if zeroed else request.authenticator
        mac = hmac_md5(secret, b"".join((head, vector, attributes)))
        attributes = b"".join((attributes[:2], mac, attributes[18:]))
    authenticator = _md5(b"".join((head, request.authenticator, attributes, secret))).digest()
    return b"".join((head, authenticator, attributes))


def _proxy_states(request: Message) -> bytes:
    raw = request.raw
    return b"".join([raw[start:end] for t, start, end in request.attributes if t == PROXY_STATE])


def nas_reply(request: Message, sent: Sent, reply: Message) -> bytes:
    """The upstream's ``reply`` to ``sent``, re-encoded as the answer to the NAS's ``request``.

    Code and attributes are the upstream's, in its order (salted ones
    encrypted again under the NAS secret; the NAS's Proxy-State when the
    upstream echoed none); the Response Authenticator is computed from the
    NAS's own Request Authenticator. Every answer to an Access-Request
    (Accept, Reject, Challenge) gets a Message-Authenticator, the first
    attribute, as FreeRADIUS 3.2.5 and later send it against BlastRADIUS; an
    Accounting-Response gets one when the upstream's reply had one.
    """
    sign = request.code == ACCESS_REQUEST or reply.message_authenticator_at >= 0
    attributes = _rewrite(
        reply.raw,
        reply.message_authenticator_at,
        reply.hidden,
        (sent.secret, sent.authenticator, request.secret, request.authenticator),
        sign,
    )
    for t, _, _ in reply.attributes:
        if t == PROXY_STATE:
            break
    else:
        attributes += _proxy_states(request)
    return _answer(reply.code, request, attributes, sign=sign)


def status_answer(request: Message, *, accounting: bool) -> bytes:
    """The proxy's own answer to a verified Status-Server (RFC 5997): an Access-Accept on
    the auth port, an Accounting-Response on the accounting port, signed, with the
    request's Proxy-State."""
    code = ACCOUNTING_RESPONSE if accounting else ACCESS_ACCEPT
    return _answer(code, request, _EMPTY_MESSAGE_AUTHENTICATOR + _proxy_states(request), sign=True)
