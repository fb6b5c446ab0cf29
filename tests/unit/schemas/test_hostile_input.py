"""What the codec and the signature checks make of hostile bytes and headers, alone: a
DecodeError or a Rejected with a reason, never another exception."""

from __future__ import annotations

import math

import msgspec
import pytest

from schemas import codec
from schemas.events import ServerControl
from schemas.signing import (
    KEY_HEADER,
    SIG_HEADER,
    Rejected,
    ReplayGuard,
    client_authenticator,
    sign_headers,
    verify,
    verify_client_authenticator,
)

KEY = b"bus-key"
SUBJECT = "aaa.control.A"
DEEP = 100_000


@pytest.mark.parametrize(
    ("payload", "content"),
    [
        (b"[" * DEEP + b"]" * DEEP, codec.JSON_TYPE),
        (b'{"type":"control.server","server":"A","x":' + b"[" * DEEP + b"]" * DEEP + b"}", None),
        (
            b'{"type":"control.server","server":"A","x":'
            + b'{"a":' * DEEP
            + b"1"
            + b"}" * DEEP
            + b"}",
            None,
        ),
        (
            b"\x83"
            + msgspec.msgpack.encode({"type": "control.server", "server": "A"})[1:]
            + msgspec.msgpack.encode("x")
            + b"\x91" * DEEP
            + b"\x90",
            codec.MSGPACK_TYPE,
        ),
    ],
    ids=["json-top", "json-array-field", "json-object-field", "msgpack-field"],
)
def test_nesting_past_the_recursion_limit_is_a_decode_error(
    payload: bytes, content: str | None
) -> None:
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(payload, content)
    assert len(str(error.value)) <= codec.DETAIL_LIMIT


def test_an_unknown_content_type_is_a_decode_error_with_a_short_detail() -> None:
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(b"{}", "x" * 10_000)
    assert len(str(error.value)) < 100


def headers(**changes: str) -> dict[str, str]:
    payload = codec.encode(ServerControl(server="A"))
    signed = sign_headers("k1", KEY, SUBJECT, payload)
    signed.update(changes)
    return signed


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({SIG_HEADER: "é" * 64}, "bad-signature"),  # compare_digest raised TypeError
        ({SIG_HEADER: "\u0661" * 64}, "bad-signature"),  # digits, not hex digits
        ({SIG_HEADER: "AB" * 32}, "bad-signature"),
        ({SIG_HEADER: "ab" * 31}, "bad-signature"),
        ({SIG_HEADER: ""}, "bad-signature"),
        ({KEY_HEADER: "clé"}, "bad-key-id"),
        ({KEY_HEADER: "k" * 129}, "bad-key-id"),
        ({KEY_HEADER: "k1\n"}, "bad-key-id"),
        ({KEY_HEADER: ""}, "bad-key-id"),
        ({KEY_HEADER: "k2"}, "unknown-key"),
    ],
)
def test_header_formats_are_checked_before_comparing(changes: dict[str, str], reason: str) -> None:
    payload = codec.encode(ServerControl(server="A"))
    with pytest.raises(Rejected) as rejected:
        verify({"k1": KEY}, headers(**changes), SUBJECT, payload)
    assert rejected.value.reason == reason
    assert len(rejected.value.detail) < 100


@pytest.mark.parametrize("authenticator", ["é" * 64, "AB" * 32, "ab" * 33, "\x00" * 64])
def test_a_notice_authenticator_that_is_not_hex_is_refused(authenticator: str) -> None:
    with pytest.raises(Rejected) as rejected:
        verify_client_authenticator(b"s", "10.0.0.1", "10.0.0.2", b"{}", authenticator)
    assert rejected.value.reason == "bad-authenticator"
    good = client_authenticator(b"s", "10.0.0.1", "10.0.0.2", b"{}")
    verify_client_authenticator(b"s", "10.0.0.1", "10.0.0.2", b"{}", good)


def test_a_nan_event_time_is_stale_and_its_id_not_remembered() -> None:
    guard = ReplayGuard(30.0)
    with pytest.raises(Rejected) as rejected:
        guard.check("id-1", math.nan, 1_000.0)
    assert rejected.value.reason == "stale"
    guard.check("id-1", 1_000.0, 1_000.0)  # the id was not taken by the refused event
