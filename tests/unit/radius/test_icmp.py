"""Notices in ICMP Echo Requests: the framing, the checksum, and an IcmpListener alone."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from schemas import codec
from schemas.events import FailoverNotice
from schemas.signing import Rejected, client_authenticator
from services.agent import icmp as agent_icmp
from services.agent.icmp import IcmpListener, IcmpUnavailable
from services.agent.receive import verify_notice
from services.notifier.transports.icmp import IcmpSender
from services.radius.icmp import checksum, echo_request, parse_echo_request
from services.radius.notice import MAGIC, NoticeMessage, WireError, frame, unframe
from services.runtime.config import ClientConfig, Secret, ServerConfig

TIMEOUT = 5.0


def message(payload: bytes = b'{"x":1}') -> NoticeMessage:
    return NoticeMessage(server="A", payload=payload, authenticator="ab" * 32)


# --- the framing, alone ------------------------------------------------------


def test_frame_round_trip_in_both_encodings() -> None:
    for content in (codec.JSON_TYPE, codec.MSGPACK_TYPE):
        original = NoticeMessage(
            server="A", payload=b"\x00\x01" * 300, authenticator="cd" * 32, content_type=content
        )
        data = frame(original)
        assert data.startswith(MAGIC)
        assert unframe(data) == original


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"AAAF", "malformed"),
        (b"AAAF\x02\x00\x01A", "bad-version"),
        (frame(message())[:-1], "malformed"),
        (frame(message()) + b"!", "malformed"),
        (b"AAAF\x01\x07" + frame(message())[6:], "malformed"),
        (b"PING" + frame(message())[4:], "malformed"),
    ],
)
def test_broken_frames_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as error:
        unframe(data)
    assert error.value.reason == reason


def test_echo_request_checksum_and_parsing() -> None:
    icmp = echo_request(0x1234, 7, b"hello")
    assert checksum(icmp) == 0
    header = bytes([0x45, 0, 0, 20 + len(icmp), 0, 0, 0, 0, 64, 1, 0, 0])
    addresses = socket.inet_aton("127.0.0.1") + socket.inet_aton("127.0.1.1")
    echo = parse_echo_request(header + addresses + icmp)
    assert echo is not None
    assert (echo.source, echo.destination, echo.ident, echo.seq, echo.data) == (
        "127.0.0.1",
        "127.0.1.1",
        0x1234,
        7,
        b"hello",
    )
    reply = bytes([0]) + icmp[1:]
    assert parse_echo_request(header + addresses + reply) is None
    corrupt = icmp[:-1] + b"?"
    with pytest.raises(WireError) as error:
        parse_echo_request(header + addresses + corrupt)
    assert error.value.reason == "bad-checksum"


@pytest.mark.raw_sockets
async def test_forged_and_broken_icmp_notices_are_rejected() -> None:
    secret = b"client-secret"
    notice = FailoverNotice(
        incident_id="inc-1",
        server="A",
        client="nas-01",
        alternates=["B"],
        seq=1,
        valid_until=2e9,
    )
    payload = codec.encode(notice)
    good = client_authenticator(secret, "127.0.0.11", "127.0.1.1", payload)
    forged = client_authenticator(b"guessed", "127.0.0.11", "127.0.1.1", payload)
    seen: asyncio.Queue[Any] = asyncio.Queue()
    client = ClientConfig(id="nas-01", ip="127.0.1.1", secret=Secret(env="UNUSED"), home="A")
    servers = {"A": ServerConfig(id="A", ip="127.0.0.11", status_secret=Secret(env="UNUSED"))}

    async def on_notice(server: str, data: bytes, auth: str | None, ct: str | None) -> bool:
        try:
            await seen.put(verify_notice(client, secret, servers, server, data, auth, ct))
        except Rejected as exc:
            await seen.put(exc.reason)
            return False
        return True

    sender = IcmpSender()
    try:
        async with IcmpListener("127.0.1.1", on_notice) as listener:
            await sender.send("127.0.1.1", frame(NoticeMessage("A", payload, forged)))
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == "bad-authenticator"
            tampered = payload.replace(b'["B"]', b'["C"]')
            await sender.send("127.0.1.1", frame(NoticeMessage("A", tampered, good)))
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == "bad-authenticator"
            await sender.send("127.0.1.1", frame(NoticeMessage("Z", payload, good)))
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == "unknown-server"
            await sender.send("127.0.1.1", MAGIC + b"\x01garbage")  # counted, never handed on
            await sender.send("127.0.1.1", b"an ordinary ping")
            await sender.send("127.0.1.2", frame(NoticeMessage("A", payload, good)))  # not ours
            await sender.send("127.0.1.1", frame(NoticeMessage("A", payload, good)))
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == notice
            assert seen.empty()
    finally:
        sender.close()
    assert listener.counters["refused"] == 3
    assert listener.counters["accepted"] == 1
    assert listener.counters["malformed"] == 1
    assert listener.counters["not-a-notice"] == 1


async def test_without_raw_sockets_the_listener_says_so_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(agent_icmp, "open_raw_icmp", refused)

    async def on_notice(server: str, data: bytes, auth: str | None, ct: str | None) -> bool:
        return True

    with pytest.raises(IcmpUnavailable, match="CAP_NET_RAW"):
        await IcmpListener("127.0.1.1", on_notice).start()
