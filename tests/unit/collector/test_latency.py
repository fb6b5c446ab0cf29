"""The collector's latency window: probes decided fast or slow against the objective (pure)."""

from __future__ import annotations

from services.collector.latency import LatencySummary, LatencyWindow
from services.runtime.quantiles import percentile

OBJECTIVE = 0.25


def window(window_s: float = 1.0) -> LatencyWindow:
    return LatencyWindow(OBJECTIVE, window_s)


def test_fast_and_slow_probes_are_counted_with_their_percentiles() -> None:
    w = window()
    for i, latency in enumerate((0.01, 0.02, 0.03, 0.4)):
        probe = w.sent(10.0 + i * 0.1)
        w.answered(probe, probe.sent_at + latency)
    summary = w.summary(11.0)
    assert (summary.count, summary.slow, summary.failed) == (4, 1, 0)
    assert summary.slow_share == 0.25
    assert summary.p50_s is not None and abs(summary.p50_s - 0.02) < 1e-9
    assert summary.max_s is not None and abs(summary.max_s - 0.4) < 1e-9


def test_a_probe_is_slow_as_soon_as_the_objective_passes_without_an_answer() -> None:
    w = window()
    w.sent(10.0)
    assert w.summary(10.2) == LatencySummary()  # not decided yet
    slow = w.summary(10.3)
    assert (slow.count, slow.slow, slow.failed) == (1, 1, 0)
    assert slow.p50_s is None  # no answer yet: no latency to report


def test_a_probe_that_times_out_has_failed_and_says_why() -> None:
    w = window(5.0)
    probe = w.sent(10.0)
    w.failed(probe, 12.0, "no answer within the 2s timeout")
    summary = w.summary(12.5)
    assert (summary.count, summary.slow, summary.failed) == (1, 1, 1)
    assert summary.errors == ["no answer within the 2s timeout"]
    # a send error before the objective decides the probe at once
    early = w.sent(13.0)
    w.failed(early, 13.001, "cannot send: network unreachable")
    assert w.summary(13.01).failed == 2


def test_only_probes_decided_in_the_window_count() -> None:
    w = window(1.0)
    old = w.sent(1.0)
    w.answered(old, 1.5)  # slow, decided at 1.25
    for at in (3.0, 3.2, 3.4):
        probe = w.sent(at)
        w.answered(probe, at + 0.01)
    summary = w.summary(3.5)
    assert (summary.count, summary.slow) == (3, 0)
    # a slowdown of half the requests shows as half of the probes
    w2 = window(2.0)
    for i in range(20):
        probe = w2.sent(i * 0.1)
        w2.answered(probe, probe.sent_at + (4.0 if i % 2 else 0.005))
    half = w2.summary(2.2)
    assert half.slow_share is not None and 0.4 <= half.slow_share <= 0.6


def test_the_window_keeps_only_the_probes_a_window_can_still_count() -> None:
    # ten probes a second for a minute, each answered, the window read after each
    w = window(1.0)
    for i in range(600):
        probe = w.sent(i * 0.1)
        w.answered(probe, probe.sent_at + 0.01)
        summary = w.summary(probe.sent_at + 0.05)
        assert summary.count == min(i + 1, 10)
        # sent within the last window and objective (1.25 s), and this one
        assert len(w) <= 14
    # a slow probe is counted until it is decided and its window has passed
    w = window(1.0)
    w.sent(100.0)
    assert w.summary(100.2).count == 0
    assert w.summary(101.2).count == 1  # decided at 100.25
    assert w.summary(101.3).count == 0 and len(w) == 0


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.9) == 9.0
    assert percentile(values, 1.0) == 10.0
    assert percentile([3.0], 0.9) == 3.0
