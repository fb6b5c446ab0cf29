"""The chaos tests' moments, recognised from events (tests/support/chaos_moments.py), and the
ordinary suite's rotation of the matrix."""

from __future__ import annotations

from collections import Counter

from schemas.events import Ack, FailoverNotice, FailoverPlan, Incident, Move, ReadmitWave
from tests.support.chaos_moments import (
    MID_OVERLOAD_AFTER_S,
    MOMENTS,
    NATS,
    SERVICE_TARGETS,
    UP,
    reached,
    rotation,
)


def opened(t: float) -> Incident:
    return Incident(incident_id="i", server="A", state="opened", health=0.1, opened_at=t, time=t)


def test_nothing_has_come_before_the_incident_opens() -> None:
    for moment in MOMENTS:
        assert reached(moment, [], "A", 1000.0, wave_size=3) is None
    assert reached("opens", [opened(1.0)], "A", 2.0, wave_size=3)
    other = Incident(incident_id="j", server="B", state="opened", health=0.1, opened_at=1, time=1)
    assert reached("opens", [other], "A", 2.0, wave_size=3) is None


def test_mid_overload_is_the_first_plan_acked_or_a_little_after_it() -> None:
    plan = FailoverPlan(
        incident_id="i", server="A", moves=[Move(client="n1", alternates=["B"])], time=2.0
    )
    events = [opened(1.0), plan]
    assert reached("mid-overload", events, "A", 2.5, wave_size=3) is None
    assert reached("mid-overload", events, "A", 2.0 + MID_OVERLOAD_AFTER_S, wave_size=3)
    notice = FailoverNotice(
        incident_id="i", server="A", client="n1", alternates=["B"], seq=1, valid_until=9, time=2.1
    )
    ack = Ack(notice_id=notice.id, client="n1", server="A", accepted=True, now_on="B", time=2.2)
    assert reached("mid-overload", [*events, notice, ack], "A", 2.3, wave_size=3)


def test_first_wave_and_the_wave_before_the_final_one() -> None:
    moves = [Move(client=f"n{i}", alternates=["B"]) for i in range(7)]
    plan = FailoverPlan(incident_id="i", server="A", moves=moves, time=2.0)
    recovering = Incident(
        incident_id="i", server="A", state="recovering", health=0.7, opened_at=1.0, time=5.0
    )
    events = [opened(1.0), plan, recovering]
    assert reached("first-wave", events, "A", 6.0, wave_size=3) is None
    assert reached("before-final-wave", events, "A", 6.0, wave_size=3) is None  # 7 left
    wave1 = ReadmitWave(incident_id="i", server="A", wave=1, clients=["n0", "n1", "n2"], time=6)
    events.append(wave1)
    assert reached("first-wave", events, "A", 6.0, wave_size=3)
    assert reached("before-final-wave", events, "A", 6.0, wave_size=3) is None  # 4 left
    wave2 = ReadmitWave(incident_id="i", server="A", wave=2, clients=["n3", "n4", "n5"], time=7)
    assert reached("before-final-wave", [*events, wave2], "A", 7.0, wave_size=3)
    # one wave readmits them all: the recovery itself is the moment before it
    assert reached("before-final-wave", events[:3], "A", 6.0, wave_size=7)


def test_the_rotation_kills_every_target_and_spreads_the_moments() -> None:
    for day in range(30):
        runs = rotation(day)
        assert len(runs) == 3  # 4 + 3 of the processes, `up`
        kills = [kill for run in runs for kill in run]
        assert sorted(k.target for k in kills) == sorted((*SERVICE_TARGETS, NATS, UP))
        for run in runs:
            assert len({k.moment for k in run}) == len(run)  # each kill of a run its moment
            targets = {k.target for k in run}
            assert targets <= {UP} or UP not in targets  # `up` runs a farm of its own
        assert len(Counter(k.moment for k in kills)) == len(MOMENTS)
    assert rotation(0) != rotation(1)


def test_an_incident_opened_before_the_overload_is_not_the_one_watched() -> None:
    early = Incident(incident_id="e", server="A", state="opened", health=0.1, opened_at=1, time=1)
    wave = ReadmitWave(incident_id="e", server="A", wave=1, final=True, time=2)
    assert reached("first-wave", [early, wave], "A", 3.0, wave_size=3, since=2.5) is None
    assert reached("first-wave", [early, wave], "A", 3.0, wave_size=3) is not None
