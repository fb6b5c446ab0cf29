"""ICMP notices: the Echo parser (services/radius/icmp.py), the notice frame
(services/radius/notice.py) and the agent's ICMP listener path, for any datagram: a notice
or a counted refusal, never an exception."""

from __future__ import annotations

import time

from schemas import codec
from schemas.events import FailoverNotice
from schemas.signing import Rejected, client_authenticator
from services.agent.icmp import IcmpListener
from services.agent.receive import verify_notice
from services.radius.icmp import echo_request, parse_echo_request
from services.radius.notice import NoticeMessage, WireError, frame, unframe
from services.runtime.config import ClientConfig, Secret, ServerConfig
from tests.fuzz.conftest import Fuzz
from tests.support.fuzzing import ipv4, mutate, random_bytes, random_text

SECRET = b"icmp-secret-of-nas-01"
SERVERS = {"A": ServerConfig(id="A", ip="127.0.0.11", status_secret=Secret(env="UNUSED"))}
CLIENT = ClientConfig(id="nas-01", ip="127.0.1.1", secret=Secret(env="UNUSED"), home="A")
LABELS = {
    "accepted",
    "refused",
    "callback-error",
    "malformed",
    "bad-version",
    "bad-checksum",
    "not-a-notice",
    "other-address",
    "overload",
}


def good_frame(seq: int) -> bytes:
    notice = FailoverNotice(
        incident_id="inc", server="A", client="nas-01", alternates=["B"], seq=seq,
        valid_until=time.time() + 300,
    )  # fmt: skip
    payload = codec.encode(notice)
    auth = client_authenticator(SECRET, "127.0.0.11", CLIENT.ip, payload)
    return frame(NoticeMessage(server="A", payload=payload, authenticator=auth))


def datagram(fuzz: Fuzz, seeds: list[bytes]) -> bytes:
    """An IPv4 datagram as a raw socket reads it: an Echo Request carrying a frame (good,
    mutated before or after the checksum), another ICMP message, or noise."""
    rng = fuzz.rng
    pick = rng.random()
    data = rng.choice(seeds)
    if pick < 0.3:
        data = mutate(rng, data, seeds)  # then a right checksum: the frame itself is broken
    elif pick < 0.35:
        data = random_bytes(rng, 64)
    destination = rng.choice(("127.0.1.1", "127.0.1.1", "127.0.1.2"))
    message = echo_request(rng.randrange(65536), rng.randrange(65536), data)
    whole = ipv4("127.0.0.11", destination, message)
    if pick > 0.9:
        return mutate(rng, whole)  # the IP header, the ICMP header or the checksum broken
    if pick > 0.85:
        return random_bytes(rng, 80)
    return whole


async def test_the_listener_path_takes_any_datagram(fuzz: Fuzz) -> None:
    seeds = [good_frame(seq) for seq in range(1, 6)]
    calls: list[str] = []

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        calls.append(server)
        try:
            verify_notice(CLIENT, SECRET, SERVERS, server, payload, auth, ct)
        except Rejected:
            return False
        return True

    listener = IcmpListener("127.0.1.1", on_notice)
    for _ in fuzz.cases():
        listener._datagram(datagram(fuzz, seeds))
        while not listener._queue.empty():
            await listener._deliver(listener._queue.get_nowait())
        assert set(listener.counters) <= LABELS
    counts = listener.counters
    assert counts["accepted"] and counts["malformed"] and counts["other-address"]
    assert counts["callback-error"] == 0
    # nothing reached the agent that the frame parser did not hand over
    assert len(calls) == counts["accepted"] + counts["refused"]


def test_echo_parser_and_frame_reader_raise_only_wire_errors(fuzz: Fuzz) -> None:
    rng = fuzz.rng
    seeds = [good_frame(seq) for seq in range(1, 6)]
    for _ in fuzz.cases():
        raw = datagram(fuzz, seeds)
        try:
            echo = parse_echo_request(raw)
        except WireError as exc:
            assert exc.reason in {"malformed", "bad-checksum"}
            echo = None
        data = echo.data if echo is not None else mutate(rng, rng.choice(seeds), seeds)
        try:
            message = unframe(data)
        except WireError as exc:
            assert exc.reason in {"malformed", "bad-version"}
            continue
        assert frame(message) == data  # what reads back is exactly what was framed


def test_a_framed_notice_reads_back_the_same(fuzz: Fuzz) -> None:
    rng = fuzz.rng
    for _ in fuzz.cases():
        message = NoticeMessage(
            server=random_text(rng).encode("utf-8", "replace").decode(),
            payload=random_bytes(rng, 600),
            authenticator=rng.randbytes(32).hex(),
            content_type=rng.choice((codec.JSON_TYPE, codec.MSGPACK_TYPE)),
        )
        try:
            data = frame(message)
        except WireError as exc:
            assert exc.reason == "too-long"
            continue
        assert unframe(data) == message
