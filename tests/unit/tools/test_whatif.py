"""`what-if`: settings, the recorded outcome, the replayed one, and how both are shown.

Pure: no bus. The farm (servers A, B, C; twelve clients, nas-01, nas-04,
nas-07 and nas-10 homed on A, 2 rps each) is written by ``write_farm`` with
no bus URL. Server A saturates then recovers, one sample a second; B and C
stay at health 0.875, so they have room for A's clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.events import (
    ClientStatus,
    Event,
    FailoverPlan,
    HealthReport,
    Incident,
    MetricsSample,
    Move,
    ReadmitWave,
    UpstreamReport,
)
from services.launch.farm import write_farm
from services.runtime.config import Config, ConfigError
from services.targeter.steps import step_due
from services.tools.whatif import (
    HEALTH_NOTE,
    Outcome,
    WaveOutcome,
    apply_settings,
    first_opened,
    recorded,
    side_by_side,
    simulate,
    to_json,
)

T0 = 1_700_000_000.0
A_CLIENTS = ["nas-01", "nas-04", "nas-07", "nas-10"]

# (threads_active of 8, auth queue of 256, the health that gives: the lower headroom)
IDLE = (0, 0, 1.0)
BUSY = (4, 0, 0.5)
LOW = (7, 0, 0.125)
LOWER = (7, 240, 0.0625)
LOWEST = (7, 248, 0.03125)
MID = (5, 0, 0.375)
HIGH = (2, 0, 0.75)
OTHERS = (1, 0, 0.875)

# Threshold 0.2 (two lows): opens at 3 with health 0.125 and plans nas-01, nas-04;
# a further step at 8 (5 s later, health lower) plans nas-07; three highs from 10
# start the recovery at 12, where one wave brings all three back and closes it.
INCIDENT = [IDLE, BUSY, LOW, LOW, LOWER, LOWEST, LOWEST, LOWEST, LOWER, MID, HIGH, HIGH]
A_LOAD = INCIDENT + [IDLE] * 13


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg, _ = write_farm(tmp_path / "farm", bus_url=None, clients=12)
    return cfg


def sample(server: str, i: int, load: tuple[int, int, float]) -> MetricsSample:
    return MetricsSample(
        id=f"s-{server}-{i}",
        time=T0 + i,
        source="collector",
        server=server,
        seq=i,
        status_ok=True,
        threads_active=load[0],
        threads_max=8,
        queue_len=load[1],
    )


def samples(a_load: Sequence[tuple[int, int, float]]) -> list[MetricsSample]:
    out = []
    for i, load in enumerate(a_load):
        out += [sample("A", i, load), sample("B", i, OTHERS), sample("C", i, OTHERS)]
    return out


def statuses(config: Config, at: float) -> list[ClientStatus]:
    return [
        ClientStatus(time=at, client=c.id, home=c.home, current=c.home, rate=2.0)
        for c in config.clients
    ]


def by_time(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.time)


def recording(config: Config) -> list[Event]:
    """The stream the live services would have recorded for A_LOAD at the default settings."""
    events: list[Event] = [*statuses(config, T0 - 5), *samples(A_LOAD)]
    for i, (_, _, health) in enumerate(A_LOAD):
        in_incident = 3 <= i <= 12
        events.append(
            HealthReport(
                time=T0 + i + 0.005,
                source="evaluator",
                server="A",
                sample_id=f"s-A-{i}",
                health=health,
                failover_threshold=0.2,
                connection_threshold=0.6,
                incident_id="inc-A1" if in_incident else None,
                state=("recovering" if i == 12 else "overloaded") if in_incident else "healthy",
            )
        )

    def incident(at: float, state: Any, health: float) -> Incident:
        return Incident(
            time=at,
            source="evaluator",
            incident_id="inc-A1",
            server="A",
            state=state,
            health=health,
            opened_at=T0 + 3.01,
        )

    def plan(at: float, step: int, clients: list[str]) -> FailoverPlan:
        moves = [Move(client=c, alternates=["B", "C"]) for c in clients]
        return FailoverPlan(
            time=at, source="targeter", incident_id="inc-A1", server="A", moves=moves, step=step
        )

    events += [
        incident(T0 + 3.01, "opened", 0.125),
        plan(T0 + 3.02, 1, ["nas-01", "nas-04"]),
        plan(T0 + 8.02, 2, ["nas-07"]),
        incident(T0 + 12.01, "recovering", 1.0),
        # adaptive waves: a small first one, then (its cost measured, a wave interval
        # later) the rest, then the final one
        ReadmitWave(
            time=T0 + 12.02,
            source="readmitter",
            incident_id="inc-A1",
            server="A",
            wave=1,
            clients=["nas-01", "nas-04"],
            health=1.0,
        ),
        ReadmitWave(
            time=T0 + 17.02,
            source="readmitter",
            incident_id="inc-A1",
            server="A",
            wave=2,
            clients=["nas-07"],
            health=1.0,
        ),
        ReadmitWave(
            time=T0 + 17.025,
            source="readmitter",
            incident_id="inc-A1",
            server="A",
            wave=3,
            clients=[],
            health=1.0,
            final=True,
        ),
        incident(T0 + 17.03, "closed", 1.0),
    ]
    return by_time(events)


def assert_same_decisions(rec: Outcome, sim: Outcome) -> None:
    """Equal but for ids and the services' few milliseconds behind the samples."""
    times = ("onset_at", "recovering_at", "closed_at")
    for name in ("server", "lowest_health", "clients_moved", "steps", "re_overloads"):
        assert getattr(sim, name) == getattr(rec, name), name
    assert sim.further_incidents == rec.further_incidents
    for name in times:
        assert getattr(sim, name) == pytest.approx(getattr(rec, name), abs=0.05), name
    assert [(w.wave, w.clients, w.final) for w in sim.waves] == [
        (w.wave, w.clients, w.final) for w in rec.waves
    ]
    assert [w.at for w in sim.waves] == pytest.approx([w.at for w in rec.waves], abs=0.05)


def text_of(config: Config, settings: list[str], events: list[Event]) -> tuple[Outcome, str]:
    sim = simulate(apply_settings(config, settings), events, "A")
    return sim, side_by_side(recorded(events, "inc-A1"), sim, settings=settings, start=T0)


# --- recorded and reproduced ------------------------------------------------------


def test_recorded_reads_the_decisions_of_the_incident(config: Config) -> None:
    rec = recorded(recording(config), "inc-A1")
    assert rec == Outcome(
        server="A",
        incident_id="inc-A1",
        onset_at=T0 + 3,
        lowest_health=0.03125,
        clients_moved=["nas-01", "nas-04", "nas-07"],
        steps=2,
        waves=[
            WaveOutcome(at=T0 + 12.02, wave=1, clients=["nas-01", "nas-04"]),
            WaveOutcome(at=T0 + 17.02, wave=2, clients=["nas-07"]),
            WaveOutcome(at=T0 + 17.025, wave=3, clients=[], final=True),
        ],
        re_overloads=0,
        recovering_at=T0 + 12,
        closed_at=T0 + 17.025,
        further_incidents=0,
        failover_threshold=0.2,
        connection_threshold=0.6,
        first_move_at=T0 + 3.02,
    )


def test_recorded_without_the_incident_names_it(config: Config) -> None:
    with pytest.raises(ValueError, match="inc-nope"):
        recorded(recording(config), "inc-nope")


def test_the_live_settings_reproduce_the_recording(config: Config) -> None:
    events = recording(config)
    sim, text = text_of(config, [], events)
    assert_same_decisions(recorded(events, "inc-A1"), sim)
    assert sim.incident_id == "what-if-1"
    assert sim.failover_samples == 2
    assert text.rstrip().endswith(
        "With the live settings the onset is detected at the same time. "
        "Everything else is as recorded."
    )
    assert HEALTH_NOTE in text


# --- other settings ---------------------------------------------------------------


def test_a_lower_failover_threshold_detects_the_onset_later(config: Config) -> None:
    events = recording(config)
    settings = ["evaluator.failover_threshold=0.1"]
    sim, text = text_of(config, settings, events)
    # 0.125 is no longer low: the lows are 0.0625 at 4 and 0.03125 at 5.
    assert sim.onset_at == T0 + 5
    assert sim.failover_threshold == 0.1
    # Health 0.03125 is 69% below 0.1: 5.5 rps of 8 to shed, capped at 2 of 4 clients;
    # no further step: 5 s later health is above the threshold.
    assert sim.clients_moved == ["nas-01", "nas-04"]
    assert sim.steps == 1
    assert sim.waves == [
        WaveOutcome(at=T0 + 12, wave=1, clients=["nas-01", "nas-04"]),
        WaveOutcome(at=T0 + 12, wave=2, clients=[], final=True),  # both heard home at once
    ]
    onset = next(line for line in text.splitlines() if line.startswith("onset detected"))
    assert onset.split()[2:] == ["3.0", "s", "5.0", "s"]
    assert (
        "With evaluator.failover_threshold=0.1 the onset is detected 2.0 s later. "
        "2 clients move instead of 3, in 1 step instead of 2, 2 readmission waves instead "
        "of 3 and the incident closes 5.0 s earlier." in text
    )


def test_a_threshold_below_the_lowest_health_never_detects_the_onset(config: Config) -> None:
    events = recording(config)
    settings = ["evaluator.failover_threshold=0.03"]
    sim, text = text_of(config, settings, events)
    assert sim.incident_id is None and sim.onset_at is None and sim.closed_at is None
    assert sim.clients_moved == [] and sim.steps == 0
    assert sim.lowest_health == 0.03125
    onset = next(line for line in text.splitlines() if line.startswith("onset detected"))
    assert onset.split()[2:] == ["3.0", "s", "never"]
    assert (
        "the onset is never detected: health never stayed below 0.03 for 2 samples "
        "(lowest 0.031). No client moves (3 clients in the recording)." in text
    )


@pytest.mark.parametrize(
    ("interval", "times"),
    [
        # One client a wave: every 2 s from the start of the recovery at 12.
        ("2", [12, 14, 16]),
        # 2.5 s apart: the readmitter wakes when each wave falls due, between samples.
        ("2.5", [12, 14.5, 17]),
    ],
)
def test_waves_follow_the_wave_size_and_interval(
    config: Config, interval: str, times: list[int]
) -> None:
    settings = [
        "readmitter.sizing=fixed",
        "readmitter.wave_size=1",
        f"readmitter.wave_interval_s={interval}",
    ]
    sim, text = text_of(config, settings, recording(config))
    assert sim.waves == [
        WaveOutcome(at=T0 + times[0], wave=1, clients=["nas-01"]),
        WaveOutcome(at=T0 + times[1], wave=2, clients=["nas-04"]),
        WaveOutcome(at=T0 + times[2], wave=3, clients=["nas-07"]),
        WaveOutcome(at=T0 + times[2], wave=4, clients=[], final=True),
    ]
    assert sim.closed_at == T0 + times[2]
    final = next(line for line in text.splitlines() if line.startswith("  wave 4"))
    assert final.split()[2] == "-" and final.split()[-1] == "(final)"
    assert "4 readmission waves instead of 3" in text
    if times[2] != 17:
        assert f"the incident closes {abs(times[2] - 17.0):.1f} s earlier" in text


# A slow ramp: one more worker busy each second from 1, then the queue fills.
RAMP = [IDLE, IDLE, (1, 0, 0.875), (2, 0, 0.75), (3, 0, 0.625), BUSY, (5, 0, 0.375)]
RAMP += [(6, 0, 0.25), LOW, LOWER, LOWEST, LOWEST, LOWEST, LOWEST, LOWEST]


def ramp_recording(config: Config) -> list[Event]:
    """What the live services (prediction off) recorded for RAMP: opened at 9, on 0.125
    and 0.0625, with nas-01 and nas-04 moved at once; the recording ends still overloaded."""
    events: list[Event] = [*statuses(config, T0 - 5), *samples(RAMP)]
    for i, (_, _, health) in enumerate(RAMP):
        events.append(
            HealthReport(
                time=T0 + i + 0.005,
                source="evaluator",
                server="A",
                sample_id=f"s-A-{i}",
                health=health,
                failover_threshold=0.2,
                connection_threshold=0.6,
                incident_id="inc-A1" if i >= 9 else None,
                state="overloaded" if i >= 9 else "healthy",
            )
        )
    moves = [Move(client=c, alternates=["B", "C"]) for c in ("nas-01", "nas-04")]
    events += [
        Incident(
            time=T0 + 9.01,
            source="evaluator",
            incident_id="inc-A1",
            server="A",
            state="opened",
            health=0.0625,
            opened_at=T0 + 9.01,
        ),
        FailoverPlan(
            time=T0 + 9.02, source="targeter", incident_id="inc-A1", server="A", moves=moves, step=1
        ),
    ]
    return by_time(events)


def row(text: str, label: str) -> list[str]:
    """The two cells of a row of the side-by-side table, as words."""
    line = next(line for line in text.splitlines() if line.startswith(label))
    return line.removeprefix(label).split()


def test_prediction_opens_a_slow_ramp_earlier_but_moves_no_one_before_the_threshold(
    config: Config,
) -> None:
    events = ramp_recording(config)
    live, _ = text_of(config, [], events)
    assert (live.onset_at, live.first_move_at) == (T0 + 9, T0 + 9)

    settings = ["evaluator.predict_horizon_s=2"]
    sim, text = text_of(config, settings, events)
    # At 0.375 (6) the line through the last five crosses 0.2 in 1.4 s, at 0.25 (7) in 0.4 s:
    # two lows by the trend, two samples before the thresholds' own two lows (8, 9).
    assert sim.onset_at == T0 + 7
    assert sim.onset_predicted == 2
    reason = "health 0.25 falling 0.12/s, crosses 0.20 in 0.4s (2 of 2 samples predicted)"
    assert sim.onset_reason == reason
    assert row(text, "onset detected") == ["9.0", "s", "7.0", "s"]
    # Health 0.25 is not below 0.2: the first plan moves no one, and the next step waits
    # targeter.step_interval_s (5 s) from it, so the first move comes later than live.
    assert sim.first_move_at == T0 + 12
    assert row(text, "first client moved") == ["9.0", "s", "12.0", "s"]
    assert (
        text.rstrip()
        .splitlines()[-1]
        .startswith(
            f"With evaluator.predict_horizon_s=2 the onset is detected 2.0 s earlier, "
            f"on the health trend: {reason}. "
        )
    )
    assert "the first client moves 3.0 s later" in text

    # With a step every second, the first real low moves clients one sample before live.
    faster = [*settings, "targeter.step_interval_s=1"]
    sim, text = text_of(config, faster, events)
    assert (sim.onset_at, sim.first_move_at) == (T0 + 7, T0 + 8)
    assert "the first client moves 1.0 s earlier" in text

    # Without prediction the what-if column is the recording's.
    sim, text = text_of(config, ["evaluator.predict_horizon_s=0"], events)
    assert (sim.onset_at, sim.first_move_at, sim.onset_predicted) == (T0 + 9, T0 + 9, 0)
    assert row(text, "onset detected") == ["9.0", "s", "9.0", "s"]


def test_a_trend_can_open_what_the_thresholds_never_would(config: Config) -> None:
    # With the threshold at 0.01 the ramp's lows (the queue full: 0.03125) never count,
    # but the line through 0.5 .. 0.125 points below 0.01 within 2 s: the trend overshoots.
    settings = ["evaluator.predict_horizon_s=2", "evaluator.failover_threshold=0.01"]
    sim, text = text_of(config, settings, ramp_recording(config))
    assert sim.onset_at == T0 + 8 and sim.onset_predicted == 2
    assert sim.clients_moved == [] and sim.first_move_at is None
    assert "0 clients move instead of 2" in text
    # A drop the line can never show turns prediction off, and the summary says what held.
    settings.append("evaluator.predict_min_drop=1")
    sim, text = text_of(config, settings, ramp_recording(config))
    assert sim.onset_at is None and sim.predict_horizon_s == 2.0
    assert (
        "the onset is never detected: health never stayed below 0.01 for 2 samples "
        "(lowest 0.031), nor did its trend cross it within 2 s." in text
    )


def test_a_relapse_is_counted_and_sheds_again(config: Config) -> None:
    # After the recovery at 12 and the first wave, two lows at 13 and 14 relapse.
    load = [*INCIDENT, IDLE, LOWER, LOWER, *[IDLE] * 10]
    events = by_time([*statuses(config, T0 - 5), *samples(load)])
    cfg = apply_settings(
        config,
        ["readmitter.sizing=fixed", "readmitter.wave_size=1", "readmitter.wave_interval_s=2"],
    )
    sim = simulate(cfg, events, "A")
    assert sim.re_overloads == 1
    # Step 3 at the relapse: nas-01 (back on A) is first of the clients on A again.
    assert sim.steps == 3
    assert sim.clients_moved == ["nas-01", "nas-04", "nas-07"]
    assert sim.recovering_at == T0 + 12
    # Recovery again at 17 (highs 15, 16, 17): the rest, one every 2 s, nas-01 last.
    assert [(w.at - T0, w.clients) for w in sim.waves] == [
        (12, ["nas-01"]),
        (17, ["nas-04"]),
        (19, ["nas-07"]),
        (21, ["nas-01"]),
        (21, []),
    ]
    assert sim.closed_at == T0 + 21
    assert sim.further_incidents == 0


def test_a_later_incident_is_counted_not_reported(config: Config) -> None:
    load = [*A_LOAD, LOWER, LOWER, *[IDLE] * 3]
    events = by_time([*statuses(config, T0 - 5), *samples(load)])
    sim = simulate(config, events, "A")
    assert sim.incident_id == "what-if-1"
    assert sim.closed_at == T0 + 17
    assert sim.further_incidents == 1


def test_placement_comes_from_statuses_before_the_cutoff(config: Config) -> None:
    events = recording(config)
    moved_before = ClientStatus(time=T0 + 1, client="nas-04", home="A", current="C", rate=2.0)
    moved_after = ClientStatus(time=T0 + 6, client="nas-10", home="A", current="B", rate=2.0)
    events = by_time([*events, moved_before, moved_after])
    cutoff = first_opened(events, "A")
    assert cutoff == T0 + 3.01
    sim = simulate(config, events, "A", placement_before=cutoff)
    # nas-01, nas-07, nas-10 on A: 6 rps, cap 1 a step; nas-10 stays (its move came later).
    # nas-04 had left A by itself before the incident: the first plan keeps it on C.
    assert sim.clients_moved == ["nas-04", "nas-01", "nas-07"]
    # By default only statuses before the first sample count: all four start on A.
    assert simulate(config, events, "A").clients_moved == ["nas-01", "nas-04", "nas-07"]


def test_the_same_input_gives_the_same_output(config: Config) -> None:
    events = recording(config)
    settings = ["evaluator.failover_threshold=0.1", "readmitter.wave_size=1"]
    first = text_of(config, settings, events)[1]
    second = text_of(config, settings, list(events))[1]
    assert first == second
    rec = recorded(events, "inc-A1")
    sims = [simulate(apply_settings(config, settings), events, "A") for _ in range(2)]
    assert to_json(rec, sims[0], settings) == to_json(rec, sims[1], settings)


def test_to_json_holds_both_outcomes_and_the_summary(config: Config) -> None:
    events = recording(config)
    settings = ["evaluator.failover_threshold=0.1"]
    rec, sim = recorded(events, "inc-A1"), simulate(apply_settings(config, settings), events, "A")
    data = to_json(rec, sim, settings)
    assert data["settings"] == settings
    assert data["note"] == HEALTH_NOTE
    assert data["simulated"]["onset_at"] == T0 + 5
    assert data["recorded"]["waves"][0]["clients"] == ["nas-01", "nas-04"]
    assert data["summary"].startswith("With evaluator.failover_threshold=0.1 the onset")
    assert msgspec.json.decode(msgspec.json.encode(data)) == data


def test_simulate_of_an_unknown_server_says_so(config: Config) -> None:
    with pytest.raises(ValueError, match="'Z'"):
        simulate(config, recording(config), "Z")


# --- settings ---------------------------------------------------------------------


def test_apply_settings_sets_typed_values_and_keeps_the_original(config: Config) -> None:
    new = apply_settings(
        config,
        [
            "evaluator.failover_threshold=0",
            "evaluator.weights.cpu=0.5",
            'targeter.policy=["list", "all"]',
            'targeter.clients=["nas-04"]',
            "targeter.topology=site",
            "collector.interval_s=2",
            "readmitter.wave_size=3",
        ],
    )
    assert new.evaluator.failover_threshold == 0.0
    assert isinstance(new.evaluator.failover_threshold, float)
    assert new.evaluator.weights.cpu == 0.5
    assert new.targeter.policy == ["list", "all"]
    assert new.targeter.clients == ["nas-04"]
    assert new.targeter.topology == "site"
    assert new.collector.interval_s == 2.0
    assert new.readmitter.wave_size == 3
    assert config.evaluator.failover_threshold == 0.2
    assert new.servers == config.servers and new.clients == config.clients


def test_related_settings_are_checked_together(config: Config) -> None:
    both = ["evaluator.failover_threshold=0.7", "evaluator.connection_threshold=0.8"]
    new = apply_settings(config, both)
    assert (new.evaluator.failover_threshold, new.evaluator.connection_threshold) == (0.7, 0.8)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("evaluator.failover_treshold=0.1", "evaluator has no field 'failover_treshold'"),
        ("evaluator.weights.disk=1", "evaluator.weights has no field 'disk'"),
        ("evaluator.failover_threshold.x=1", "has no field 'x'"),
        ("notifier.retries=1", "unknown section 'notifier'"),
        ("bus.url=nats://x", "unknown section 'bus'"),
        ("evaluator.failover_threshold", "expected section.field=value"),
        ("evaluator=1", "expected section.field=value"),
        ("evaluator.failover_threshold=low", "Expected `float`, got `str`"),
        ("evaluator.failover_threshold=true", "Expected `float`, got `bool`"),
        ("evaluator.failover_threshold=0.1.2", "is not a TOML value"),
        ("evaluator.failover_threshold=1.5", r"failover_threshold must be in \[0, 1\]"),
        ("evaluator.failover_threshold=0.7", r"must be below connection_threshold \(0.6\)"),
        ("readmitter.wave_size=0", "wave_size must be at least 1"),
        ('readmitter.sizing="slow"', "Invalid enum value 'slow'"),
        ("readmitter.first_wave_size=200", "first_wave_size must be at least 1 and at most"),
        ("readmitter.growth=0.5", "growth must be at least 1"),
        ("readmitter.margin=1", r"margin must be in \[0, 1\)"),
        ("readmitter.settle_reports=0", "settle_reports must be at least 1"),
        ("readmitter.settle_s=-1", "settle_s must not be negative"),
        ("readmitter.retry_after_s=0", "retry_after_s must be positive"),
        ('targeter.topology="far"', "Invalid enum value 'far'"),
        ('targeter.clients=["nas-99"]', "targeter.clients names unknown clients"),
    ],
)
def test_apply_settings_refuses_with_one_line(
    config: Config, assignment: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        apply_settings(config, [assignment])
    assert "\n" not in str(caught.value)
    assert assignment.partition("=")[0] in str(caught.value)


# --- the targeter's step rule, shared with the service ----------------------------


@pytest.mark.parametrize(
    ("health", "last_health", "since", "due"),
    [
        (0.1, 0.15, 5.0, True),  # lower, interval passed
        (0.15, 0.15, 5.0, True),  # as low as at the last plan still counts as falling
        (0.19, None, 5.0, True),  # no health recorded at the last plan: any low counts
        (0.16, 0.15, 9.0, False),  # rising
        (0.1, 0.15, 4.9, False),  # too soon
        (0.2, 0.3, 9.0, False),  # at the threshold is not below it
    ],
)
def test_a_further_step_is_due_when_below_falling_and_the_interval_passed(
    health: float, last_health: float | None, since: float, due: bool
) -> None:
    assert (
        step_due(
            health=health,
            failover_threshold=0.2,
            last_plan_health=last_health,
            last_plan_at=100.0,
            now=100.0 + since,
            step_interval_s=5.0,
        )
        is due
    )


def test_the_clients_part_is_replayed_from_the_recorded_statuses(config: Config) -> None:
    # A's resources stay healthy; its clients' requests go unanswered from T0 + 3 on
    quiet = [*[IDLE] * 10]
    late = [
        ClientStatus(
            time=T0 + t,
            client="nas-01",
            home="A",
            current="A",
            upstreams=[UpstreamReport(server="A", answers=2, timeouts=8 if t >= 3 else 0)],
        )
        for t in range(0, 10)
    ]
    events = by_time([*statuses(config, T0 - 5), *samples(quiet), *late])
    sim = simulate(config, events, "A")
    assert sim.incident_id is not None and sim.onset_at is not None and sim.onset_at > T0 + 3
    # without the statuses the same samples open nothing
    alone = by_time([*statuses(config, T0 - 5), *samples(quiet)])
    assert simulate(config, alone, "A").incident_id is None
