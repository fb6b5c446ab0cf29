"""The targeter's pure core: an opened incident gets a plan, falling health a further step,
an older incident is rejected, statuses and acks say where each client is."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import Rejected
from schemas.events import Ack, ClientStatus, HealthReport, Incident
from services.launch.farm import write_farm
from services.runtime.config import Config
from services.targeter.core import TargeterCore, TargeterState

T0 = 1_700_000_000.0


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg, _ = write_farm(tmp_path / "farm", bus_url=None, clients=6)
    return cfg


def health(server: str, value: float, at: float) -> HealthReport:
    return HealthReport(
        time=at,
        server=server,
        sample_id="s",
        health=value,
        failover_threshold=0.2,
        connection_threshold=0.6,
    )


def incident(state: str, at: float, incident_id: str = "inc-1") -> Incident:
    return Incident(
        time=at,
        incident_id=incident_id,
        server="A",
        state=state,  # type: ignore[arg-type]
        health=0.05,
        opened_at=T0,
    )


def farm_state(core: TargeterCore) -> TargeterState:
    state = core.initial()
    for server, value in (("B", 0.9), ("C", 0.9), ("A", 0.05)):
        state, parts = core.handle(state, health(server, value, T0), T0)
        assert parts == []
    return state


def test_an_opened_incident_plans_the_servers_clients_away(config: Config) -> None:
    core = TargeterCore(config, source="test")
    state, [plan] = core.handle(farm_state(core), incident("opened", T0), T0)
    assert plan.server == "A" and plan.step == 1 and plan.source == "test"
    moved = sorted(m.client for m in plan.moves)
    assert moved and set(moved) <= {"nas-01", "nas-04"}  # A's clients, up to max_share
    assert all(m.alternates[0] in {"B", "C"} for m in plan.moves)
    tracked = state.tracked["A"]
    assert tracked.planned == tuple(moved) and tracked.last_plan_at == T0
    assert state.in_incident() == {"A"}

    # recovering tracks it and plans nothing; an older event is rejected
    recovering, parts = core.handle(state, incident("recovering", T0 + 5), T0 + 5)
    assert parts == [] and recovering.tracked["A"].state == "recovering"
    assert recovering.tracked["A"].step == 1
    with pytest.raises(Rejected) as info:
        core.handle(recovering, incident("opened", T0 + 1), T0 + 6)
    assert info.value.reason == "out-of-order"


def test_the_same_incident_change_offered_again_plans_nothing_more(config: Config) -> None:
    """A durable consumer offers an Incident again when the targeter died before acking it:
    the step it planned then is in its written state (and outbox), not planned twice."""
    core = TargeterCore(config, source="test")
    opened = incident("opened", T0)
    state, [_] = core.handle(farm_state(core), opened, T0)
    again, parts = core.handle(state, opened, T0 + 2)
    assert parts == []
    assert again.tracked["A"].step == 1 and again.tracked["A"].planned == state.tracked["A"].planned


def test_a_step_planned_again_from_the_same_state_is_the_same_events(config: Config) -> None:
    """A targeter that published a step and died before it stored that it had plans the
    step again from its stored state: the same plan and event ids, which the stream
    stores once; another step, or the same step of another incident, has others."""
    core = TargeterCore(config, source="test")
    before = farm_state(core)
    state, [first] = core.handle(before, incident("opened", T0), T0)
    _, [again] = core.handle(before, incident("opened", T0), T0 + 1)
    assert (again.id, again.plan_id) == (first.id, first.plan_id)
    _, [later] = core.handle(state, health("A", 0.01, T0 + 6), T0 + 6)
    _, [other] = core.handle(before, incident("opened", T0, incident_id="inc-2"), T0)
    assert len({first.id, later.id, other.id}) == 3
    assert len({first.plan_id, later.plan_id, other.plan_id}) == 3


def test_a_further_step_only_when_due(config: Config) -> None:
    assert config.targeter.step_interval_s == 5.0
    core = TargeterCore(config, source="t")
    state, _ = core.handle(farm_state(core), incident("opened", T0), T0)
    early, parts = core.handle(state, health("A", 0.01, T0 + 1), T0 + 1)
    assert parts == [] and early.reports["A"].health == 0.01
    _, parts = core.handle(early, health("A", 0.01, T0 + 6), T0 + 6)
    assert [p.step for p in parts] == [2]


def test_statuses_and_acks_say_where_each_client_is(config: Config) -> None:
    core = TargeterCore(config, source="t")
    state = core.initial()
    assert state.registry["nas-01"].current == "A"
    status = ClientStatus(time=T0, client="nas-01", home="A", current="B")
    moved, parts = core.handle(state, status, T0)
    assert parts == [] and moved.registry["nas-01"].current == "B"
    ack = Ack(time=T0 + 1, notice_id="n", client="nas-01", server="B", accepted=True, now_on="A")
    back, _ = core.handle(moved, ack, T0 + 1)
    assert back.registry["nas-01"].current == "A"
    refused = Ack(time=T0 + 2, notice_id="n", client="nas-01", server="A", accepted=False)
    assert core.handle(back, refused, T0 + 2)[0] is back


def test_a_client_planned_away_but_still_reported_on_the_server_is_planned_again(
    config: Config,
) -> None:
    """A move that never took effect (its notice lost with a killed notifier) is not left
    standing: once the client's own statuses still put it on the server replan_after_s after
    the plan, the next step plans it again, even with health no longer falling."""
    assert config.targeter.replan_after_s == 15.0
    core = TargeterCore(config, source="t")
    state, [plan] = core.handle(farm_state(core), incident("opened", T0), T0)
    first = sorted(m.client for m in plan.moves)
    # health a little better, and the planned clients report themselves on A, but early
    t = T0 + 10
    for cid in first:
        state, _ = core.handle(state, ClientStatus(time=t, client=cid, home="A", current="A"), t)
    state, parts = core.handle(state, health("A", 0.06, t), t)
    assert parts == []  # not falling, and not yet overdue: the notices may be on their way
    # later still on A: planned again
    t = T0 + 16
    for cid in first:
        state, _ = core.handle(state, ClientStatus(time=t, client=cid, home="A", current="A"), t)
    state, [again] = core.handle(state, health("A", 0.06, t), t)
    assert again.step == 2 and set(first) <= {m.client for m in again.moves}


def test_a_client_that_moved_as_planned_is_not_planned_again(config: Config) -> None:
    core = TargeterCore(config, source="t")
    state, [plan] = core.handle(farm_state(core), incident("opened", T0), T0)
    first = sorted(m.client for m in plan.moves)
    t = T0 + 20
    for cid in first:
        state, _ = core.handle(state, ClientStatus(time=t, client=cid, home="A", current="B"), t)
    state, parts = core.handle(state, health("A", 0.01, t), t)
    assert all(m.client not in first for p in parts for m in p.moves)


def test_a_relapse_moves_the_clients_back_on_the_server_and_not_those_still_away(
    config: Config,
) -> None:
    """A relapse plans the next step for the clients on the server (readmitted in its
    waves, or never moved), not again for those the incident moved that are still away:
    they would be sent a notice to leave a server they are not on."""
    core = TargeterCore(config, source="t")
    state, [plan] = core.handle(farm_state(core), incident("opened", T0), T0)
    moved = {m.client for m in plan.moves}
    t = T0 + 1
    for cid in moved:
        state, _ = core.handle(state, ClientStatus(time=t, client=cid, home="A", current="B"), t)
    state, _ = core.handle(state, incident("recovering", T0 + 5), T0 + 5)
    state, [relapse] = core.handle(state, incident("opened", T0 + 8), T0 + 8)
    assert relapse.step == 2
    planned = {m.client for m in relapse.moves}
    assert planned and not planned & moved

    # one of them readmitted before the next relapse is planned again
    back = sorted(moved)[0]
    state, _ = core.handle(state, incident("recovering", T0 + 12), T0 + 12)
    t = T0 + 13
    state, _ = core.handle(state, ClientStatus(time=t, client=back, home="A", current="A"), t)
    state, [again] = core.handle(state, incident("opened", T0 + 15), T0 + 15)
    assert back in {m.client for m in again.moves}
