"""The readmitter's pure core: plans put clients away, a due wave brings them back in
waves of wave_size with a timer for the next, health pauses it, requests get a wave 0."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    FailoverPlan,
    HealthReport,
    Incident,
    Move,
    ReadmitRequest,
)
from services.launch.farm import write_farm
from services.readmitter.core import ReadmitterCore, ReadmitterState, WaveDue
from services.readmitter.waves import Readmission

T0 = 1_700_000_000.0


@pytest.fixture
def core(tmp_path: Path) -> ReadmitterCore:
    cfg, _ = write_farm(
        tmp_path / "farm",
        {
            "readmitter": {
                "sizing": "fixed",
                "wave_size": 1,
                "wave_interval_s": 2.0,
                "retry_after_s": 7.0,
            }
        },
        bus_url=None,
        clients=6,
    )
    return ReadmitterCore(cfg, source="t")


def health(value: float) -> HealthReport:
    return HealthReport(
        server="A", sample_id="s", health=value, failover_threshold=0.2, connection_threshold=0.6
    )


def incident(state: str) -> Incident:
    return Incident(incident_id="inc-1", server="A", state=state, health=0.1, opened_at=T0)  # type: ignore[arg-type]


def plan(*clients: str) -> FailoverPlan:
    moves = [Move(client=c, alternates=["B"]) for c in clients]
    return FailoverPlan(incident_id="inc-1", server="A", moves=moves)


def ack(client: str, now_on: str) -> Ack:
    return Ack(notice_id="n", client=client, server="A", accepted=True, now_on=now_on)


def status(client: str, current: str) -> ClientStatus:
    return ClientStatus(client=client, home="A", current=current)


def test_a_failed_readmission_notice_puts_its_client_away_again(core: ReadmitterCore) -> None:
    state, _ = core.handle(away(core), health(0.9), T0)
    state, [first] = core.handle(state, WaveDue(server="A"), T0 + 1)
    assert first.clients == ["nas-01"]
    failed = Delivery(
        notice_id="n",
        notice_type="notice.readmit.v2",
        client="nas-01",
        server="A",
        outcome="failed",
        attempts=4,
    )
    state, _ = core.handle(state, failed, T0 + 2)
    assert state.readmissions["A"].away == ("nas-04", "nas-01")
    # a failover notice that failed, or a readmission one that was acked, changes nothing
    for other in (
        msgspec.structs.replace(failed, notice_type="notice.failover.v2", client="nas-04"),
        msgspec.structs.replace(failed, outcome="acked", client="nas-04"),
    ):
        assert core.handle(state, other, T0 + 2)[0] is state


def test_a_readmission_notice_refused_as_stale_puts_its_client_away_again(
    core: ReadmitterCore,
) -> None:
    # a wave's notice sent again after a restart reaches the client after a newer notice
    # (a plan of the server it had moved to): refused as old-seq, the client did not return
    state, _ = core.handle(away(core), health(0.9), T0)
    state, [first] = core.handle(state, WaveDue(server="A"), T0 + 1)
    assert first.clients == ["nas-01"]
    refused = msgspec.structs.replace(ack("nas-01", "B"), accepted=False, reason="old-seq")
    after, _ = core.handle(state, refused, T0 + 2)
    assert after.readmissions["A"].away == ("nas-04", "nas-01")
    expired = msgspec.structs.replace(refused, reason="expired")
    assert core.handle(state, expired, T0 + 2)[0].readmissions["A"].away == ("nas-04", "nas-01")
    # refused for a reason a newer notice does not cure: not sent again by every wave
    unknown = msgspec.structs.replace(refused, reason="unknown-server")
    assert core.handle(state, unknown, T0 + 2)[0].readmissions["A"].away == ("nas-04",)


def away(core: ReadmitterCore) -> ReadmitterState:
    state = ReadmitterState()
    for event in (incident("opened"), plan("nas-01", "nas-04"), incident("recovering")):
        state, out = core.handle(state, event, T0)
        assert out == []
    return state


def test_waves_of_wave_size_then_the_final_one(core: ReadmitterCore) -> None:
    state = away(core)
    assert state.readmissions["A"].away == ("nas-01", "nas-04")
    state, _ = core.handle(state, health(0.9), T0)
    state, [first] = core.handle(state, WaveDue(server="A"), T0 + 1)
    assert (first.wave, first.clients, first.final, first.health) == (1, ["nas-01"], False, 0.9)
    assert first.time == T0 + 1 and first.source == "t" and first.incident_id == "inc-1"
    assert state.timers["A"].wake_at == T0 + 3
    state, none = core.handle(state, WaveDue(server="A"), T0 + 2)
    assert none == [] and state.timers["A"].wake_at == T0 + 3
    state, [last] = core.handle(state, WaveDue(server="A"), T0 + 3)
    assert (last.wave, last.clients, last.final) == (2, ["nas-04"], False)
    # the final wave waits for both to be heard home: nas-01 by its ack, nas-04 by its status
    state, _ = core.handle(state, ack("nas-01", "A"), T0 + 3.1)
    state, none = core.handle(state, WaveDue(server="A"), T0 + 3.2)
    assert none == [] and state.readmissions["A"].returning == ("nas-04",)
    state, _ = core.handle(state, status("nas-04", "A"), T0 + 3.3)
    state, [final] = core.handle(state, WaveDue(server="A"), T0 + 3.4)
    assert (final.wave, final.clients, final.final) == (3, [], True)
    assert "every client readmitted is home" in final.reason
    # the final wave goes again until the incident is known closed (an evaluator that
    # was down when it first went out closes it then)
    assert state.timers["A"].wake_at == T0 + 5.4
    state, [again] = core.handle(state, WaveDue(server="A"), T0 + 9)
    assert (again.wave, again.clients, again.final) == (3, [], True)
    # the evaluator's reports say healthy again: closed, though its Incident went unheard
    healthy = HealthReport(
        server="A",
        sample_id="s",
        health=0.95,
        failover_threshold=0.2,
        connection_threshold=0.6,
        state="healthy",
    )
    state, _ = core.handle(state, healthy, T0 + 10)
    assert state.readmissions["A"].state == "closed"
    state, done = core.handle(state, WaveDue(server="A"), T0 + 12)
    assert done == [] and state.timers["A"].wake_at is None


def test_low_health_pauses_and_an_opened_incident_stops_the_loop(core: ReadmitterCore) -> None:
    state, _ = core.handle(away(core), health(0.3), T0)
    state, out = core.handle(state, WaveDue(server="A"), T0 + 1)
    timer = state.timers["A"]
    assert out == [] and timer.paused and timer.wake_at == T0 + 3
    assert "below connection threshold" in timer.reason
    state, _ = core.handle(state, incident("opened"), T0 + 2)
    state, out = core.handle(state, WaveDue(server="A"), T0 + 3)
    assert out == [] and state.timers["A"].wake_at is None


def test_a_request_is_deferred_while_opened_then_granted(core: ReadmitterCore) -> None:
    state = ReadmitterState()
    for event in (health(0.9), incident("opened"), plan("nas-01")):
        state, _ = core.handle(state, event, T0)
    request = ReadmitRequest(client="nas-01", server="A")
    state, [deferred] = core.handle(state, request, T0 + 1)
    assert (deferred.wave, deferred.clients, deferred.deferred) == (0, [], ["nas-01"])
    assert deferred.retry_after_s == 7.0 and deferred.incident_id == "inc-1"
    state, _ = core.handle(state, incident("recovering"), T0 + 2)
    # recovering: staged, it goes first in the next wave
    state, [staged] = core.handle(state, request, T0 + 3)
    assert (staged.clients, staged.deferred) == ([], ["nas-01"])
    assert state.readmissions["A"].asked == ("nas-01",)
    state, _ = core.handle(state, incident("closed"), T0 + 4)
    state, [granted] = core.handle(state, request, T0 + 5)
    assert (granted.clients, granted.deferred, granted.final) == (["nas-01"], [], False)
    assert state.readmissions["A"].away == () and state.readmissions["A"].readmitted == ("nas-01",)


def test_a_client_away_from_a_server_in_incident_is_away_without_a_plan(
    core: ReadmitterCore,
) -> None:
    state, _ = core.handle(ReadmitterState(), incident("opened"), T0)
    # nas-01 (home A) says it is on B: no plan heard here moved it, it is away all the same
    state, out = core.handle(state, ClientStatus(client="nas-01", home="A", current="B"), T0)
    assert out == [] and state.readmissions["A"].away == ("nas-01",)
    # at home, or of a server with no incident, or unknown: nothing changes
    for status in (
        ClientStatus(client="nas-04", home="A", current="A"),
        ClientStatus(client="nas-02", home="B", current="C"),
        ClientStatus(client="nas-99", home="A", current="B"),
    ):
        assert core.handle(state, status, T0)[0] is state


def test_a_client_already_readmitted_is_not_put_away_again_by_a_late_status(
    core: ReadmitterCore,
) -> None:
    state = away(core)
    state, _ = core.handle(state, health(0.9), T0)
    state, [wave] = core.handle(state, WaveDue(server="A"), T0 + 1)
    assert wave.clients == ["nas-01"]
    # its last status before it heard the wave still says B
    late = ClientStatus(client="nas-01", home="A", current="B")
    assert core.handle(state, late, T0 + 1.1)[0] is state


def test_a_client_homed_elsewhere_that_a_plan_moves_is_not_waited_for(
    core: ReadmitterCore,
) -> None:
    """nas-02 is homed on B: on A by its own failover, A's plan moves it away, and it goes
    home to B; no wave of A can readmit it (the notifier would drop such a notice)."""
    state = ReadmitterState()
    for event in (incident("opened"), plan("nas-01", "nas-02"), incident("recovering")):
        state, _ = core.handle(state, event, T0)
    assert state.readmissions["A"].away == ("nas-01",)


def test_adaptive_waves_are_sized_by_what_the_last_one_cost(tmp_path: Path) -> None:
    cfg, _ = write_farm(
        tmp_path / "farm",
        {
            "readmitter": {
                "wave_interval_s": 1.0,
                "first_wave_size": 1,
                "growth": 2.0,
                "settle_s": 0.5,
            }
        },
        bus_url=None,
        clients=30,
    )
    core = ReadmitterCore(cfg, source="t")
    mine = [c.id for c in cfg.clients if c.home == "A"]
    state = ReadmitterState()
    for event in (incident("opened"), plan(*mine), incident("recovering"), health(0.95)):
        state, _ = core.handle(state, event, T0)
    for client in mine:  # each agent measures 2 requests/s
        status = ClientStatus(client=client, home="A", current="B", rate=2.0)
        state, _ = core.handle(state, status, T0)
    state, [first] = core.handle(state, WaveDue(server="A"), T0)
    assert first.clients == mine[:1] and "first wave: small" in first.reason
    # not before its cost is measured: two reports from settle_s after it (one sooner
    # reads short: its clients' load has not shown yet)
    state, _ = core.handle(state, health(0.99), T0 + 0.3)
    state, out = core.handle(state, WaveDue(server="A"), T0 + 1)
    assert out == [] and "measuring wave 1: 0 of 2" in state.timers["A"].reason
    for at in (T0 + 1.1, T0 + 1.2):
        state, _ = core.handle(state, health(0.95), at)
    state, [second] = core.handle(state, WaveDue(server="A"), T0 + 1.3)
    assert len(second.clients) == 2 and "no measurable health" in second.reason
    # the second wave's 4 requests/s cost 0.05 of health: 0.0125 per request/s; at 0.9,
    # 0.2 above 0.7 fits 16 requests/s, 8 clients, but at most 2x the last wave
    for at in (T0 + 2.4, T0 + 2.5):
        state, _ = core.handle(state, health(0.9), at)
    state, [third] = core.handle(state, WaveDue(server="A"), T0 + 2.6)
    assert len(third.clients) == 4 and "0.0125 health per request/s" in third.reason
    # the third took health to 0.68, below 0.7: 0.0275 per request/s, and half the 0.08
    # left above the threshold fits less than one client: one
    for at in (T0 + 3.7, T0 + 3.8):
        state, _ = core.handle(state, health(0.68), at)
    state, [fourth] = core.handle(state, WaveDue(server="A"), T0 + 3.9)
    assert len(fourth.clients) == 1 and "below 0.70" in fourth.reason
    assert "within the margin: half at 0.0275" in fourth.reason
    costs = state.readmissions["A"].costs
    assert [(c.wave, c.clients, c.load) for c in costs] == [
        (1, 1, 2.0),
        (2, 2, 4.0),
        (3, 4, 8.0),
        (4, 1, 2.0),
    ]
    # a restarted readmitter has what the waves cost
    stored = msgspec.json.decode(msgspec.json.encode(state.readmissions["A"]), type=Readmission)
    assert stored.costs == costs
