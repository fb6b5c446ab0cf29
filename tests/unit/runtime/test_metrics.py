"""Prometheus /metrics: the [metrics] config, its checks and its default."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from services.launch.cli import main
from services.launch.farm import farm_dict, write_config
from services.runtime.config import ConfigError, MetricsConfig, load_config
from services.runtime.metrics import LATENCY_BUCKETS, LoopGauge, LoopHistogram


def _write(tmp_path: Path, **sections: object) -> Path:
    data = farm_dict(tmp_path, bus_url="nats://127.0.0.1:1", clients=2)
    data.update(sections)
    return write_config(tmp_path, data)


def test_metrics_are_off_unless_a_port_is_configured(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path))
    assert config.metrics == MetricsConfig()
    assert config.metrics.port("evaluator") is None

    config = load_config(
        _write(tmp_path, metrics={"listen": "0.0.0.0", "ports": {"evaluator": 9102}})
    )
    assert config.metrics.listen == "0.0.0.0"
    assert config.metrics.port("evaluator") == 9102
    assert config.metrics.port("targeter") is None

    overridden = config.with_metrics_port("targeter", 0)
    assert overridden.metrics.ports == {"evaluator": 9102, "targeter": 0}
    assert overridden.metrics.listen == "0.0.0.0"
    assert config.metrics.port("targeter") is None


def test_bad_metrics_config_fails_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prots"):
        load_config(_write(tmp_path, metrics={"prots": {"evaluator": 1}}))
    with pytest.raises(ConfigError, match=r"ports\.evaluator"):
        load_config(_write(tmp_path, metrics={"ports": {"evaluator": 70000}}))
    with pytest.raises(ConfigError, match="metrics"):
        load_config(_write(tmp_path, metrics={"ports": {"evaluator": "fast"}}))


def test_metrics_port_option_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["run", "evaluator", "-c", str(path), "--metrics-port", "70000"]) == 2
    assert "--metrics-port" in capsys.readouterr().err


# --- LoopHistogram, LoopGauge: set without locks, exposed as prometheus_client's own ----


def _exposed(kind: str, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    """/metrics of prometheus_client's metric and of ours, after the same updates."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # the same _created
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    if kind == "histogram":
        plain = Histogram("x_seconds", "x.", buckets=LATENCY_BUCKETS, registry=theirs)
        loop = LoopHistogram("x_seconds", "x.", buckets=LATENCY_BUCKETS, registry=ours)
        values = [0.0, 0.0005, 0.0004999, 0.0006, 1.0, 4.9, 5.0, 5.1, 1e9, -1.0]
        for value in [*values, math.inf, *(random.Random(3).random() for _ in range(500))]:
            plain.observe(value)
            loop.observe(value)
    else:
        gauge = Gauge("health", "h.", ["server"], registry=theirs)
        loop_gauge = LoopGauge("health", "h.", ["server"], registry=ours)
        children = [(gauge.labels(s), loop_gauge.labels(s)) for s in ("B", "A", "C")]
        for i, (a, b) in enumerate(children):
            for value in (0.5, i, 0.875 * i, -2):
                a.set(value)
                b.set(value)
    return generate_latest(theirs), generate_latest(ours)


@pytest.mark.parametrize("kind", ["histogram", "gauge"])
def test_loop_metrics_expose_what_prometheus_client_exposes(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs, ours = _exposed(kind, monkeypatch)
    assert ours == theirs


def test_a_loop_histogram_counts_nan_in_its_sum_only_as_prometheus_client_does() -> None:
    plain = Histogram("y", "y.", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    loop = LoopHistogram("y", "y.", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for h in (plain, loop):
        h.observe(math.nan)
        h.observe(0.001)
    samples = [
        [(s.name, s.labels, s.value) for s in next(iter(h.collect())).samples]
        for h in (plain, loop)
    ]
    counts = [[v for n, _, v in each if n.endswith("_count")] for each in samples]
    assert counts == [[1.0], [1.0]]
    assert all(math.isnan(v) for each in samples for n, _, v in each if n.endswith("_sum"))
    with pytest.raises(ValueError):
        LoopHistogram("z", "z.", labelnames=["a"], registry=CollectorRegistry())
