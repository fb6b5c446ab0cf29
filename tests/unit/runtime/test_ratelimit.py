"""LogLimiter: the first lines of a kind per window, then one count of the rest."""

from __future__ import annotations

import logging

import pytest

from services.runtime.ratelimit import OVERFLOW_KEY, LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(
    caplog: pytest.LogCaptureFixture, **kwargs: object
) -> tuple[LogLimiter, Clock, logging.Logger]:
    log = logging.getLogger("tests.ratelimit")
    caplog.set_level(logging.INFO, logger=log.name)
    clock = Clock()
    return LogLimiter(log, clock=clock, **kwargs), clock, log  # type: ignore[arg-type]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_flood_is_one_line_and_one_count_per_window(caplog: pytest.LogCaptureFixture) -> None:
    limits, clock, _ = limiter(caplog)
    for i in range(40_000):
        limits.warning("drop malformed", "dropped a packet from %s: malformed", f"10.0.0.{i % 250}")
    assert messages(caplog) == ["dropped a packet from 10.0.0.0: malformed"]
    assert limits.suppressed_total == 39_999
    assert limits.flush() == 0  # the window is not over yet
    clock.now += 10.0
    assert limits.flush() == 1
    assert messages(caplog)[1] == (
        "dropped a packet from 10.0.0.0: malformed ... and 39999 more like it in the last 10 s"
    )
    assert caplog.records[1].levelno == logging.WARNING
    assert len(limits) == 0


def test_each_kind_has_its_own_window_and_burst(caplog: pytest.LogCaptureFixture) -> None:
    limits, clock, _ = limiter(caplog, burst=2)
    for _ in range(5):
        limits.warning("a", "kind a")
        limits.info("b", "kind b")
    assert messages(caplog) == ["kind a", "kind b", "kind a", "kind b"]
    clock.now += 10.5
    # the next message of a kind whose window is over says what was held back first
    assert limits.warning("a", "kind a again")
    assert messages(caplog)[4:] == [
        "kind a ... and 3 more like it in the last 10 s",
        "kind a again",
    ]
    limits.flush()
    assert messages(caplog)[-1] == "kind b ... and 3 more like it in the last 10 s"
    assert caplog.records[-1].levelno == logging.INFO


def test_a_quiet_window_ends_without_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    limits, clock, _ = limiter(caplog)
    limits.warning("a", "once")
    clock.now += 11
    assert limits.flush() == 0
    assert messages(caplog) == ["once"]
    assert len(limits) == 0


def test_flush_force_counts_an_open_window_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    limits, clock, _ = limiter(caplog)
    for _ in range(3):
        limits.warning("a", "stop")
    clock.now += 2.5
    assert limits.flush(force=True) == 1
    assert messages(caplog)[-1] == "stop ... and 2 more like it in the last 2.5 s"


def test_keys_are_bounded_and_the_rest_share_one(caplog: pytest.LogCaptureFixture) -> None:
    limits, _, _ = limiter(caplog, max_keys=3)
    for i in range(1000):
        limits.warning(f"kind {i}", "kind %d", i)
    assert len(limits) == 3
    assert OVERFLOW_KEY in limits._windows
    # two kinds of their own, then one line for every further kind
    assert messages(caplog) == ["kind 0", "kind 1", "kind 2"]
    assert limits.suppressed_total == 997


def test_exception_info_is_passed_on(caplog: pytest.LogCaptureFixture) -> None:
    limits, _, _ = limiter(caplog)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        limits.error("err", "failed", exc_info=True)
    assert caplog.records[0].exc_info is not None


def test_a_disabled_level_is_neither_logged_nor_counted(caplog: pytest.LogCaptureFixture) -> None:
    limits, _, _ = limiter(caplog)
    assert not limits.log(logging.DEBUG, "d", "debug")
    assert (messages(caplog), limits.suppressed_total, len(limits)) == ([], 0, 0)


@pytest.mark.parametrize("kwargs", [{"interval_s": 0}, {"burst": 0}, {"max_keys": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), **kwargs)  # type: ignore[arg-type]
