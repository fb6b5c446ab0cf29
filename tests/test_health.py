"""The health function: each part, each rule, and what forces health to 0."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.events import MetricsSample, ServiceCheck
from services.evaluator.health import score
from services.runtime.config import EvaluatorConfig, HealthWeights, Secret, ServerConfig

SERVER = ServerConfig(id="A", status_secret=Secret(env="S"), threads_max=8, queue_max=100)
MIN = EvaluatorConfig(max_processes=1000)
WEIGHTED = EvaluatorConfig(rule="weighted", max_processes=1000)


def sample(**kwargs: Any) -> MetricsSample:
    kwargs.setdefault("status_ok", True)
    return MetricsSample(server="A", seq=1, **kwargs)


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
def test_each_part_is_a_headroom(fields: dict[str, Any], part: str, expected: float) -> None:
    result = score(sample(**fields), SERVER, MIN)
    assert result.parts == {part: pytest.approx(expected)}
    assert result.health == pytest.approx(expected)
    assert result.limiting == part


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


def test_mandatory_service_down_is_health_zero() -> None:
    checks = [
        ServiceCheck(name="radiusd", kind="mandatory", ok=True),
        ServiceCheck(name="ldap", kind="mandatory", ok=False, detail="connection refused"),
    ]
    for cfg in (MIN, WEIGHTED):
        result = score(sample(memory_percent=10.0, services=checks), SERVER, cfg)
        assert result.health == 0.0
        assert result.limiting == "service:ldap"
        assert "connection refused" in result.reason


def test_mandatory_services_up_do_not_change_health() -> None:
    checks = [ServiceCheck(name="radiusd", kind="mandatory", ok=True)]
    result = score(sample(memory_percent=10.0, services=checks), SERVER, MIN)
    assert result.health == pytest.approx(0.9)


FULL: dict[str, Any] = {
    "threads_active": 4,  # 0.5
    "queue_len": 0,  # 1.0
    "memory_percent": 20.0,  # 0.8
    "cpu_percent": 90.0,  # 0.1
    "process_count": 0,  # 1.0
}


def test_min_rule_is_the_lowest_part() -> None:
    result = score(sample(**FULL), SERVER, MIN)
    assert result.health == pytest.approx(0.1)
    assert result.limiting == "cpu"
    assert len(result.parts) == 5


def test_weighted_rule_is_the_weighted_mean() -> None:
    result = score(sample(**FULL), SERVER, WEIGHTED)
    assert result.health == pytest.approx((0.5 + 1.0 + 0.8 + 0.1 + 1.0) / 5)
    assert result.limiting == "cpu"
    weights = HealthWeights(threads=3.0, queue=1.0, memory=0.0, cpu=0.0, processes=0.0)
    cfg = EvaluatorConfig(rule="weighted", weights=weights, max_processes=1000)
    result = score(sample(**FULL), SERVER, cfg)
    assert result.health == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)
    assert set(result.parts) == {"threads", "queue"}
    assert result.limiting == "threads"


def test_weighted_rule_with_every_weight_zero_has_no_parts() -> None:
    weights = HealthWeights(threads=0, queue=0, memory=0, cpu=0, processes=0)
    cfg = EvaluatorConfig(rule="weighted", weights=weights)
    result = score(sample(**FULL), SERVER, cfg)
    assert result.health == 0.0
    assert "no health parts known" in result.reason


def test_dependent_service_down_is_a_zero_part_in_weighted_and_a_note_in_min() -> None:
    checks = [
        ServiceCheck(name="logging", kind="dependent", ok=False),
        ServiceCheck(name="accounting", kind="dependent", ok=True),
    ]
    weighted = score(sample(memory_percent=20.0, services=checks), SERVER, WEIGHTED)
    assert weighted.parts == {"memory": 0.8, "dependent:logging": 0.0, "dependent:accounting": 1.0}
    assert weighted.health == pytest.approx((0.8 + 0.0 + 1.0) / 3)
    assert weighted.limiting == "dependent:logging"
    by_min = score(sample(memory_percent=20.0, services=checks), SERVER, MIN)
    assert by_min.health == pytest.approx(0.8)
    assert "dependent down" in by_min.reason and "logging" in by_min.reason


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
