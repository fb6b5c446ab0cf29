"""Seeded input generators for the fuzz suite (tests/fuzz): random values of a msgspec type,
byte mutations of valid inputs, payloads nested past the recursion limit, hostile header
values, raw RADIUS attributes with correct authenticators, IPv4 datagrams.

Everything draws from one ``random.Random``, so a failing case is found again from the seed
and the case number the suite prints (``AAA_FUZZ_SEED``). No I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import msgspec.inspect as mi

Rng = random.Random

INTERESTING_INTS = (
    0,
    1,
    -1,
    2**31 - 1,
    -(2**31),
    2**32,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64,
    10**30,
)
INTERESTING_FLOATS = (
    0.0,
    -0.0,
    1e-308,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    2e9,
    -1.5,
)
INTERESTING_TEXT = (
    "",
    "A",
    "nas-01",
    "é" * 8,
    "\x00",
    "\u202e",
    "🛰",
    "a" * 300,
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "client:nas-01",
    "'; DROP",
)


def random_bytes(rng: Rng, max_len: int = 64) -> bytes:
    return rng.randbytes(rng.randint(0, max_len))


def random_text(rng: Rng, max_len: int = 24) -> str:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(INTERESTING_TEXT)
    if pick < 0.7:
        alphabet = "abcdefghijklmnopqrstuvwxyzABC0123456789-_.:"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))
    return "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(0, max_len)))


# --- values of a msgspec type, as builtins (the shape on the wire) ---------------------------


def value_of(rng: Rng, t: Any, depth: int = 0) -> Any:
    """A random builtin value for the msgspec type ``t`` (a class or an inspect type):
    valid most of the time, with edge values (huge ints, non-finite floats, odd text)."""
    info = t if isinstance(t, mi.Type) else mi.type_info(t)
    if isinstance(info, mi.StructType):
        out: dict[str, Any] = {}
        tag_field = info.tag_field
        if tag_field is not None:
            out[tag_field] = info.tag
        for field in info.fields:
            if not field.required and rng.random() < 0.3:
                continue
            out[field.encode_name] = value_of(rng, field.type, depth + 1)
        return out
    if isinstance(info, mi.UnionType):
        return value_of(rng, rng.choice(info.types), depth)
    if isinstance(info, mi.LiteralType):
        return rng.choice(info.values)
    if isinstance(info, mi.NoneType):
        return None
    if isinstance(info, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(info, mi.IntType):
        return rng.choice(INTERESTING_INTS) if rng.random() < 0.2 else rng.randint(-5, 10**6)
    if isinstance(info, mi.FloatType):
        return rng.choice(INTERESTING_FLOATS) if rng.random() < 0.2 else rng.uniform(-1, 2e9)
    if isinstance(info, mi.StrType):
        return random_text(rng)
    if isinstance(info, mi.BytesType | mi.ByteArrayType):
        return random_bytes(rng, 16)
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        size = 0 if depth > 4 else rng.randint(0, 3)
        return [value_of(rng, info.item_type, depth + 1) for _ in range(size)]
    if isinstance(info, mi.TupleType):
        return [value_of(rng, item, depth + 1) for item in info.item_types]
    if isinstance(info, mi.DictType):
        size = 0 if depth > 4 else rng.randint(0, 3)
        return {
            str(value_of(rng, info.key_type, depth + 1)): value_of(rng, info.value_type, depth + 1)
            for _ in range(size)
        }
    return random_value(rng, depth + 1)


def random_value(rng: Rng, depth: int = 0) -> Any:
    """Any JSON-like value: what a forged field of the wrong type holds."""
    kinds: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.random() < 0.5,
        lambda: rng.choice(INTERESTING_INTS),
        lambda: rng.choice(INTERESTING_FLOATS),
        lambda: random_text(rng),
    ]
    if depth < 4:
        kinds.append(lambda: [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))])
        kinds.append(
            lambda: {
                random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))
            }
        )
    return rng.choice(kinds)()


def perturb(rng: Rng, obj: Any) -> Any:
    """``obj`` (a dict of an event's fields) with a few fields changed in kind: wrong types,
    missing, extra, or a value nested past the recursion limit."""
    if not isinstance(obj, dict) or not obj:
        return random_value(rng)
    out = dict(obj)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(out))
        op = rng.random()
        if op < 0.35:
            out[key] = random_value(rng)
        elif op < 0.5:
            out.pop(key, None)
            if not out:
                return out
        elif op < 0.7:
            out[random_text(rng)] = random_value(rng)
        elif op < 0.8:
            out[key] = rng.choice(INTERESTING_FLOATS + INTERESTING_INTS)
        elif op < 0.9:
            out["type"] = random_text(rng)
        else:
            out[key] = Deep(rng.randint(500, 5000))
    return out


class Deep:
    """A placeholder for arrays nested ``depth`` deep, written out by :func:`to_json`."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


def _expand(obj: Any, deep: dict[str, int]) -> Any:
    if isinstance(obj, Deep):
        marker = f"@@deep{len(deep)}@@"
        deep[marker] = obj.depth
        return marker
    if isinstance(obj, dict):
        return {k: _expand(v, deep) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v, deep) for v in obj]
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(type(value).__name__)


def to_json(obj: Any) -> bytes:
    """``obj`` as JSON, each :class:`Deep` as arrays nested that deep; a text field that is
    not UTF-8 (a lone surrogate) is written escaped, as a forger would."""
    deep: dict[str, int] = {}
    expanded = _expand(obj, deep)
    try:
        data = _json.encode(expanded)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        data = json.dumps(expanded, allow_nan=True, default=_json_default).encode()
    for marker, depth in deep.items():
        data = data.replace(b'"' + marker.encode() + b'"', b"[" * depth + b"]" * depth)
    return data


def to_msgpack(obj: Any) -> bytes:
    """``obj`` as msgpack, each :class:`Deep` as one-element arrays nested that deep."""
    deep: dict[str, int] = {}
    expanded = _expand(obj, deep)
    try:
        data = _msgpack.encode(expanded)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        return b"\x80"
    for marker, depth in deep.items():
        data = data.replace(_msgpack.encode(marker), b"\x91" * depth + b"\x90")
    return data


# --- bytes ------------------------------------------------------------------------------------


def mutate(rng: Rng, data: bytes, others: Sequence[bytes] = ()) -> bytes:
    """``data`` with one to four random edits: bit flips, edge octets, insertions,
    deletions, repeats, truncation, a splice with another input."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        at = rng.randint(0, len(buf))
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B))
        elif op == 2:
            buf[at:at] = random_bytes(rng, 8)
        elif op == 3 and buf:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 4 and buf:
            end = min(len(buf), at + rng.randint(1, 32))
            buf[at:at] = buf[at:end] * rng.randint(1, 8)
        elif op == 5:
            del buf[rng.randint(0, len(buf)) :]
        elif op == 6 and others:
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            buf = buf[:at] + bytearray(other[cut:])
        else:
            buf += random_bytes(rng, 8)
    return bytes(buf)


def nested(rng: Rng, kind: str = "json") -> bytes:
    """A payload nested past the recursion limit, alone or in an event's unknown field."""
    depth = rng.choice((1_000, 5_000, 100_000))
    if kind == "json":
        inner = rng.choice((b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth))
        return rng.choice((inner, b'{"type":"metrics.sample","server":"A","x":' + inner + b"}"))
    inner = b"\x91" * depth + b"\x90"
    head = _msgpack.encode({"type": "metrics.sample", "server": "A"})
    return rng.choice((inner, b"\x83" + head[1:] + _msgpack.encode("x") + inner))


# --- header values ----------------------------------------------------------------------------


def header_value(rng: Rng, good: str) -> str:
    """A header value an attacker might send in place of ``good``."""
    pick = rng.randrange(10)
    if pick == 0:
        return ""
    if pick == 1:
        return good.upper()
    if pick == 2:
        return good[:-1]
    if pick == 3:
        return good + "0"
    if pick == 4:
        return "é" * len(good)
    if pick == 5:
        return "".join(rng.choice("0123456789abcdef") for _ in range(len(good)))
    if pick == 6:
        return good[:10] + "\x00" + good[11:]
    if pick == 7:  # what NATS delivers is UTF-8: no lone surrogates
        return random_text(rng, 200).encode("utf-8", "replace").decode()
    if pick == 8:
        return "\u0661" * 64  # ARABIC-INDIC DIGIT ONE: a digit, not a hex digit
    return good


# --- RADIUS -----------------------------------------------------------------------------------

MESSAGE_AUTHENTICATOR = 80
VENDOR_SPECIFIC = 26


def attribute(kind: int, value: bytes) -> bytes:
    value = value[:253]
    return bytes((kind, len(value) + 2)) + value


def vsa(vendor: int, kind: int, value: bytes) -> bytes:
    value = value[:247]
    inner = bytes((kind, len(value) + 2)) + value
    return attribute(VENDOR_SPECIFIC, struct.pack("!I", vendor) + inner)


def signed_request(
    code: int, ident: int, attributes: bytes, secret: bytes, *, message_authenticator: bool
) -> bytes:
    """A RADIUS request (CoA-Request and the like, RFC 5176) whose Request Authenticator and,
    if asked, Message-Authenticator (first attribute) are right under ``secret``."""
    zero = bytes(16)
    if message_authenticator:
        attributes = attribute(MESSAGE_AUTHENTICATOR, zero) + attributes
    length = 20 + len(attributes)
    header = struct.pack("!BBH", code, ident, length)
    if message_authenticator:
        mac = hmac.new(secret, header + zero + attributes, hashlib.md5).digest()
        attributes = attribute(MESSAGE_AUTHENTICATOR, mac) + attributes[18:]
    authenticator = hashlib.md5(header + zero + attributes + secret).digest()
    return header + authenticator + attributes


# --- IPv4 / ICMP ------------------------------------------------------------------------------


def ipv4(source: str, destination: str, payload: bytes, protocol: int = 1) -> bytes:
    """An IPv4 datagram (no options) carrying ``payload``."""
    src = bytes(int(x) for x in source.split("."))
    dst = bytes(int(x) for x in destination.split("."))
    total = (20 + len(payload)) & 0xFFFF
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, protocol, 0, src, dst)
    return header + payload
