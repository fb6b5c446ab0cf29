"""codec.decode over every event type, in JSON and msgpack: whatever the bytes, an event or
a DecodeError, never anything else; an event it returns encodes and decodes again."""

from __future__ import annotations

import msgspec
import pytest

from schemas import codec
from schemas.events import EVENT_TYPES, Event
from tests.fuzz.conftest import Fuzz
from tests.support.fuzzing import (
    mutate,
    nested,
    perturb,
    random_bytes,
    random_text,
    to_json,
    to_msgpack,
    value_of,
)

ENCODINGS = {"json": (codec.JSON_TYPE, to_json), "msgpack": (codec.MSGPACK_TYPE, to_msgpack)}


def payload(fuzz: Fuzz, kind: type[Event], encoding: str, seeds: list[bytes]) -> bytes:
    """One input for ``kind``: valid, fields of the wrong kind, bytes mutated, nested
    past the recursion limit, or noise."""
    rng = fuzz.rng
    _, write = ENCODINGS[encoding]
    pick = rng.random()
    if pick < 0.35:
        return write(value_of(rng, kind))
    if pick < 0.6:
        return write(perturb(rng, value_of(rng, kind)))
    if pick < 0.85 and seeds:
        return mutate(rng, rng.choice(seeds), seeds)
    if pick < 0.9:
        return nested(rng, encoding)
    return random_bytes(rng, 256)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_decode_gives_an_event_or_a_decode_error(fuzz: Fuzz, encoding: str) -> None:
    content, write = ENCODINGS[encoding]
    seeds = [write(value_of(fuzz.rng, kind)) for kind in EVENT_TYPES for _ in range(4)]
    decoded = refused = 0
    for case in fuzz.cases():
        kind = EVENT_TYPES[case % len(EVENT_TYPES)]
        data = payload(fuzz, kind, encoding, seeds)
        header = content if fuzz.rng.random() < 0.95 else random_text(fuzz.rng)
        try:
            event = codec.decode(data, header)
        except codec.DecodeError as exc:
            refused += 1
            assert len(str(exc)) <= codec.DETAIL_LIMIT
            continue
        decoded += 1
        assert isinstance(event, EVENT_TYPES)
        name: codec.CodecName = "json" if encoding == "json" else "msgpack"
        again = codec.decode(codec.encode(event, name), content)
        assert type(again) is type(event)
        if len(seeds) < 200:
            seeds.append(data)
    # the generator reaches both sides, or it tests nothing
    assert decoded and refused


def test_every_event_type_decodes_from_a_generated_valid_value(fuzz: Fuzz) -> None:
    """The generator makes values the decoder takes, for every type (else the fuzz above
    would only ever see refusals for that type)."""
    for kind in EVENT_TYPES:
        accepted = 0
        for _ in range(50):
            try:
                msgspec.convert(value_of(fuzz.rng, kind), kind)
            except msgspec.ValidationError:
                continue
            accepted += 1
        assert accepted, f"no valid {kind.__name__} generated"
    for _ in fuzz.cases(0.01):
        pass
