"""The health function: each part, each rule, dependent penalties, and what forces health to 0."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas.events import MetricsSample, ServiceCheck
from services.evaluator.health import RESOURCE_PARTS, score
from services.runtime.config import (
    EvaluatorConfig,
    HealthRule,
    HealthWeights,
    LatencyProbe,
    ProbeUser,
    Secret,
    ServerConfig,
    TcpCheck,
    WritableCheck,
)

SERVER = ServerConfig(
    id="A",
    status_secret=Secret(env="S"),
    threads_max=8,
    queue_max=100,
    services=[
        WritableCheck(name="acct-log", kind="dependent", path="/var/log/acct", weight=0.25),
        TcpCheck(name="ldap", kind="dependent", port=389, weight=0.15),
        TcpCheck(name="db", kind="mandatory", port=5432),
    ],
)
MIN = EvaluatorConfig(max_processes=1000)
WEIGHTED = EvaluatorConfig(rule="weighted", max_processes=1000)
RULES = {"min": MIN, "weighted": WEIGHTED}


def sample(**kwargs: Any) -> MetricsSample:
    kwargs.setdefault("status_ok", True)
    return MetricsSample(server="A", seq=1, **kwargs)


def down(name: str, detail: str = "", kind: str = "dependent") -> ServiceCheck:
    return ServiceCheck(name=name, kind=kind, ok=False, detail=detail)  # type: ignore[arg-type]


def weights(**overrides: float) -> HealthWeights:
    return msgspec.structs.replace(HealthWeights(), **overrides)


# Every part known: threads 0.5, queue 1.0, memory 0.8, cpu 0.1, processes 1.0.
FULL: dict[str, Any] = {
    "threads_active": 4,
    "queue_len": 0,
    "memory_percent": 20.0,
    "cpu_percent": 90.0,
    "process_count": 0,
}
FULL_PARTS = {"threads": 0.5, "queue": 1.0, "memory": 0.8, "cpu": 0.1, "processes": 1.0}
# For each part, the sample fields that put it at 0.2 (every other part at its FULL value).
LOW_FIELD: dict[str, dict[str, Any]] = {
    "threads": {"threads_active": 6.4},
    "queue": {"queue_len": 80},
    "memory": {"memory_percent": 80.0},
    "cpu": {"cpu_percent": 80.0},
    "processes": {"process_count": 800},
}


@pytest.mark.parametrize("rule", ["min", "weighted"])
@pytest.mark.parametrize(
    ("fields", "part", "expected"),
    [
        ({"threads_active": 6}, "threads", 0.25),
        ({"threads_active": 6, "threads_max": 12}, "threads", 0.5),
        ({"threads_active": 20}, "threads", 0.0),
        ({"queue_len": 25}, "queue", 0.75),
        ({"queue_len": 500}, "queue", 0.0),
        ({"memory_percent": 40.0}, "memory", 0.6),
        ({"cpu_percent": 30.0}, "cpu", 0.7),
        ({"cpu_percent": 350.0}, "cpu", 0.0),
        ({"process_count": 250}, "processes", 0.75),
        ({"process_count": 5000}, "processes", 0.0),
    ],
)
def test_each_part_is_a_headroom(
    fields: dict[str, Any], part: str, expected: float, rule: str
) -> None:
    result = score(sample(**fields), SERVER, RULES[rule])
    assert result.parts == {part: pytest.approx(expected)}
    assert result.health == pytest.approx(expected)
    assert result.limiting == part
    assert result.penalties == {}
    assert f"{part} {expected:.2f} limits" in result.reason


@pytest.mark.parametrize("part", RESOURCE_PARTS)
def test_each_part_limits_under_min_when_lowest(part: str) -> None:
    fields = {**FULL, "cpu_percent": 10.0, **LOW_FIELD[part]}
    result = score(sample(**fields), SERVER, MIN)
    assert result.health == pytest.approx(0.2)
    assert result.limiting == part
    assert result.reason.startswith(f"min of 5 parts: {part} 0.20 limits")


@pytest.mark.parametrize("part", RESOURCE_PARTS)
def test_each_part_weighs_in_the_weighted_mean(part: str) -> None:
    fields = {**FULL, "cpu_percent": 10.0, **LOW_FIELD[part]}
    parts = {**FULL_PARTS, "cpu": 0.9, part: 0.2}
    cfg = EvaluatorConfig(rule="weighted", weights=weights(**{part: 4.0}), max_processes=1000)
    result = score(sample(**fields), SERVER, cfg)
    others = sum(v for p, v in parts.items() if p != part)
    assert result.health == pytest.approx((4 * 0.2 + others) / 8)
    assert result.limiting == part
    assert result.reason.startswith(f"weighted mean of 5 parts {result.health:.2f}: {part} 0.20")


@pytest.mark.parametrize("part", RESOURCE_PARTS)
def test_weight_zero_drops_the_part_from_the_weighted_mean(part: str) -> None:
    cfg = EvaluatorConfig(rule="weighted", weights=weights(**{part: 0.0}), max_processes=1000)
    result = score(sample(**FULL), SERVER, cfg)
    kept = {p: v for p, v in FULL_PARTS.items() if p != part}
    assert result.parts == pytest.approx(kept)
    assert result.health == pytest.approx(sum(kept.values()) / 4)
    assert "weighted mean of 4 parts" in result.reason


def test_min_rule_is_the_lowest_part() -> None:
    result = score(sample(**FULL), SERVER, MIN)
    assert result.health == pytest.approx(0.1)
    assert result.limiting == "cpu"
    assert result.parts == pytest.approx(FULL_PARTS)
    assert result.reason == "min of 5 parts: cpu 0.10 limits"


def test_weighted_rule_is_the_weighted_mean_and_names_the_costliest_part() -> None:
    result = score(sample(**FULL), SERVER, WEIGHTED)
    assert result.health == pytest.approx(sum(FULL_PARTS.values()) / 5)
    assert result.limiting == "cpu"
    # threads at 0.5 weighs 3: its shortfall (1.5) costs more than cpu's (0.9).
    cfg = EvaluatorConfig(rule="weighted", weights=weights(threads=3.0), max_processes=1000)
    result = score(sample(**FULL), SERVER, cfg)
    assert result.health == pytest.approx((3 * 0.5 + 1.0 + 0.8 + 0.1 + 1.0) / 7)
    assert result.limiting == "threads"


def test_weighted_rule_with_every_weight_zero_has_no_parts() -> None:
    zero = weights(threads=0, queue=0, memory=0, cpu=0, processes=0)
    cfg = EvaluatorConfig(rule="weighted", weights=zero)
    result = score(sample(**FULL), SERVER, cfg)
    assert result.health == 0.0
    assert "no health parts known" in result.reason


def test_a_servers_own_rule_beats_the_default() -> None:
    other = msgspec.structs.replace(SERVER, id="B")
    own = msgspec.structs.replace(
        SERVER, health=HealthRule(rule="weighted", weights=weights(cpu=0.0))
    )
    assert score(sample(**FULL), other, MIN).health == pytest.approx(0.1)
    result = score(sample(**FULL), own, MIN)
    assert result.health == pytest.approx((0.5 + 1.0 + 0.8 + 1.0) / 4)
    assert "cpu" not in result.parts
    assert result.limiting == "threads"
    strict = msgspec.structs.replace(SERVER, health=HealthRule(rule="min"))
    assert score(sample(**FULL), other, WEIGHTED).health == pytest.approx(0.68)
    assert score(sample(**FULL), strict, WEIGHTED).health == pytest.approx(0.1)


def test_threads_max_falls_back_to_the_server_config_and_is_unknown_without_either() -> None:
    no_max = ServerConfig(id="A", status_secret=Secret(env="S"))
    assert score(sample(threads_active=2), SERVER, MIN).parts == {"threads": 0.75}
    result = score(sample(threads_active=2, memory_percent=10.0), no_max, MIN)
    assert "threads" not in result.parts
    assert "threads" in result.reason


def test_missing_fields_are_left_out_never_counted_healthy() -> None:
    result = score(sample(memory_percent=90.0, errors=["cpu: denied"]), SERVER, MIN)
    assert set(result.parts) == {"memory"}
    assert result.health == pytest.approx(0.1)
    assert "unknown: threads, queue, cpu, processes" in result.reason


def test_no_parts_at_all_is_health_zero_with_a_reason() -> None:
    result = score(sample(), SERVER, MIN)
    assert result.health == 0.0
    assert result.parts == {}
    assert "no health parts known" in result.reason


def test_status_failure_is_health_zero() -> None:
    result = score(
        sample(status_ok=False, memory_percent=10.0, errors=["status: timeout"]), SERVER, MIN
    )
    assert result.health == 0.0
    assert result.limiting == "status"
    assert "timeout" in result.reason


@pytest.mark.parametrize("rule", ["min", "weighted"])
def test_mandatory_service_down_is_health_zero(rule: str) -> None:
    checks = [
        ServiceCheck(name="radiusd", kind="mandatory", ok=True),
        down("db", "connection refused", kind="mandatory"),
        down("acct-log", "not a directory"),
    ]
    result = score(sample(memory_percent=10.0, services=checks), SERVER, RULES[rule])
    assert result.health == 0.0
    assert result.limiting == "service:db"
    assert "connection refused" in result.reason and "db" in result.reason


def test_services_up_do_not_change_health() -> None:
    checks = [
        ServiceCheck(name="db", kind="mandatory", ok=True),
        ServiceCheck(name="acct-log", kind="dependent", ok=True),
    ]
    result = score(sample(memory_percent=10.0, services=checks), SERVER, MIN)
    assert result.health == pytest.approx(0.9)
    assert result.penalties == {}


@pytest.mark.parametrize("rule", ["min", "weighted"])
def test_failed_dependent_takes_off_exactly_its_configured_weight(rule: str) -> None:
    clean = score(sample(**FULL), SERVER, RULES[rule])
    checks = [down("acct-log", "not a directory")]
    result = score(sample(**FULL, services=checks), SERVER, RULES[rule])
    assert result.penalties == {"acct-log": 0.25}
    assert result.parts == clean.parts
    assert result.health == pytest.approx(max(0.0, clean.health - 0.25))
    assert "dependent acct-log down (-0.25: not a directory)" in result.reason


def test_two_failed_dependents_add_up() -> None:
    checks = [down("acct-log"), down("ldap", "timeout")]
    result = score(sample(memory_percent=10.0, services=checks), SERVER, MIN)
    assert result.penalties == {"acct-log": 0.25, "ldap": 0.15}
    assert result.health == pytest.approx(0.9 - 0.25 - 0.15)
    assert "dependent acct-log down (-0.25)" in result.reason
    assert "dependent ldap down (-0.15: timeout)" in result.reason
    assert "0.90 - 0.40 = 0.50" in result.reason


def test_penalties_floor_health_at_zero() -> None:
    checks = [down("acct-log"), down("ldap"), down("spool")]
    result = score(sample(memory_percent=50.0, services=checks), SERVER, MIN)
    assert sum(result.penalties.values()) == pytest.approx(0.7)
    assert result.health == 0.0


def test_an_unconfigured_dependent_takes_off_the_default_weight_and_says_so() -> None:
    result = score(sample(memory_percent=10.0, services=[down("spool", "full")]), SERVER, MIN)
    assert result.penalties == {"spool": 0.3}
    assert result.health == pytest.approx(0.6)
    assert "dependent spool down (-0.30: not configured, default weight 0.30; full)" in (
        result.reason
    )


def test_a_dependent_with_weight_zero_is_reported_but_takes_nothing() -> None:
    server = msgspec.structs.replace(
        SERVER, services=[WritableCheck(name="acct-log", kind="dependent", path="/x", weight=0)]
    )
    result = score(sample(memory_percent=10.0, services=[down("acct-log")]), server, MIN)
    assert result.penalties == {"acct-log": 0.0}
    assert result.health == pytest.approx(0.9)
    assert result.limiting == "memory"


def test_parts_limit_when_they_take_off_more_than_the_penalties() -> None:
    checks = [down("acct-log", "not a directory")]
    result = score(sample(threads_active=7, services=checks), SERVER, MIN)  # threads 0.125
    assert result.limiting == "threads"
    assert result.health == 0.0
    assert result.reason == (
        "min of 1 part: threads 0.12 limits; "
        "dependent acct-log down (-0.25: not a directory); 0.12 - 0.25 = 0.00; "
        "unknown: queue, memory, cpu, processes"
    )


@pytest.mark.parametrize("rule", ["min", "weighted"])
def test_a_penalty_limits_when_penalties_take_off_more_than_the_parts(rule: str) -> None:
    checks = [down("ldap"), down("acct-log", "not a directory")]
    result = score(sample(memory_percent=10.0, services=checks), SERVER, RULES[rule])
    assert result.health == pytest.approx(0.5)
    assert result.limiting == "penalty:acct-log"
    assert "dependent acct-log down (-0.25: not a directory) limits" in result.reason
    assert "memory 0.90 limits" not in result.reason


@pytest.mark.parametrize("rule", ["min", "weighted"])
def test_health_stays_in_unit_interval(rule: str) -> None:
    cfg = EvaluatorConfig(rule=rule, max_processes=10)  # type: ignore[arg-type]
    extreme = sample(
        threads_active=-5,
        queue_len=-3,
        memory_percent=-20.0,
        cpu_percent=1e9,
        process_count=10**9,
    )
    result = score(extreme, SERVER, cfg)
    assert 0.0 <= result.health <= 1.0
    assert all(0.0 <= v <= 1.0 for v in result.parts.values())


PROBED = msgspec.structs.replace(
    SERVER,
    services=[],
    probe=LatencyProbe(
        secret=Secret(env="S"), users=[ProbeUser(name="probe", password=Secret(env="P"))]
    ),
)


def test_latency_is_the_share_of_probes_over_the_objective_against_the_tolerance() -> None:
    calm = score(sample(**FULL, probes=10, probes_slow=0), PROBED, MIN)
    assert calm.parts["latency"] == 1.0 and calm.sources["latency"] == "probes"
    # a tenth of the probes slow is 0.4 of the 0.25 tolerance gone
    some = score(sample(**FULL, probes=10, probes_slow=1), PROBED, MIN)
    assert some.parts["latency"] == pytest.approx(0.6)
    # half of the requests slowed down: no headroom, and the reason says so
    half = score(sample(**FULL, probes=10, probes_slow=5, probes_failed=2), PROBED, MIN)
    assert half.health == 0.0 and half.limiting == "latency"
    assert half.reason.startswith(
        "min of 6 parts: latency 0.00 (5 of 10 probes over 0.25s, 2 unanswered) limits"
    )


def test_a_probed_server_whose_probes_are_unknown_says_why() -> None:
    result = score(
        sample(**FULL, errors=["latency: no probe decided in the window yet"]), PROBED, MIN
    )
    assert "latency" not in result.parts
    assert "unknown: latency (latency: no probe decided in the window yet)" in result.reason


def test_outstanding_requests_against_the_threads_with_their_implied_latency() -> None:
    result = score(
        sample(**FULL, threads_max=16, outstanding=12, outstanding_latency_s=4.0), SERVER, MIN
    )
    assert result.parts["outstanding"] == pytest.approx(0.25)
    assert result.sources["outstanding"] == "counters"
    assert result.limiting == "cpu"
    only = score(
        sample(
            status_ok=True,
            threads_max=16,
            threads_total=15,
            outstanding=14,
            outstanding_latency_s=4.0,
        ),
        msgspec.structs.replace(SERVER, services=[]),
        MIN,
    )
    assert only.limiting == "outstanding"
    assert (
        "outstanding 0.12 (14 in flight for 16 threads, pool grown to 15, ~4s each) limits"
        in only.reason
    )


def test_unknown_process_parts_name_the_process_error() -> None:
    result = score(
        sample(
            queue_len=0,
            process_count=10,
            errors=["process: pid file /run/freeradius/freeradius.pid does not exist"],
        ),
        msgspec.structs.replace(SERVER, services=[]),
        MIN,
    )
    assert (
        "unknown: threads, memory, cpu (process: pid file /run/freeradius/freeradius.pid "
        "does not exist)" in result.reason
    )


def test_a_server_that_stopped_answering_names_what_its_requests_meet() -> None:
    result = score(
        sample(
            status_ok=False,
            probes=10,
            probes_slow=10,
            probes_failed=4,
            errors=["status: no answer from 10.0.0.11:18121 within the 0.5s timeout", "other"],
        ),
        PROBED,
        MIN,
    )
    assert result.health == 0.0 and result.limiting == "status"
    assert result.reason == (
        "Status-Server failed (status: no answer from 10.0.0.11:18121 within the 0.5s timeout); "
        "latency 0.00 (10 of 10 probes over 0.25s, 4 unanswered)"
    )
