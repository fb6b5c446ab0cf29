"""Prometheus /metrics: the [metrics] config, its checks and its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.launch.cli import main
from services.launch.farm import farm_dict, write_config
from services.runtime.config import ConfigError, MetricsConfig, load_config


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
