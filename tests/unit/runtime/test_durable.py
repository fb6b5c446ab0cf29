"""How old a stored decision may be: counted from when the stream stored it."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from schemas.events import Incident
from schemas.signing import Rejected
from services.runtime.durable import Consumer, check_stored


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


class _Verifying:
    """Stands in for the bus: every message verifies, and the replay window is on."""

    class guard:
        check_time = True
        window_s = 30.0

    def verify(self, msg: Msg, accept_clients: bool) -> Incident:
        del msg, accept_clients
        return Incident(server="A", incident_id="i", state="opened", health=0.1, opened_at=1)


async def _nothing(event: Incident) -> None:
    del event


def test_a_delivery_without_jetstream_metadata_is_a_counted_rejection_not_a_crash() -> None:
    consumer = Consumer(_Verifying(), "c", _nothing, (Incident,), (), False)  # type: ignore[arg-type]
    msg = Msg(_client=None, subject="aaa.incident.A", reply="_INBOX.x.y", data=b"{}")  # type: ignore[arg-type]
    with pytest.raises(Rejected) as refused:
        consumer.check(msg)
    assert refused.value.reason == "bad-metadata"
