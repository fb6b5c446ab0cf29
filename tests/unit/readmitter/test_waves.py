"""Wave planning and client requests of the readmitter, as pure functions."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.readmitter.sizing import Size
from services.readmitter.waves import (
    Done,
    Paused,
    Readmission,
    Wait,
    Wave,
    answer_request,
    arrived,
    next_wave,
    not_returned,
    on_incident,
    record_plan,
    record_wave,
)

THRESHOLD = 0.6
CLIENTS = ["c1", "c2", "c3", "c4", "c5"]


def _recovering(clients: list[str], incident: str = "i1") -> Readmission:
    state = on_incident(None, server="A", incident_id=incident, state="opened")
    state = record_plan(state, server="A", incident_id=incident, clients=clients)
    return on_incident(state, server="A", incident_id=incident, state="recovering")


def _decide(
    state: Readmission,
    now: float,
    health: float | None = 0.9,
    size: int = 2,
    interval: float = 5.0,
) -> Wave | Wait | Paused | Done:
    return next_wave(
        state,
        now=now,
        health=health,
        connection_threshold=THRESHOLD,
        size=Size(clients=size, reason=f"fixed waves of {size}"),
        wave_interval_s=interval,
    )


def test_plan_records_clients_in_order_once() -> None:
    state = record_plan(None, server="A", incident_id="i1", clients=["c2", "c1", "c2"])
    state = record_plan(state, server="A", incident_id="i1", clients=["c3", "c1"])
    assert state.away == ("c2", "c1", "c3")
    assert state.state == "opened"
    assert state.incident_id == "i1"


def test_waves_have_wave_size_in_plan_order_and_are_spaced() -> None:
    state = _recovering(CLIENTS)
    now = 1000.0
    sent: list[Wave] = []
    while True:
        decision = _decide(state, now)
        if isinstance(decision, Done):
            break
        if isinstance(decision, Wait):
            assert decision.until > now
            now = decision.until
            continue
        assert isinstance(decision, Wave)
        if sent and decision.clients:
            assert now - (state.last_wave_at or 0.0) >= 5.0
        sent.append(decision)
        state = record_wave(state, decision, now=now)
        for client in decision.clients:  # each says it is home
            state = arrived(state, client)
        if decision.final:
            break
    assert [w.clients for w in sent] == [("c1", "c2"), ("c3", "c4"), ("c5",), ()]
    assert [w.wave for w in sent] == [1, 2, 3, 4]
    assert [w.final for w in sent] == [False, False, False, True]
    assert state.away == () and state.returning == ()
    assert state.readmitted == tuple(CLIENTS)


def test_a_wave_is_not_due_before_the_interval() -> None:
    state = _recovering(CLIENTS)
    first = _decide(state, 100.0)
    assert isinstance(first, Wave)
    state = record_wave(state, first, now=100.0)
    early = _decide(state, 104.9)
    assert isinstance(early, Wait)
    assert early.until == pytest.approx(105.0)
    assert isinstance(_decide(state, 105.0), Wave)


def test_health_below_connection_threshold_pauses() -> None:
    state = _recovering(CLIENTS)
    paused = _decide(state, 100.0, health=0.59)
    assert isinstance(paused, Paused)
    assert "below connection threshold" in paused.reason
    no_health = _decide(state, 100.0, health=None)
    assert isinstance(no_health, Paused)
    assert "no health" in no_health.reason
    resumed = _decide(state, 101.0, health=THRESHOLD)
    assert isinstance(resumed, Wave)
    assert resumed.clients == ("c1", "c2")


def test_health_is_checked_when_the_wave_is_due() -> None:
    state = _recovering(CLIENTS)
    first = _decide(state, 100.0)
    assert isinstance(first, Wave)
    state = record_wave(state, first, now=100.0)
    assert isinstance(_decide(state, 102.0, health=0.1), Wait)
    assert isinstance(_decide(state, 105.0, health=0.1), Paused)


def test_no_wave_unless_recovering() -> None:
    opened = record_plan(None, server="A", incident_id="i1", clients=CLIENTS)
    decision = _decide(opened, 100.0)
    assert isinstance(decision, Paused)
    assert "opened" in decision.reason
    closed = on_incident(opened, server="A", incident_id="i1", state="closed")
    assert isinstance(_decide(closed, 100.0), Paused)


def test_nothing_away_gives_one_empty_final_wave() -> None:
    state = on_incident(None, server="A", incident_id="i1", state="opened")
    state = on_incident(state, server="A", incident_id="i1", state="recovering")
    wave = _decide(state, 100.0)
    assert isinstance(wave, Wave)
    assert wave.clients == ()
    assert wave.final
    state = record_wave(state, wave, now=100.0)
    # until the incident is known closed, the final wave goes again, with no clients
    again = _decide(state, 200.0)
    assert isinstance(again, Wave) and again.final and again.clients == ()
    assert again.wave == wave.wave and "not known closed" in again.reason
    closed = on_incident(state, server="A", incident_id="i1", state="closed")
    assert isinstance(_decide(closed, 300.0), Done)


def test_the_final_wave_waits_until_the_last_readmitted_are_heard_home() -> None:
    """The incident closes on the final wave: never while a client it readmitted may still
    be away (its agent restarting, say)."""
    wave = _decide(_recovering(["c1", "c2"]), 100.0)
    assert isinstance(wave, Wave)
    assert (wave.clients, wave.final) == (("c1", "c2"), False)
    state = record_wave(_recovering(["c1", "c2"]), wave, now=100.0)
    assert state.returning == ("c1", "c2")
    state = arrived(state, "c1")
    waiting = _decide(state, 101.0)
    assert isinstance(waiting, Wait) and waiting.until == pytest.approx(130.0)
    assert "1 clients readmitted, not heard home" in waiting.reason
    state = arrived(state, "c2")
    final = _decide(state, 101.0)  # at once: an empty wave adds no load
    assert isinstance(final, Wave)
    assert (final.clients, final.final, final.wave) == ((), True, 2)
    assert "every client readmitted is home" in final.reason


def test_a_client_never_heard_home_holds_the_final_wave_back_only_so_long() -> None:
    state = _recovering(["c1"])
    wave = _decide(state, 100.0)
    assert isinstance(wave, Wave)
    state = record_wave(state, wave, now=100.0)
    assert isinstance(_decide(state, 129.9), Wait)
    final = _decide(state, 130.0)
    assert isinstance(final, Wave) and final.final and final.clients == ()
    assert "not heard home 30s after their wave: c1" in final.reason


def test_a_client_whose_readmission_notice_failed_is_away_again_for_a_later_wave() -> None:
    state = _recovering(["c1", "c2"])
    wave = _decide(state, 100.0)
    assert isinstance(wave, Wave)
    state = record_wave(state, wave, now=100.0)
    state = arrived(state, "c1")
    state = not_returned(state, "c2")
    assert (state.away, state.returning, state.readmitted) == (("c2",), (), ("c1",))
    again = _decide(state, 105.0)
    assert isinstance(again, Wave) and again.clients == ("c2",) and not again.final
    # a failure of a client not returning changes nothing
    assert not_returned(state, "c1") is state


def test_relapse_stops_waves_and_keeps_the_rest_away() -> None:
    state = _recovering(CLIENTS)
    first = _decide(state, 100.0)
    assert isinstance(first, Wave)
    state = record_wave(state, first, now=100.0)
    state = on_incident(state, server="A", incident_id="i1", state="opened")
    assert isinstance(_decide(state, 200.0), Paused)
    assert state.away == ("c3", "c4", "c5")
    state = record_plan(state, server="A", incident_id="i1", clients=["c1", "c6"])
    assert state.away == ("c3", "c4", "c5", "c1", "c6")
    assert state.readmitted == ("c2",)
    state = on_incident(state, server="A", incident_id="i1", state="recovering")
    again = _decide(state, 200.0)
    assert isinstance(again, Wave)
    assert again.wave == 2
    assert again.clients == ("c3", "c4")


def test_relapse_after_final_wave_rearms_it() -> None:
    state = _recovering([])
    final = _decide(state, 100.0)
    assert isinstance(final, Wave)
    state = record_wave(state, final, now=100.0)
    state = on_incident(state, server="A", incident_id="i1", state="opened")
    state = on_incident(state, server="A", incident_id="i1", state="recovering")
    again = _decide(state, 200.0)
    assert isinstance(again, Wave)
    assert again.final


def test_new_incident_keeps_clients_still_away() -> None:
    state = record_plan(None, server="A", incident_id="i1", clients=["c1", "c2"])
    state = on_incident(state, server="A", incident_id="i1", state="closed")
    state = on_incident(state, server="A", incident_id="i2", state="opened")
    assert state.incident_id == "i2"
    assert state.away == ("c1", "c2")
    assert state.next_wave == 1


def test_state_round_trips_through_json() -> None:
    state = record_wave(
        _recovering(CLIENTS), Wave(wave=1, clients=("c1",), final=False, reason=""), now=5.0
    )
    data = msgspec.json.encode(state)
    assert msgspec.json.decode(data, type=Readmission) == state


def _ask(  # type: ignore[no-untyped-def]
    state: Readmission | None, health: float | None, client: str = "c1", now: float = 100.0
):
    return answer_request(
        state,
        client=client,
        health=health,
        connection_threshold=THRESHOLD,
        now=now,
        wave_interval_s=5.0,
        retry_after_s=7.0,
    )


def test_request_granted_without_incident_when_healthy() -> None:
    answer, state = _ask(None, 0.7)
    assert answer.granted
    assert state is None
    closed = on_incident(
        record_plan(None, server="A", incident_id="i1", clients=["c1"]),
        server="A",
        incident_id="i1",
        state="closed",
    )
    answer, after = _ask(closed, 0.6)
    assert answer.granted
    assert after is not None and after.away == ()


def test_request_deferred_without_incident_when_unhealthy_or_unknown() -> None:
    assert not _ask(None, 0.5)[0].granted
    assert not _ask(None, None)[0].granted


def test_request_deferred_while_opened_even_when_healthy() -> None:
    opened = record_plan(None, server="A", incident_id="i1", clients=["c2", "c1"])
    answer, state = _ask(opened, 0.99)
    assert not answer.granted and answer.retry_after_s == 7.0
    assert "opened" in answer.reason
    # it asked: first in the first wave
    assert state is not None and state.asked == ("c1",)
    wave = _decide(on_incident(state, server="A", incident_id="i1", state="recovering"), 1.0)
    assert isinstance(wave, Wave) and wave.clients == ("c1", "c2")
    # asking again changes nothing; a client not away is not recorded
    assert _ask(state, 0.99)[1] == state
    assert _ask(opened, 0.99, client="c9")[1] == opened


def test_a_request_while_recovering_is_deferred_to_the_next_wave_first_in_it() -> None:
    state = record_wave(
        _recovering(["c1", "c2", "c3", "c4"]),
        Wave(wave=1, clients=("c1",), final=False, reason=""),
        now=98.0,
    )
    answer, after = _ask(state, 0.8, client="c4", now=100.0)
    # told to wait: the next wave is due at 103, and it asks again a wave interval later
    assert not answer.granted and answer.retry_after_s == pytest.approx(3.0 + 5.0)
    assert after is not None and after.asked == ("c4",) and after.away == state.away
    _, after = _ask(after, 0.8, client="c3", now=101.0)
    assert after is not None and after.asked == ("c4", "c3")
    wave = _decide(after, 103.0, size=3)
    assert isinstance(wave, Wave) and wave.clients == ("c4", "c3", "c2")
    assert "2 that asked first" in wave.reason
    after = record_wave(after, wave, now=103.0)
    assert after.asked == () and after.away == ()
    # a low health defers it for retry_after_s instead, and records nothing
    deferred, unchanged = _ask(state, 0.3, client="c2")
    assert not deferred.granted and deferred.retry_after_s == 7.0
    assert unchanged == state


def test_a_request_while_recovering_of_a_client_not_away_is_granted() -> None:
    state = _recovering(["c1"])
    answer, after = _ask(state, 0.8, client="c9")
    assert answer.granted and "not among those away" in answer.reason
    assert after == state


def test_the_last_client_home_by_its_wave_leads_to_an_empty_final_wave() -> None:
    state = record_wave(
        _recovering(["c1"]), Wave(wave=1, clients=("c1",), final=False, reason=""), now=90.0
    )
    state = arrived(state, "c1")
    wave = _decide(state, 100.0)
    assert isinstance(wave, Wave)
    assert wave.clients == ()
    assert wave.final


@given(
    clients=st.lists(st.sampled_from([f"c{i}" for i in range(30)]), max_size=40),
    size=st.integers(min_value=1, max_value=8),
    healths=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20),
)
def test_waves_readmit_every_moved_client_exactly_once(
    clients: list[str], size: int, healths: list[float]
) -> None:
    state = _recovering(clients)
    moved = list(dict.fromkeys(clients))
    now = 0.0
    step = 0
    sent: list[Wave] = []
    while step < 1000:
        health = healths[step % len(healths)] if step < 200 else 1.0
        step += 1
        decision = _decide(state, now, health=health, size=size, interval=1.0)
        if isinstance(decision, Done):
            break
        if isinstance(decision, Wait):
            now = decision.until
        elif isinstance(decision, Paused):
            assert health < THRESHOLD
            now += 0.5
        else:
            assert len(decision.clients) <= size
            sent.append(decision)
            state = record_wave(state, decision, now=now)
            for client in decision.clients:
                state = arrived(state, client)
            if decision.final:
                break
    assert sent[-1].clients == ()
    readmitted = [c for wave in sent for c in wave.clients]
    assert readmitted == moved
    assert sorted(readmitted) == sorted(set(moved))
    assert [w.final for w in sent] == [False] * (len(sent) - 1) + [True]
    assert [w.wave for w in sent] == list(range(1, len(sent) + 1))


def test_those_asking_behind_a_full_wave_are_told_to_ask_when_their_own_wave_is_due() -> None:
    state = record_wave(
        _recovering([f"c{n}" for n in range(1, 8)]),
        Wave(wave=1, clients=("c1",), final=False, reason=""),
        now=98.0,
    )
    retries = []
    for n in range(2, 8):  # six clients ask, waves take two each
        answer, state = answer_request(
            state,
            client=f"c{n}",
            health=0.8,
            connection_threshold=THRESHOLD,
            now=100.0,
            wave_interval_s=5.0,
            retry_after_s=7.0,
            wave_capacity=2,
        )
        assert not answer.granted
        retries.append(answer.retry_after_s)
    # the next wave is due at 103: the first two ask again after it, the next two a
    # wave later, the last two a wave after that
    assert retries == pytest.approx([8.0, 8.0, 13.0, 13.0, 18.0, 18.0])
