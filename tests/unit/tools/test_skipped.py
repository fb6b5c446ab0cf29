"""The tools keep what they cannot check or decode, say how many they skip, and print a line
for anything (pure: no bus)."""

from __future__ import annotations

import math
from collections import Counter

from nats.aio.msg import Msg

from schemas import codec
from schemas.events import Event, MetricsSample
from schemas.signing import Rejected
from services.tools.replay import sizes_of
from services.tools.tail import Seen, by_reason, checked, format_line, json_line, skipped, utc_ms

NESTED = b'{"type":"metrics.sample","server":"A","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"


def msg(data: bytes) -> Msg:
    return Msg(None, subject="aaa.metrics.A", data=data, headers={})  # type: ignore[arg-type]


def undecodable(m: Msg) -> Event:
    try:
        return codec.decode(m.data)
    except codec.DecodeError as exc:
        raise Rejected("undecodable", str(exc)) from None


def broken(m: Msg) -> Event:
    raise ValueError("a check that fails in a way nobody expected")


def test_what_a_check_refuses_or_fails_on_is_kept_with_its_reason() -> None:
    nested = checked(msg(NESTED), undecodable, 1.0)
    assert (nested.verified, nested.reason, nested.event) == (False, "undecodable", None)
    assert "nested too deeply" in nested.detail
    odd = checked(msg(codec.encode(MetricsSample(server="A", seq=1, status_ok=True))), broken, 1.0)
    assert (odd.verified, odd.reason) == (False, "unreadable")
    assert odd.event is not None  # still shown for what it is
    for seen in (nested, odd):
        assert "REJECTED" in format_line(seen, "aaa")
        assert json_line(seen)


def test_the_skipped_are_counted_by_reason_and_the_timeline_says_so() -> None:
    good = Seen(
        "aaa.metrics.A",
        b"{}",
        {},
        MetricsSample(server="A", seq=1, status_ok=True),
        True,
        received=2.0,
    )
    bad = Seen("aaa.metrics.A", NESTED, {}, None, False, "undecodable", received=3.0)
    forged = Seen("aaa.metrics.A", b"{}", {}, None, False, "bad-signature", received=4.0)
    seen = [good, bad, bad, forged]
    assert skipped(seen) == Counter({"undecodable": 2, "bad-signature": 1})
    assert by_reason(skipped(seen)) == "1 bad-signature, 2 undecodable"
    first = sizes_of(seen).lines(2.0)[0]
    assert first == (
        "4 events over 2.0 s, 3 failed verification and are skipped "
        "(1 bad-signature, 2 undecodable)"
    )
    assert sizes_of([good]).lines(0.0)[0] == "1 events over 0.0 s, 0 failed verification"


def test_a_time_no_calendar_holds_is_shown_not_raised() -> None:
    assert utc_ms(0.5) == "1970-01-01T00:00:00.500Z"
    for odd in (1e300, -1e300, math.inf, math.nan):
        assert utc_ms(odd).startswith("time=")
