"""The bus's nats-py client (services/runtime/bus.py ``BusClient``): the headers it writes
and reads are nats-py's own, byte for byte and key for key, at less cost."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.protocol.parser import Parser

from schemas import codec
from schemas.events import HealthReport
from schemas.subjects import Subjects
from services.runtime.bus import (
    Bus,
    BusClient,
    BusParser,
    Keyring,
    Signer,
    header_block,
    parse_header_lines,
)

HEADERS: list[dict[str, Any]] = [
    {},
    {"Aaa-Key": "evaluator-1", "Aaa-Sig": "a" * 64, "Content-Type": "application/json"},
    {"Nats-Msg-Id": "  padded id \t", " Spaced-Name ": "v"},
    {"Injected": "one\r\nPUB x 1\r\n", "Bare-Lf": "a\nb", "Bare-Cr": "a\rb"},
    {"": "blank names are left out", "   ": "so are blank ones", "After": "kept"},
    {"Unicode-Value": "café ✓", "Empty": ""},
]


async def _sent(client: NatsClient, headers: dict[str, Any] | None) -> bytes:
    commands: list[bytes] = []

    async def send(command: bytes, priority: bool = False) -> None:
        commands.append(command)

    client._send_command = send  # type: ignore[method-assign]
    client._flush_queue = None
    await client._send_publish("aaa.health.A", "", b'{"x":1}', 7, headers)
    (command,) = commands
    return command


@pytest.mark.parametrize("headers", [*HEADERS, None])
async def test_a_publish_sends_what_nats_py_sends(headers: dict[str, Any] | None) -> None:
    ours, theirs = BusClient(), NatsClient()
    assert await _sent(ours, headers) == await _sent(theirs, headers)
    assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 1
    assert ours.stats["out_bytes"] == theirs.stats["out_bytes"] == 7


@pytest.mark.parametrize("name", ["Bad Name", "Colon:Name", "Ünicode", "new\nline"])
async def test_a_header_name_nats_py_refuses_is_refused(name: str) -> None:
    for client in (BusClient(), NatsClient()):
        with pytest.raises(nats.errors.BadHeaderError):
            await _sent(client, {name: "v"})
    # and refused again, not remembered as good
    with pytest.raises(nats.errors.BadHeaderError):
        header_block({name: "v"})


def _lines(rng: random.Random) -> bytes:
    pieces = [
        b"Aaa-Key: evaluator-1",
        b"Aaa-Sig:" + b"f" * 64,
        b"Content-Type:\tapplication/json ",
        b"  Padded-Name  : v",
        b"No colon at all",
        b"Sp ace: inside the name",
        b"\xc3\xa9t\xc3\xa9: non-ASCII name",
        b"Bad-Utf8: \xff\xfe",
        b"Empty:",
        b": no name",
        b"Dup: first",
        b"Dup: second",
        b"Colons: a:b:c",
        bytes(rng.randrange(256) for _ in range(rng.randrange(12))),
    ]
    return b"\r\n".join(rng.choice(pieces) for _ in range(rng.randrange(8))) + b"\r\n\r\n"


def test_received_headers_parse_as_nats_py_parses_them() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        raw = _lines(rng)
        assert parse_header_lines(raw) == NatsClient._parse_header_lines(raw), raw
    assert BusClient._parse_header_lines is parse_header_lines


async def test_a_whole_header_block_received_parses_as_nats_py_parses_it() -> None:
    block = header_block({"Aaa-Key": "k", "Aaa-Sig": "s", "Nats-Msg-Id": "id"})
    ours = await BusClient()._process_headers(block)
    assert ours == await NatsClient()._process_headers(block)
    assert ours == {"Aaa-Key": "k", "Aaa-Sig": "s", "Nats-Msg-Id": "id"}


# --- Bus.publish_now: the bus's own events queued in one call -------------------------


def _connected(client: NatsClient) -> NatsClient:
    """A client that takes publishes into its pending buffer, as a connected one does."""
    client._status = NatsClient.CONNECTED
    client._flush_queue = asyncio.Queue(maxsize=1024)
    client._flusher_task = asyncio.get_running_loop().create_future()  # running, never done
    client._max_payload = 1024 * 1024
    return client


def _bus(client: NatsClient, codec_name: codec.CodecName = "json") -> Bus:
    keyring = Keyring(
        Signer(" shared-1 ", b"s" * 32),
        {"shared-1": b"s" * 32},
        signers={"health": Signer("evaluator-1", b"e" * 32)},
    )
    return Bus(client, Subjects("tp"), keyring, codec_name=codec_name)


def _report(event_id: str) -> HealthReport:
    return HealthReport(
        id=event_id,
        time=1.5,
        source="evaluator",
        server="A",
        sample_id="s",
        health=0.75,
        failover_threshold=0.3,
        connection_threshold=0.1,
        deficit=0.0,
    )


IDS = ["0" * 32, "  padded\t", "with\r\nPUB x 1\r\n", "bare\nlf", "café", ""]


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
@pytest.mark.parametrize("subject", ["tp.health.A", "tp.control.A"])
async def test_publish_now_sends_what_nats_py_sends_for_the_signed_event(
    codec_name: codec.CodecName, subject: str
) -> None:
    ours = _connected(BusClient())
    theirs = _connected(NatsClient())
    bus, plain = _bus(ours, codec_name), _bus(theirs, codec_name)
    for event_id in IDS:
        assert bus.publish_now(subject, _report(event_id)) is None
        payload, headers = plain.encode(subject, _report(event_id))
        await theirs.publish(subject, payload, headers=headers)
    await bus.publish(subject, _report("via publish"))
    payload, headers = plain.encode(subject, _report("via publish"))
    await theirs.publish(subject, payload, headers=headers)
    assert ours._pending == theirs._pending
    assert ours._pending_data_size == theirs._pending_data_size
    assert ours.stats == theirs.stats
    assert bus.counters.published == len(IDS) + 1
    # the flusher was kicked once, as nats-py kicks it while its queue holds a kick
    assert ours._flush_queue.qsize() == theirs._flush_queue.qsize() == 1


async def test_publish_now_refuses_what_nats_py_refuses() -> None:
    for client in (BusClient(), NatsClient()):
        bus = _bus(_connected(client))
        with pytest.raises(nats.errors.BadSubjectError):
            await bus.publish("tp.health.A B", _report("x"))
        client._max_payload = 10
        with pytest.raises(nats.errors.MaxPayloadError):
            await bus.publish("tp.health.A", _report("x"))
        client._status = NatsClient.DRAINING_PUBS
        with pytest.raises(nats.errors.ConnectionDrainingError):
            await bus.publish("tp.health.A", _report("x"))
        client._status = NatsClient.RECONNECTING
        client._max_pending_size = 0
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await bus.publish("tp.health.A", _report("x"))
        client._status = NatsClient.CLOSED
        with pytest.raises(nats.errors.ConnectionClosedError):
            await bus.publish("tp.health.A", _report("x"))
        assert client._pending == []


async def test_publish_now_says_when_nats_py_would_wait_for_a_flush() -> None:
    client = _connected(BusClient())
    bus = _bus(client)
    client._max_pending_size = 1000
    assert bus.publish_now("tp.health.A", _report("a")) is None
    wait = bus.publish_now("tp.health.A", _report("b" * 1000))
    assert wait is not None  # over the limit: nats-py's publish would force a flush
    flushed: list[bool] = []

    async def flush(force_flush: bool = False) -> None:
        flushed.append(force_flush)

    client._flush_pending = flush  # type: ignore[method-assign]
    await wait()
    assert flushed == [True]
    # a client whose flusher is gone is flushed by the caller too
    client._max_pending_size = 0
    client._flush_queue = asyncio.Queue()
    client._flusher_task = None
    assert bus.publish_now("tp.health.A", _report("c")) is not None


# --- BusParser: the server's HMSG lines read without regular expressions ----------------


class _Recorder:
    """What a parser hands the client: each message, error, ping, pong and info."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, *args: Any) -> None:
        self.calls.append(("msg", *args))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))


def _frames(rng: random.Random) -> list[bytes]:
    def hmsg(reply: bytes = b"", spaces: bytes = b" ") -> bytes:
        headers = b"NATS/1.0\r\nAaa-Key: k\r\n\r\n"[: rng.randrange(12, 26)]
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        sid = str(rng.randrange(1, 30)).encode()
        size = str(len(headers) + len(payload)).encode()
        parts = [
            b"HMSG",
            b"tp.metrics.A",
            sid,
            *([reply] if reply else []),
            str(len(headers)).encode(),
            size,
        ]
        return spaces.join(parts) + b"\r\n" + headers + payload + b"\r\n"

    choices = [
        lambda: hmsg(),
        lambda: hmsg(reply=b"_INBOX.x.y"),
        lambda: hmsg(spaces=b"\t"),
        lambda: hmsg(spaces=b"  "),
        lambda: b"HMSG tp.a 3 0 5\r\nhello\r\n",
        lambda: b"MSG tp.metrics.B 2 4\r\nabcd\r\n",
        lambda: b"MSG tp.metrics.B 2 _INBOX.r 0\r\n\r\n",
        lambda: b"PING\r\n",
        lambda: b"PONG\r\n",
        lambda: b"+OK\r\n",
        lambda: b'INFO {"server_id":"x"}\r\n',
    ]
    return [rng.choice(choices)() for _ in range(rng.randrange(1, 30))]


async def test_the_bus_parser_reads_what_nats_py_reads_however_the_bytes_come() -> None:
    rng = random.Random(19)
    for _ in range(300):
        stream = b"".join(_frames(rng))
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(6))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        theirs, ours = _Recorder(), _Recorder()
        their_parser, our_parser = Parser(theirs), BusParser(ours)
        for chunk in chunks:
            await their_parser.parse(chunk)
            await our_parser.parse(chunk)
        assert ours.calls == theirs.calls, stream
        assert bytes(our_parser.buf) == bytes(their_parser.buf) == b""


async def test_the_bus_parser_refuses_what_nats_py_refuses() -> None:
    for bad in (b"HMSG tp.a x 0 5\r\nhello\r\n", b"BOGUS\r\n"):
        for parser in (Parser(_Recorder()), BusParser(_Recorder())):
            with pytest.raises(nats.errors.ProtocolError):
                await parser.parse(bad)
    assert isinstance(BusClient()._ps, BusParser)
