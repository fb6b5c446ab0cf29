"""How old a stored decision may be: counted from when the stream stored it."""

from __future__ import annotations

import pytest

from schemas.signing import Rejected
from services.runtime.durable import check_stored


def test_a_decision_stamped_about_when_it_was_stored_is_fresh_however_late_it_is_read() -> None:
    check_stored(event_time=1000.0, stored_at=1000.2, window_s=30.0)
    check_stored(event_time=1000.0, stored_at=1029.9, window_s=30.0)
    check_stored(event_time=1010.0, stored_at=1000.0, window_s=30.0)  # clocks a little apart


@pytest.mark.parametrize(
    ("event_time", "reason"),
    [(900.0, "stale"), (float("nan"), "stale"), (1100.0, "future")],
)
def test_a_decision_stamped_far_from_when_it_was_stored_is_refused(
    event_time: float, reason: str
) -> None:
    with pytest.raises(Rejected) as refused:
        check_stored(event_time=event_time, stored_at=1000.0, window_s=30.0)
    assert refused.value.reason == reason
