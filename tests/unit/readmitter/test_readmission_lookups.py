"""A readmission's clients are looked up in sets built once per state and handed on while
the tuples they index stay; what is stored is the tuples alone, as before."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import ClientStatus, FailoverPlan, Incident, Move
from services.launch.farm import write_farm
from services.readmitter.core import ReadmitterCore, ReadmitterState
from services.readmitter.sizing import Measuring, Size
from services.readmitter.waves import (
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
    settles_only,
)

THRESHOLD = 0.6
STORED_BEFORE = (
    b'{"server":"A","incident_id":"i1","state":"recovering","away":["c3","c4"],'
    b'"readmitted":["c1","c2"],"next_wave":2,"last_wave_at":100.0,"final_sent":false,'
    b'"returning":["c2"],"asked":["c4"],"costs":[],"outbox":[]}'
)
"""A state as the readmitter stored it before its lookups were sets."""


def _recovering(clients: list[str]) -> Readmission:
    state = on_incident(None, server="A", incident_id="i1", state="opened")
    state = record_plan(state, server="A", incident_id="i1", clients=clients)
    return on_incident(state, server="A", incident_id="i1", state="recovering")


def _indexes_match(state: Readmission) -> None:
    assert state.away_set == set(state.away)
    assert state.readmitted_set == set(state.readmitted)
    assert state.returning_set == set(state.returning)
    assert state.asked_set == set(state.asked)


def test_a_state_stored_before_loads_and_is_stored_as_it_was() -> None:
    state = msgspec.json.decode(STORED_BEFORE, type=Readmission)
    assert "c3" in state.away_set and "c1" not in state.away_set
    assert state.asked_set == {"c4"}
    assert msgspec.json.encode(state) == STORED_BEFORE  # the sets are not stored


def test_the_sets_built_are_handed_on_while_their_tuple_stays() -> None:
    state = _recovering([f"c{i}" for i in range(1000)])
    away, readmitted = state.away_set, state.readmitted_set
    _, asked = answer_request(
        state,
        client="c500",
        health=0.9,
        connection_threshold=THRESHOLD,
        now=100.0,
        wave_interval_s=5.0,
        retry_after_s=7.0,
    )
    assert asked is not None and asked.asked == ("c500",)
    assert asked.away_set is away and asked.readmitted_set is readmitted
    wave = Wave(wave=1, clients=("c500", "c0"), final=False, reason="")
    sent = record_wave(asked, wave, now=100.0)
    assert sent.away_set is not away and "c500" not in sent.away_set
    assert sent.returning_set == sent.readmitted_set == {"c500", "c0"}
    home = arrived(sent, "c0")
    assert home.away_set is sent.away_set and home.readmitted_set is sent.readmitted_set
    _indexes_match(home)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["plan", "ask", "wave", "home", "failed", "relapse"]),
            st.lists(st.sampled_from(["c1", "c2", "c3", "c4", "c5"]), max_size=3),
        ),
        max_size=25,
    )
)
def test_the_sets_always_hold_what_the_tuples_hold(steps: list[tuple[str, list[str]]]) -> None:
    state = _recovering(["c1", "c2"])
    now = 100.0
    for kind, clients in steps:
        now += 10.0
        for client in clients[:1]:
            _indexes_match(state)  # built before the change, so they are handed on
            if kind == "ask":
                _, after = answer_request(
                    state,
                    client=client,
                    health=0.9,
                    connection_threshold=THRESHOLD,
                    now=now,
                    wave_interval_s=5.0,
                    retry_after_s=7.0,
                )
                assert after is not None
                state = after
            elif kind == "home":
                state = arrived(state, client)
            elif kind == "failed":
                state = not_returned(state, client)
        if kind == "plan":
            state = record_plan(state, server="A", incident_id="i1", clients=clients)
        elif kind == "wave":
            state = record_wave(
                state,
                Wave(wave=state.next_wave, clients=tuple(clients), final=False, reason=""),
                now=now,
            )
        elif kind == "relapse":
            state = on_incident(state, server="A", incident_id="i1", state="opened")
            state = on_incident(state, server="A", incident_id="i1", state="recovering")
        _indexes_match(state)


def test_only_a_client_heard_home_settles_without_deciding() -> None:
    state = _recovering(["c1", "c2", "c3"])
    sent = record_wave(state, Wave(wave=1, clients=("c1", "c2"), final=False, reason=""), now=1.0)
    assert settles_only(sent, arrived(sent, "c1"))
    assert not settles_only(sent, not_returned(sent, "c1"))
    assert not settles_only(sent, record_plan(sent, server="A", incident_id="i1", clients=["c4"]))
    _, asked = answer_request(
        sent,
        client="c3",
        health=0.9,
        connection_threshold=THRESHOLD,
        now=2.0,
        wave_interval_s=5.0,
        retry_after_s=7.0,
    )
    assert asked is not None and not settles_only(sent, asked)
    assert not settles_only(state, sent)


def test_the_size_of_a_wave_is_asked_only_once_a_wave_of_clients_may_go() -> None:
    state = _recovering(["c1", "c2", "c3"])
    sent = record_wave(state, Wave(wave=1, clients=("c1",), final=False, reason=""), now=100.0)

    def unasked() -> Size | Measuring:
        raise AssertionError("the queue and its loads were read during the spacing")

    common = {"health": 0.9, "connection_threshold": THRESHOLD, "wave_interval_s": 5.0}
    assert isinstance(next_wave(sent, now=101.0, size=unasked, **common), Wait)  # type: ignore[arg-type]
    due = next_wave(sent, now=105.0, size=lambda: Size(clients=2, reason="r"), **common)  # type: ignore[arg-type]
    assert isinstance(due, Wave) and due.clients == ("c2", "c3")
    with pytest.raises(ValueError, match="at least 1 client"):
        next_wave(sent, now=105.0, size=lambda: Size(clients=0, reason="r"), **common)  # type: ignore[arg-type]


def test_rates_are_kept_of_the_clients_away_only(tmp_path: Path) -> None:
    cfg, _ = write_farm(tmp_path / "farm", {}, bus_url=None, clients=6)
    core = ReadmitterCore(cfg, source="t")
    state = ReadmitterState()
    opened = Incident(incident_id="i1", server="A", state="opened", health=0.1, opened_at=0.0)
    moves = [Move(client="nas-01", alternates=["B"])]
    for event in (opened, FailoverPlan(incident_id="i1", server="A", moves=moves)):
        state, _ = core.handle(state, event, 1.0)
    for client in ("nas-02", "nas-03", "nas-04"):  # at home: B, C, A
        home = cfg.client(client).home
        state, _ = core.handle(
            state, ClientStatus(client=client, home=home, current=home, rate=3.0), 2.0
        )
    assert state.rates == {}
    away = ClientStatus(client="nas-01", home="A", current="B", rate=5.0)
    state, _ = core.handle(state, away, 3.0)
    assert state.rates == {"nas-01": 5.0}
    assert core.rate(state, "nas-01") == 5.0
