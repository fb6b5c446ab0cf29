"""The delivery tracker alone: sent, retried with the same bytes, acked, failed."""

from __future__ import annotations

import pytest

from services.notifier.deliveries import (
    DeliveryTracker,
    Failed,
    Retry,
    Sequencer,
    notice_id,
)


def _send(
    tracker: DeliveryTracker,
    notice_id: str = "n1",
    now: float = 100.0,
    batch: str = "",
    client: str = "nas-01",
) -> None:
    _, delivery = tracker.sent(
        notice_id=notice_id,
        notice_type="notice.failover.v2",
        client=client,
        server="A",
        subject="aaa.notice.nas-01",
        payload=b'{"x":1}',
        headers={"Aaa-Auth": "abc"},
        now=now,
        batch=batch,
    )
    assert delivery.outcome == "sent"
    assert delivery.attempts == 1
    assert delivery.time == now


def test_ack_settles_with_latency() -> None:
    tracker = DeliveryTracker(ack_timeout_s=2.0, retries=3)
    _send(tracker)
    assert tracker.next_deadline() == 102.0
    assert tracker.due(101.9) == []
    delivery = tracker.acked("n1", "nas-01", 100.5)
    assert delivery is not None
    assert delivery.outcome == "acked"
    assert delivery.latency_s == pytest.approx(0.5)
    assert len(tracker) == 0
    assert tracker.next_deadline() is None
    # a second ack of the same notice matches nothing
    assert tracker.acked("n1", "nas-01", 100.6) is None


def test_ack_from_another_client_or_of_unknown_notice_is_ignored() -> None:
    tracker = DeliveryTracker(ack_timeout_s=2.0, retries=1)
    _send(tracker)
    assert tracker.acked("n1", "nas-02", 100.5) is None
    assert tracker.acked("zz", "nas-01", 100.5) is None
    assert len(tracker) == 1


def test_retries_resend_same_bytes_waiting_twice_as_long_each_time_then_fail() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=2)
    _send(tracker)
    first = tracker.due(101.0)
    assert len(first) == 1 and isinstance(first[0], Retry)
    assert first[0].pending.payload == b'{"x":1}'
    assert first[0].pending.headers == {"Aaa-Auth": "abc"}
    assert (first[0].delivery.outcome, first[0].delivery.attempts) == ("retried", 2)
    assert tracker.due(102.5) == []  # the second wait is 2 s
    second = tracker.due(103.0)
    assert isinstance(second[0], Retry) and second[0].delivery.attempts == 3
    assert tracker.due(106.5) == []  # the third, 4 s
    last = tracker.due(107.0)
    assert len(last) == 1 and isinstance(last[0], Failed)
    assert (last[0].delivery.outcome, last[0].delivery.attempts) == ("failed", 3)
    assert len(tracker) == 0
    # an ack after the failure changes nothing
    assert tracker.acked("n1", "nas-01", 107.5) is None


def test_no_retries_fails_after_first_timeout() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=0)
    _send(tracker)
    (action,) = tracker.due(101.0)
    assert isinstance(action, Failed)


def test_ack_between_retries_wins() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    _send(tracker)
    tracker.due(101.0)
    delivery = tracker.acked("n1", "nas-01", 101.2)
    assert delivery is not None
    assert (delivery.outcome, delivery.attempts) == ("acked", 2)
    assert delivery.latency_s == pytest.approx(1.2)
    assert tracker.due(110.0) == []


def test_due_is_oldest_first_and_restore_resumes() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=1)
    _send(tracker, "late", now=100.5)
    _send(tracker, "early", now=100.0)
    ids = [a.pending.notice_id for a in tracker.due(102.0)]
    assert ids == ["early", "late"]
    other = DeliveryTracker(ack_timeout_s=1.0, retries=1)
    for pending in tracker.pending.values():
        other.restore(pending)
    assert {a.pending.notice_id for a in other.due(104.0)} == {"early", "late"}


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        DeliveryTracker(ack_timeout_s=0, retries=1)
    with pytest.raises(ValueError):
        DeliveryTracker(ack_timeout_s=1, retries=-1)


def test_sequence_grows_strictly_per_client() -> None:
    seq = Sequencer()
    a1 = seq.next("a", 1000.0)
    a2 = seq.next("a", 1000.0)
    a3 = seq.next("a", 999.0)
    assert a1 < a2 < a3
    assert seq.next("b", 1000.0) == a1
    # a new sequencer (a restart) later on the clock goes on above the old numbers
    assert Sequencer().next("a", 1001.0) > a3


def test_a_decision_handled_twice_gives_each_client_the_same_notice_id() -> None:
    assert notice_id("plan-1", "nas-01") == notice_id("plan-1", "nas-01")
    assert notice_id("plan-1", "nas-01") != notice_id("plan-1", "nas-02")
    assert notice_id("plan-1", "nas-01") != notice_id("plan-2", "nas-01")
    assert len(notice_id("plan-1", "nas-01")) == 32


def test_a_batch_still_being_acked_is_not_sent_again_until_its_acks_stop() -> None:
    # a client side taking 3 notices of one plan answers them one a second
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    for n in range(3):
        _send(tracker, f"n{n}", 100.0, batch="plan-1", client=f"nas-0{n}")
    _send(tracker, "alone", 100.0, batch="plan-2", client="nas-09")
    assert tracker.acked("n0", "nas-00", 100.9) is not None
    due = tracker.due(101.0)  # n1, n2 are waiting behind n0's ack; "alone" is not
    assert [a.pending.notice_id for a in due] == ["alone"]
    assert tracker.next_deadline() == pytest.approx(101.9)
    assert tracker.acked("n1", "nas-01", 101.8) is not None
    assert tracker.due(102.0) == []
    # the acks stop: a whole ack timeout after the last, n2 is sent again
    assert tracker.due(102.7) == []
    [retry] = tracker.due(102.8)
    assert isinstance(retry, Retry) and retry.pending.notice_id == "n2"
    assert retry.pending.attempts == 2


def test_the_ack_times_of_settled_batches_are_forgotten() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=1)
    _send(tracker, "n1", 100.0, batch="plan-1")
    assert tracker.acked("n1", "nas-01", 100.5) is not None
    tracker.due(101.0)
    assert tracker.acks_of == {}
