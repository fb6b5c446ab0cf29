"""The evaluator's pure core: a sample gives its report and, on a change, an Incident;
a final wave closes a recovering incident; agents' reports feed the clients part."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from schemas.events import (
    ClientStatus,
    Event,
    HealthReport,
    Incident,
    MetricsSample,
    ReadmitWave,
    UpstreamReport,
)
from services.evaluator.core import EvaluatorCore, EvaluatorState
from services.launch.farm import write_farm
from services.runtime.config import Config

T0 = 1_700_000_000.0
LOW, HIGH = 8, 1  # threads busy of 8: health 0 and 0.875


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg, _ = write_farm(tmp_path / "farm", bus_url=None, clients=3)
    return cfg


def core(config: Config) -> EvaluatorCore:
    counter = itertools.count(1)
    return EvaluatorCore(
        config.evaluator,
        {s.id: s for s in config.servers},
        source="test",
        make_id=lambda: f"inc-{next(counter)}",
        report_id=lambda sample: f"r-{sample.id}",
    )


def sample(i: int, busy: int, server: str = "A") -> MetricsSample:
    return MetricsSample(
        id=f"s{i}", time=T0 + i, server=server, seq=i, status_ok=True, threads_active=busy
    )


def feed(
    c: EvaluatorCore, state: EvaluatorState, loads: list[int]
) -> tuple[EvaluatorState, list[list[Event]]]:
    out = []
    for i, busy in enumerate(loads):
        state, events = c.handle(state, sample(i, busy), T0 + i)
        out.append(events)
    return state, out


def test_two_lows_open_an_incident_after_the_report(config: Config) -> None:
    c = core(config)
    state, out = feed(c, c.initial(), [LOW, LOW])
    [first], [report, incident] = out
    assert isinstance(first, HealthReport) and first.id == "r-s0" and first.state == "healthy"
    assert isinstance(report, HealthReport) and report.state == "overloaded"
    assert isinstance(incident, Incident)
    assert (incident.incident_id, incident.state, incident.time) == ("inc-1", "opened", T0 + 1)
    assert incident.source == "test" and report.incident_id == "inc-1"
    assert state.servers["A"].phase == "overloaded" and state.servers["B"].phase == "healthy"
    assert state.transitions["A"].state == "opened"


def test_a_final_wave_closes_a_recovering_incident_and_nothing_else(config: Config) -> None:
    c = core(config)
    state, out = feed(c, c.initial(), [LOW, LOW, HIGH, HIGH, HIGH])
    assert [type(e).__name__ for e in out[-1]] == ["HealthReport", "Incident"]
    assert state.servers["A"].phase == "recovering"
    not_final = ReadmitWave(incident_id="inc-1", server="A", wave=1, clients=["nas-01"])
    assert c.handle(state, not_final, T0 + 6) == (state, [])
    other = ReadmitWave(incident_id="inc-9", server="A", wave=2, final=True)
    assert c.handle(state, other, T0 + 6) == (state, [])
    final = ReadmitWave(incident_id="inc-1", server="A", wave=2, final=True, reason="done")
    closed, [incident] = c.handle(state, final, T0 + 7)
    assert isinstance(incident, Incident)
    assert (incident.state, incident.reason) == ("closed", "readmission finished: done")
    assert incident.health == 0.875  # the machine's last health: the wave carried none
    assert closed.servers["A"].phase == "healthy"


def test_agents_reports_make_the_clients_part(config: Config) -> None:
    c = core(config)
    status = ClientStatus(
        client="nas-01",
        home="A",
        current="A",
        upstreams=[UpstreamReport(server="A", answers=10, timeouts=90)],
    )
    state, events = c.handle(c.initial(), status, T0)
    assert events == []
    _, [report] = c.handle(state, sample(1, HIGH), T0 + 1)
    assert isinstance(report, HealthReport)
    assert "clients" in report.parts and report.parts["clients"] < 0.875


def test_the_state_is_threaded_through_and_a_copy_keeps_a_moment(config: Config) -> None:
    c = core(config)
    state = c.initial()
    before = state.copy()
    after, _ = c.handle(state, sample(0, LOW), T0)
    # updated in place (no copy of every server's machine per sample), returned
    assert after is state and after.servers["A"].lows == 1
    assert before.servers["A"].lows == 0 and before.servers is not state.servers
