"""`aaa-failover tail`'s lines alone: a client's upstreams, and the filter of undecodable
payloads."""

from __future__ import annotations

from schemas.events import (
    ClientStatus,
    MetricsSample,
    UpstreamChange,
    UpstreamReport,
)
from services.tools.tail import Seen, format_line, matches, summary, utc_ms


def test_filter_of_an_undecodable_payload_uses_the_subject() -> None:
    seen = Seen("aaa.metrics.A", b"junk", received=0.0)
    assert matches(seen, "aaa", "A", None)
    assert not matches(seen, "aaa", "B", None)
    assert not matches(seen, "aaa", None, "nas-01")
    assert format_line(seen, "aaa").startswith("1970-01-01T00:00:00.000Z  metrics.A ")
    assert utc_ms(1.2345) == "1970-01-01T00:00:01.234Z"


def test_a_client_status_shows_its_upstreams_and_own_failovers() -> None:
    status = ClientStatus(
        client="nas-01",
        home="A",
        current="B",
        relayed=120,
        relayed_lost=0,
        upstreams=[
            UpstreamReport(server="A", state="zombie", answers=3, timeouts=2, p90_s=0.012),
            UpstreamReport(server="B", answers=40),
            UpstreamReport(server="C"),
        ],
        changes=[
            UpstreamChange(server="A", before="alive", after="zombie", reason="no answer in 2s")
        ],
    )
    text = summary(status)
    assert "relayed=120" in text
    assert "A=[zombie,ok=3,late=2,p90=0.012s]" in text and "B=[alive,ok=40,late=0]" in text
    assert "C=[" not in text
    assert text.endswith("A:alive->zombie(no answer in 2s)")
    sample = MetricsSample(
        server="A", seq=1, status_ok=True, probes=10, probes_slow=4, outstanding=7
    )
    assert "probes=4/10 slow outstanding=7" in summary(sample)
