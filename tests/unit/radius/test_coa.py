"""Notices as RADIUS CoA-Requests: the attributes, the back-off, and a CoaListener alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pyrad import packet

from schemas import codec
from schemas.events import FailoverNotice, ReadmitNotice
from services.agent.coa import CoaListener
from services.notifier.transports.coa import CoaClient
from services.radius.notice import (
    ALTERNATE,
    COA_ACK,
    COA_NAK,
    EVENT_TIMESTAMP,
    INCIDENT,
    MAX_VSA_OCTETS,
    NOTICE,
    NOTICE_TYPE,
    SEQUENCE,
    SERVER,
    VALID_UNTIL,
    ErrorCause,
    NoticeMessage,
    WireError,
    backoff,
    coa_request,
    error_cause,
    read_coa_notice,
    rfc5080_rand,
    split_octets,
)
from services.radius.packet import dictionary
from tests.support.datagrams import Collect

TIMEOUT = 5.0
SECRET = b"radius-secret"


def notice_message(alternates: int = 3) -> tuple[FailoverNotice, NoticeMessage]:
    notice = FailoverNotice(
        incident_id="inc-7",
        server="A",
        client="nas-01",
        alternates=[f"server-{i:02d}-of-the-east-farm-of-the-company" for i in range(alternates)],
        seq=1_700_000_000_000_001,
        valid_until=1_700_000_300.5,
    )
    return notice, NoticeMessage(server="A", payload=codec.encode(notice), authenticator="ab" * 32)


def received(raw: bytes, secret: bytes = SECRET) -> Any:
    return packet.CoAPacket(packet=raw, secret=secret, dict=dictionary())


# --- the attributes, alone ---------------------------------------------------


def test_a_long_notice_is_split_in_order_and_reassembled() -> None:
    notice, message = notice_message(alternates=8)
    assert len(message.payload) > 2 * MAX_VSA_OCTETS
    request = coa_request(message, SECRET, dictionary(), now=1_700_000_000.0)
    raw = request.RequestPacket()
    assert raw[0] == packet.CoARequest

    pkt = received(raw)
    assert pkt.VerifyCoARequest()
    assert pkt.message_authenticator and pkt.verify_message_authenticator()
    assert len(pkt[NOTICE]) == len(split_octets(message.payload)) >= 3
    assert all(len(chunk) <= MAX_VSA_OCTETS for chunk in pkt[NOTICE])
    assert read_coa_notice(pkt) == message
    # the plain attributes repeat the notice for NAS devices that read attributes only
    assert pkt[SERVER] == ["A"]
    assert pkt[NOTICE_TYPE] == ["notice.failover.v2"]
    assert pkt[INCIDENT] == ["inc-7"]
    assert pkt[ALTERNATE] == [f"server-{i:02d}-of-the-east-farm-of-the-company" for i in range(8)]
    assert pkt[VALID_UNTIL] == [1_700_000_300]
    assert pkt[SEQUENCE] == [notice.seq]
    assert pkt["Event-Timestamp"] == [1_700_000_000]
    # under another secret it verifies as nothing
    assert not received(raw, b"other").VerifyCoARequest()


def test_readmission_notice_and_msgpack_content_type() -> None:
    readmit = ReadmitNotice(
        incident_id="inc-7",
        server="A",
        client="nas-01",
        seq=3,
        valid_until=2e9,
    )
    message = NoticeMessage(
        server="A",
        payload=codec.encode(readmit, "msgpack"),
        authenticator="cd" * 32,
        content_type=codec.MSGPACK_TYPE,
    )
    pkt = received(coa_request(message, SECRET, dictionary(), now=time.time()).RequestPacket())
    assert read_coa_notice(pkt) == message
    assert pkt[NOTICE_TYPE] == ["notice.readmit.v2"]
    assert ALTERNATE not in pkt


def test_a_notice_too_long_for_one_packet_is_refused() -> None:
    message = NoticeMessage(server="A", payload=b"x" * 5000, authenticator="ab" * 32)
    with pytest.raises(WireError) as error:
        coa_request(message, SECRET, dictionary(), now=time.time())
    assert error.value.reason == "too-long"


def test_a_request_without_notice_or_authenticator_is_incomplete() -> None:
    pkt = packet.CoAPacket(secret=SECRET, dict=dictionary())
    pkt[SERVER] = "A"
    with pytest.raises(WireError) as error:
        read_coa_notice(received(pkt.RequestPacket()))
    assert error.value.reason == "missing-attribute"
    assert "AAA-Failover-Notice" in str(error.value)


def test_backoff_doubles_up_to_the_maximum_with_rfc5080_spread() -> None:
    assert backoff(1.0, 4, 5.0) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff(2.0, 0, 16.0) == [2.0]
    spread = backoff(1.0, 3, 100.0, rfc5080_rand())
    for wait, base in zip(spread, [1.0, 2.0, 4.0, 8.0], strict=True):
        assert 0.9 * base <= wait <= 1.1 * base
    with pytest.raises(ValueError):
        backoff(0.0, 1, 1.0)
    with pytest.raises(ValueError):
        backoff(1.0, -1, 1.0)


# --- listener and client on loopback ---------------------------------------


async def test_listener_answers_ack_nak_and_repeats_its_answer_to_a_retransmission() -> None:
    seen: list[NoticeMessage] = []

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        """Accepts the first notice, refuses the second, fails on any later one."""
        seen.append(NoticeMessage(server=server, payload=payload, authenticator=auth or ""))
        if len(seen) > 2:
            raise RuntimeError("the agent failed")
        return len(seen) == 1

    _, message = notice_message()
    client = CoaClient()
    async with CoaListener("127.0.1.1", 0, SECRET, on_notice) as listener:
        try:
            ack = await client.exchange(
                coa_request(message, SECRET, dictionary(), now=time.time()),
                listener.address,
                [TIMEOUT],
            )
            assert ack.acked and ack.code == COA_ACK and ack.transmissions == 1
            nak = await client.exchange(
                coa_request(message, SECRET, dictionary(), now=time.time()),
                listener.address,
                [TIMEOUT],
            )
            assert (nak.acked, nak.code, nak.error_cause) == (
                False,
                COA_NAK,
                ErrorCause.INVALID_ATTRIBUTE_VALUE,
            )
            assert "407" in nak.reason
        finally:
            client.close()
        assert seen == [message, message]

        # a retransmission gets the same answer again, without a second callback
        request = coa_request(message, SECRET, dictionary(), now=time.time())
        request.id = 99
        raw = request.RequestPacket()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Collect(replies), remote_addr=listener.address
        )
        try:
            transport.sendto(raw)
            first = await asyncio.wait_for(replies.get(), TIMEOUT)
            transport.sendto(raw)
            second = await asyncio.wait_for(replies.get(), TIMEOUT)
        finally:
            transport.close()
        assert first == second
        answer = request.CreateReply(packet=first)
        assert request.VerifyReply(answer, first)
        assert (answer.code, error_cause(answer)) == (COA_NAK, ErrorCause.RESOURCES_UNAVAILABLE)
        assert listener.counters["duplicate"] == 1
        assert listener.counters["callback-error"] == 1
        assert len(seen) == 3


async def test_listener_refuses_what_it_cannot_authenticate() -> None:
    calls: list[str] = []

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        calls.append(server)
        return True

    _, message = notice_message()
    async with CoaListener("127.0.1.1", 0, SECRET, on_notice) as listener:
        client = CoaClient()
        try:
            # wrong secret: discarded silently (RFC 5176 section 3.5), no answer at all
            wrong = await client.exchange(
                coa_request(message, b"wrong", dictionary(), now=time.time()),
                listener.address,
                [0.3],
            )
            assert (wrong.acked, wrong.code, wrong.unverified) == (False, None, 0)
            assert wrong.reason == "no answer after 1 transmissions"
            # no Message-Authenticator: not authenticated either, discarded silently
            bare = coa_request(message, SECRET, dictionary(), now=time.time())
            bare.message_authenticator = None
            del bare[80]
            missing = await client.exchange(bare, listener.address, [0.3])
            assert (missing.acked, missing.code) == (False, None)
            # authenticated, an old Event-Timestamp: NAK'd with Invalid-Request
            stale = await client.exchange(
                coa_request(message, SECRET, dictionary(), now=time.time() - 3600),
                listener.address,
                [TIMEOUT],
            )
            assert (stale.code, stale.error_cause) == (COA_NAK, ErrorCause.INVALID_REQUEST)
            # authenticated, no Event-Timestamp: NAK'd with Missing-Attribute
            undated = coa_request(message, SECRET, dictionary(), now=time.time())
            del undated[EVENT_TIMESTAMP]
            no_stamp = await client.exchange(undated, listener.address, [TIMEOUT])
            assert (no_stamp.code, no_stamp.error_cause) == (
                COA_NAK,
                ErrorCause.MISSING_ATTRIBUTE,
            )
        finally:
            client.close()
    assert calls == []
    assert listener.counters["bad-authenticator"] == 1
    assert listener.counters["missing-message-authenticator"] == 1
    assert listener.counters["stale-timestamp"] == 1
    assert listener.counters["missing-event-timestamp"] == 1
    assert listener.counters["nak-sent"] == 2
