"""The agent's RADIUS proxy fed random and mutated datagrams on real UDP, in front of the
reference server: nothing crashes it, what it refuses leaves no trace in its state, and every
datagram is accounted for once (answered, answered again, Status-Server, or dropped by reason).

``AAA_FUZZ_CASES`` datagrams per phase (300 in the ordinary suite; ``make fuzz`` sets
100000); ``AAA_FUZZ_SEED`` seeds them (a fixed seed by default, so a run is repeatable).
"""

from __future__ import annotations

import os
import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
from pyrad import packet

from services.agent.affinity import MAX_ENTRIES
from services.agent.proxy import RECENT_MAX, UPSTREAM_DROPS, RadiusProxy
from services.radius.packet import dictionary
from tests.conftest import FarmFactory
from tests.support.proxying import NAS, Nas, nas, proxy_alone, until, with_proxy

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("AAA_FUZZ_CASES") or 300)
SEED = int(os.environ.get("AAA_FUZZ_SEED") or 20261130)
BATCH = 50
"""Datagrams sent before waiting for the proxy to take them: a socket buffer's worth."""

ALLOWED, LENIENT, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.9"
NAS_REASONS = {
    "unknown-nas",
    "malformed",
    "unsupported-code",
    "bad-authenticator",
    "bad-message-authenticator",
    "no-message-authenticator",
    "proxy-state-unsigned",
    "duplicate",
    "overload",
    "no-answer",
    "too-big",
    "reply-too-big",
    "conversation-lost",
}

# attributes a NAS sends, some that carry meaning to the proxy, some it never looks at
ATTRIBUTES = [1, 4, 5, 6, 18, 24, 25, 30, 31, 32, 33, 44, 61, 79, 87]


def _attributes(rng: random.Random, count: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(count):
        code = rng.choice([*ATTRIBUTES, rng.randrange(1, 256)])
        out.append((code, rng.randbytes(rng.choice([0, 1, 4, 16, rng.randrange(0, 254)]))))
    return out


def add_raw(pkt: packet.Packet, attributes: list[tuple[int, bytes]]) -> None:
    for code, value in attributes:
        OrderedDict.setdefault(pkt, code, []).append(value)


def signed_access_request(
    rng: random.Random, *, sign: bool = True, secret: bytes = NAS
) -> packet.AuthPacket:
    """An Access-Request of the NAS's, right under ``secret``, its attributes at random."""
    pkt = packet.AuthPacket(
        code=packet.AccessRequest, secret=secret, dict=dictionary(), id=rng.randrange(256)
    )
    pkt.authenticator = rng.randbytes(16)
    pkt["User-Name"] = rng.choice(["alice", "bob", "x" * rng.randrange(1, 200)])
    if rng.random() < 0.8:
        password = rng.choice(["wonderland", "", "p" * rng.randrange(1, 129)])
        pkt["User-Password"] = pkt.PwCrypt(password) if password else rng.randbytes(5)
    add_raw(pkt, _attributes(rng, rng.randrange(0, 8)))
    if sign:
        pkt.add_message_authenticator()
    return pkt


def accounting_request(rng: random.Random) -> packet.AcctPacket:
    pkt = packet.AcctPacket(secret=NAS, dict=dictionary(), id=rng.randrange(256))
    pkt["Acct-Status-Type"] = rng.choice([1, 2, 3])
    pkt["Acct-Session-Id"] = rng.randbytes(8).hex()
    add_raw(pkt, _attributes(rng, rng.randrange(0, 5)))
    return pkt


def status_server(rng: random.Random) -> packet.AuthPacket:
    pkt = packet.AuthPacket(code=packet.StatusServer, secret=NAS, dict=dictionary())
    pkt.id = rng.randrange(256)
    pkt.add_message_authenticator()
    return pkt


def mutate(rng: random.Random, raw: bytes) -> bytes:
    """``raw`` changed within its Length: bits flipped, cut, the header's fields changed,
    attributes' lengths broken, or a slice repeated; never only padding after it."""
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[: rng.randrange(1, len(data) + 1)]
        elif kind == 2 and len(data) >= 4:
            struct.pack_into("!H", data, 2, rng.choice([0, 19, 20, len(data) + 1, 65535]))
        elif kind == 3 and len(data) > 22:
            data[rng.randrange(21, len(data))] = rng.choice([0, 1, 2, 255])
        elif kind == 4 and data:
            data[0] = rng.choice([0, 1, 2, 3, 4, 5, 11, 12, 40, 43, 255])
        elif kind == 5 and len(data) > 20:
            start = rng.randrange(20, len(data))
            data[start:start] = data[start : start + rng.randrange(1, 40)]
            struct.pack_into("!H", data, 2, min(len(data), 65535))
    if bytes(data) == raw:
        data[rng.randrange(len(data))] ^= 0x80
    return bytes(data)


def noise(rng: random.Random) -> bytes:
    """Random bytes, sometimes with a plausible header (never none: asyncio sends no empty
    datagram)."""
    data = bytearray(rng.randbytes(rng.choice([1, 19, 20, 21, rng.randrange(1, 700)])))
    if len(data) >= 4 and rng.random() < 0.5:
        data[0] = rng.choice([1, 4, 12])
        struct.pack_into("!H", data, 2, len(data))
    return bytes(data)


def refused_input(rng: random.Random) -> tuple[str, bool, bytes]:
    """A datagram the proxy must refuse: (source, to the accounting port, bytes)."""
    pick = rng.random()
    if pick < 0.25:
        return ALLOWED, rng.random() < 0.3, noise(rng)
    if pick < 0.55:
        seeds: list[Callable[[], bytes]] = [
            lambda: signed_access_request(rng).RequestPacket(),
            lambda: status_server(rng).RequestPacket(),
        ]
        return ALLOWED, False, mutate(rng, rng.choice(seeds)())
    if pick < 0.7:
        return ALLOWED, True, mutate(rng, accounting_request(rng).RequestPacket())
    if pick < 0.8:  # right in every way but its source
        return STRANGER, False, signed_access_request(rng).RequestPacket()
    if pick < 0.9:  # BlastRADIUS: no Message-Authenticator from a NAS that must sign
        return ALLOWED, False, signed_access_request(rng, sign=False).RequestPacket()
    # a NAS let off signing, with Proxy-State and no Message-Authenticator
    pkt = signed_access_request(rng, sign=False)
    pkt.AddAttribute("Proxy-State", rng.randbytes(rng.randrange(1, 30)))
    return LENIENT, False, pkt.RequestPacket()


def valid_input(rng: random.Random, sent: list[bytes]) -> tuple[str, bool, bytes]:
    """A datagram the proxy may take: right under the NAS secret, its attributes at random,
    or one sent before again (a retransmission)."""
    pick = rng.random()
    if pick < 0.1 and sent:
        return ALLOWED, False, rng.choice(sent)
    if pick < 0.6:
        return ALLOWED, False, signed_access_request(rng).RequestPacket()
    if pick < 0.7:
        return LENIENT, False, signed_access_request(rng, sign=False).RequestPacket()
    if pick < 0.85:
        return ALLOWED, True, accounting_request(rng).RequestPacket()
    return ALLOWED, rng.random() < 0.5, status_server(rng).RequestPacket()


def bounded(proxy: RadiusProxy) -> None:
    settings = proxy.settings
    assert proxy.in_flight <= settings.max_in_flight
    assert len(proxy._recent) <= RECENT_MAX and len(proxy.conversations) <= MAX_ENTRIES
    assert proxy.upstream_sockets() <= settings.max_upstream_sockets * 2  # auth and acct
    assert len(proxy.log) <= proxy.log.max_keys


def accounted(proxy: RadiusProxy, sent: int) -> None:
    counters = proxy.counters
    assert counters.received == sent
    assert counters.dropped["error"] == 0, "the proxy raised on a datagram"
    assert set(counters.dropped) <= NAS_REASONS | UPSTREAM_DROPS, counters.dropped
    assert counters.settled() + proxy.in_flight == counters.received


async def feed(
    proxy: RadiusProxy,
    senders: dict[tuple[str, bool], Nas],
    inputs: Callable[[], tuple[str, bool, bytes]],
    count: int,
    check: Callable[[], None],
) -> None:
    """Send ``count`` datagrams, a batch at a time, each batch taken whole before the next."""
    start = proxy.counters.received
    for first in range(0, count, BATCH):
        size = min(BATCH, count - first)
        for _ in range(size):
            source, accounting, raw = inputs()
            senders[(source, accounting)].send(raw)
        target = start + first + size
        await until(lambda: proxy.counters.received == target)  # noqa: B023
        check()


async def test_random_and_mutated_datagrams_through_the_proxy(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(
        config,
        tmp_path,
        acct=True,
        alternates=(),
        nas_addresses=[ALLOWED, LENIENT],
        nas_without_message_authenticator=[LENIENT],
        max_in_flight=64,
        max_upstream_sockets=1,
        response_window_s=0.3,
        conversation_wait_s=0.3,
    )
    rng = random.Random(f"{SEED}:proxy")
    async with proxy_alone(config) as (proxy, _):
        senders: dict[tuple[str, bool], Nas] = {}
        async with (
            nas(config, ALLOWED) as auth,
            nas(config, ALLOWED, accounting=True) as acct,
            nas(config, LENIENT) as lenient,
            nas(config, STRANGER) as stranger,
        ):
            senders = {
                (ALLOWED, False): auth,
                (ALLOWED, True): acct,
                (LENIENT, False): lenient,
                (STRANGER, False): stranger,
            }

            # what must be refused leaves nothing behind: no request taken, nothing kept,
            # no upstream socket, no reply
            def untouched() -> None:
                assert proxy.counters.accepted == 0 and proxy.in_flight == 0
                assert len(proxy._recent) == 0 and len(proxy.conversations) == 0
                assert proxy.upstream_sockets() == 0 and proxy.counters.forwarded == 0
                accounted(proxy, proxy.counters.received)

            await feed(proxy, senders, lambda: refused_input(rng), CASES, untouched)
            assert proxy.counters.settled() == CASES
            assert all(s.replies.empty() for s in senders.values())

            # what is right is taken, answered or dropped for a reason, within the bounds
            sent: list[bytes] = []

            def valid() -> tuple[str, bool, bytes]:
                source, accounting, raw = valid_input(rng, sent)
                if source == ALLOWED and not accounting:
                    sent.append(raw)
                    del sent[:-32]
                return source, accounting, raw

            def within_bounds() -> None:
                bounded(proxy)
                accounted(proxy, proxy.counters.received)

            await feed(proxy, senders, valid, CASES, within_bounds)
            await until(lambda: proxy.in_flight == 0, timeout_s=60)
            accounted(proxy, 2 * CASES)
            bounded(proxy)
            counters = proxy.counters
            assert counters.answered > 0 and counters.status > 0
            replies = sum(s.replies.qsize() for s in senders.values())
            assert replies == counters.answered + counters.resent + counters.status
