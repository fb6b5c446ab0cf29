"""The delivery tracker's exchanges alone: a notice held while its exchange runs, settled by an ack,
due after its hold once restored, failed at once when it cannot be sent."""

from __future__ import annotations

import pytest

from services.notifier.deliveries import DeliveryTracker, Failed, Retry


def _tracked(tracker: DeliveryTracker, now: float = 100.0) -> None:
    tracker.sent(
        notice_id="n1",
        notice_type="notice.failover.v2",
        client="nas-01",
        server="A",
        subject="aaa.notice.nas-01",
        payload=b"{}",
        headers={},
        now=now,
    )


def test_an_exchange_holds_its_notice_and_each_retransmission_is_reported() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=1)
    _tracked(tracker)
    assert tracker.begin_exchange("n1", 100.0, hold_s=30.0) is not None
    assert tracker.due(200.0) == []  # never due while its exchange runs
    assert tracker.next_deadline() is None
    again = tracker.retransmitted("n1", 100.5)
    assert again is not None and (again.outcome, again.attempts) == ("retried", 2)
    # a failed exchange is due after the ack timeout: tried again as a new round
    tracker.exchange_failed("n1", 101.0)
    assert tracker.next_deadline() == 102.0
    assert tracker.due(101.9) == []
    (retry,) = tracker.due(102.0)
    assert isinstance(retry, Retry)
    assert (retry.delivery.outcome, retry.delivery.attempts, retry.pending.rounds) == (
        "retried",
        3,
        2,
    )
    # the last try fails at once
    tracker.begin_exchange("n1", 102.0, hold_s=30.0)
    failed = tracker.exchange_failed("n1", 103.0)
    assert isinstance(failed, Failed)
    assert (failed.delivery.outcome, failed.delivery.attempts) == ("failed", 3)
    assert len(tracker) == 0
    assert tracker.exchange_failed("n1", 103.0) is None


def test_an_acked_exchange_settles_and_a_restored_one_is_due_after_its_hold() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    _tracked(tracker)
    pending = tracker.begin_exchange("n1", 100.0, hold_s=30.0)
    assert pending is not None and pending.deadline == 130.0
    restarted = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    restarted.restore(pending)
    assert restarted.due(129.0) == []
    (retry,) = restarted.due(130.0)
    assert isinstance(retry, Retry)
    acked = tracker.acked("n1", "nas-01", 100.25)
    assert acked is not None and acked.latency_s == pytest.approx(0.25)
    assert tracker.exchanging == set()


def test_a_notice_that_cannot_be_sent_fails_at_once() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    _tracked(tracker)
    failed = tracker.fail("n1", 100.1)
    assert failed is not None and (failed.outcome, failed.attempts) == ("failed", 1)
    assert tracker.fail("n1", 100.2) is None
    assert len(tracker) == 0
