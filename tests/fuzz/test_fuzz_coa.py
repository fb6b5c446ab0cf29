"""The CoA listener's path for every datagram: pyrad's parsing, authentication,
Event-Timestamp, the notice's attributes (read_coa_notice) and the agent's check of the
notice. Whatever arrives: no exception, no answer and nothing remembered for what does not
authenticate, and for what does an answer under the secret (CoA-ACK or CoA-NAK)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from pyrad import packet

from schemas import codec
from schemas.events import FailoverNotice, ReadmitNotice
from schemas.signing import Rejected, client_authenticator
from services.agent.coa import CoaListener
from services.agent.receive import verify_notice
from services.radius.notice import (
    COA_ACK,
    COA_NAK,
    COA_REQUEST,
    NoticeMessage,
    WireError,
    coa_request,
    read_coa_notice,
)
from services.radius.packet import dictionary
from services.runtime.config import ClientConfig, Secret, ServerConfig
from tests.fuzz.conftest import Fuzz
from tests.support.fuzzing import (
    attribute,
    mutate,
    random_bytes,
    random_text,
    signed_request,
    vsa,
)

SECRET = b"coa-secret-of-nas-01"
VENDOR = 64999
EVENT_TIMESTAMP = 55
SERVERS = {"A": ServerConfig(id="A", ip="127.0.0.11", status_secret=Secret(env="UNUSED"))}
CLIENT = ClientConfig(id="nas-01", ip="127.0.1.1", secret=Secret(env="UNUSED"), home="A")
ADDR = ("127.0.0.11", 50000)
LABELS = {
    "accepted",
    "refused",
    "bad-authenticator",
    "missing-message-authenticator",
    "missing-event-timestamp",
    "stale-timestamp",
    "missing-attribute",
    "bad-attribute",
    "callback-error",
    "duplicate",
    "malformed",
    "unexpected-code",
    "overload",
    "ack-sent",
    "nak-sent",
}


def notice_bytes(seq: int, *, now: float) -> bytes:
    notice: FailoverNotice | ReadmitNotice
    if seq % 2:
        notice = FailoverNotice(
            incident_id="inc", server="A", client="nas-01", alternates=["B"], seq=seq,
            valid_until=now + 300,
        )  # fmt: skip
    else:
        notice = ReadmitNotice(
            incident_id="inc", server="A", client="nas-01", seq=seq, valid_until=now + 300
        )
    return codec.encode(notice)


def agent(calls: list[str]) -> Callable[..., object]:
    """The agent's check of a notice (verify_notice), as its on_notice callback."""

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        calls.append(server)
        try:
            verify_notice(CLIENT, SECRET, SERVERS, server, payload, auth, ct)
        except Rejected:
            return False
        return True

    return on_notice


def valid_request(rng_seq: int, now: float) -> bytes:
    payload = notice_bytes(rng_seq, now=now)
    auth = client_authenticator(SECRET, "127.0.0.11", CLIENT.ip, payload)
    message = NoticeMessage(server="A", payload=payload, authenticator=auth)
    request = coa_request(message, SECRET, dictionary(), now=now)
    request.id = rng_seq % 256
    raw: bytes = request.RequestPacket()
    return raw


async def test_what_does_not_authenticate_gets_no_answer_and_leaves_nothing(fuzz: Fuzz) -> None:
    rng = fuzz.rng
    calls: list[str] = []
    listener = CoaListener("127.0.1.1", 0, SECRET, agent(calls))  # type: ignore[arg-type]
    now = time.time()
    seeds = [valid_request(seq, now) for seq in range(1, 9)]
    wrong = CoaListener("127.0.1.1", 0, b"another-secret", agent(calls))  # type: ignore[arg-type]
    for case in fuzz.cases():
        pick = rng.random()
        if pick < 0.5:
            data = mutate(rng, rng.choice(seeds), seeds)
        elif pick < 0.6:
            data = bytes((COA_REQUEST, rng.randrange(256))) + random_bytes(rng, 80)
        elif pick < 0.7:
            data = random_bytes(rng, 64)
        else:
            data = rng.choice(seeds)  # authentic, but for another secret
        target = wrong if pick >= 0.7 else listener
        before = (dict(target._recent), target.counters["ack-sent"], target.counters["nak-sent"])
        target._received(data, (ADDR[0], 40000 + case % 1000))
        answer = None
        while not target._queue.empty():
            answer = await target._handle(*target._queue.get_nowait())
        if answer is None:
            # discarded: no answer, nothing remembered, nothing sent
            assert (
                dict(target._recent),
                target.counters["ack-sent"],
                target.counters["nak-sent"],
            ) == before
        else:
            # only a mutation that left the packet authentic (an octet after the attributes'
            # length, say) is answered, and then under the secret
            assert target is listener and answer[0] in (COA_ACK, COA_NAK)
            target._recent.clear()
        assert set(target.counters) <= LABELS
    assert listener.counters["bad-authenticator"] + listener.counters["malformed"] > 0
    assert wrong.counters["bad-authenticator"] > 0 and wrong.counters["nak-sent"] == 0


def fuzzed_attributes(fuzz: Fuzz, now: float, seq: int) -> tuple[bytes, bool]:
    """The attributes of a notice's CoA-Request, some dropped, repeated or spoilt; and
    whether it carries a Message-Authenticator."""
    rng = fuzz.rng
    payload = notice_bytes(seq, now=now)
    auth = client_authenticator(SECRET, "127.0.0.11", CLIENT.ip, payload)
    if rng.random() < 0.2:
        payload = mutate(rng, payload)
    parts: list[bytes] = [
        attribute(EVENT_TIMESTAMP, struct.pack("!I", int(now))),
        vsa(VENDOR, 3, b"A"),
        vsa(VENDOR, 2, auth.encode()),
        vsa(VENDOR, 9, codec.JSON_TYPE.encode()),
        *(vsa(VENDOR, 1, payload[i : i + 247]) for i in range(0, len(payload), 247)),
    ]
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        op = rng.randrange(7)
        at = rng.randrange(len(parts)) if parts else 0
        if op == 0 and parts:
            del parts[at]
        elif op == 1:
            value = rng.choice((b"", b"\x00", random_bytes(rng, 6), struct.pack("!I", 0)))
            parts.insert(at, attribute(EVENT_TIMESTAMP, value))
        elif op == 2:
            parts.insert(at, vsa(VENDOR, rng.randint(0, 12), random_bytes(rng, 40)))
        elif op == 3:
            parts.insert(
                at, vsa(VENDOR, rng.choice((2, 3, 9)), random_text(rng).encode("utf-8", "replace"))
            )
        elif op == 4:
            parts.insert(at, attribute(rng.randrange(256), random_bytes(rng, 20)))
        elif op == 5 and parts:
            parts[at] = mutate(rng, parts[at])
        else:
            parts.insert(at, attribute(26, random_bytes(rng, rng.randint(0, 10))))
    return b"".join(parts), rng.random() < 0.9


async def test_what_authenticates_is_answered_ack_or_nak_and_never_raises(fuzz: Fuzz) -> None:
    calls: list[str] = []
    listener = CoaListener("127.0.1.1", 0, SECRET, agent(calls))  # type: ignore[arg-type]
    answered = 0
    for case in fuzz.cases():
        now = time.time()
        attributes, signed = fuzzed_attributes(fuzz, now, case + 1)
        data = signed_request(
            COA_REQUEST, case % 256, attributes, SECRET, message_authenticator=signed
        )
        listener._received(data, (ADDR[0], 40000 + case))
        answer = None
        while not listener._queue.empty():
            answer = await listener._handle(*listener._queue.get_nowait())
        if answer is None:
            assert not signed or listener.counters["malformed"]
            continue
        answered += 1
        assert signed
        assert answer[0] in (COA_ACK, COA_NAK) and answer[1] == case % 256
        request = packet.CoAPacket(packet=data, secret=SECRET, dict=dictionary())
        reply = request.CreateReply(packet=answer)
        assert request.VerifyReply(reply, answer)  # under the secret, Message-Authenticator too
    assert answered
    assert listener.counters["accepted"] > 0 and listener.counters["nak-sent"] > 0
    assert listener.counters["missing-event-timestamp"] > 0
    assert set(listener.counters) <= LABELS


def test_read_coa_notice_gives_a_notice_or_a_wire_error(fuzz: Fuzz) -> None:
    for case in fuzz.cases():
        attributes, _ = fuzzed_attributes(fuzz, time.time(), case + 1)
        data = signed_request(COA_REQUEST, 1, attributes, SECRET, message_authenticator=True)
        try:
            request = packet.CoAPacket(packet=data, secret=SECRET, dict=dictionary())
        except Exception:
            continue  # pyrad refused the octets: the listener counts it malformed
        try:
            message = read_coa_notice(request)
        except WireError as exc:
            assert exc.reason in {"missing-attribute", "bad-attribute"}
            continue
        # what the notice says is the agent's to check (verify_notice)
        assert isinstance(message.payload, bytes) and message.server and message.authenticator
