"""The bus's nats-py client (services/runtime/bus.py ``BusClient``): the headers it writes
and reads are nats-py's own, byte for byte and key for key, at less cost."""

from __future__ import annotations

import random
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from services.runtime.bus import BusClient, header_block, parse_header_lines

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
