"""A bad config exits 2 with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.launch.cli import main
from services.launch.farm import farm_dict, write_config
from services.runtime.config import ConfigError, load_config


def _write(tmp_path: Path, **sections: object) -> Path:
    data = farm_dict(tmp_path, bus_url="nats://127.0.0.1:1", clients=2)
    data.update(sections)
    return write_config(tmp_path, data)


def _error_line(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    assert main(["run", "evaluator", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_field_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, evaluator={"failover_treshold": 0.1})
    line = _error_line(capsys, path)
    assert "failover_treshold" in line and "evaluator" in line


def test_wrong_type_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, collector={"interval_s": "fast"})
    line = _error_line(capsys, path)
    assert "$.collector.interval_s" in line


def test_failover_threshold_must_be_below_connection_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, evaluator={"failover_threshold": 0.7, "connection_threshold": 0.6})
    line = _error_line(capsys, path)
    assert "failover_threshold" in line and "connection_threshold" in line


def test_client_naming_an_unknown_server(tmp_path: Path) -> None:
    data = farm_dict(tmp_path, bus_url=None, clients=1)
    data["clients"][0]["alternates"] = ["Z"]
    with pytest.raises(ConfigError, match="unknown server 'Z'"):
        load_config(write_config(tmp_path, data))


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    data = farm_dict(tmp_path, bus_url=None, clients=1)
    config = load_config(write_config(tmp_path, data))
    (tmp_path / "secrets" / "bus.key").unlink()
    assert config.bus.key is not None
    with pytest.raises(ConfigError, match=r"bus\.key"):
        config.read_secret(config.bus.key.secret)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "collector", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_defaults_are_sane(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path))
    assert config.evaluator.failover_threshold < config.evaluator.connection_threshold
    assert config.bus.prefix == "aaa"
    assert config.server("A").reference is not None


def test_agent_status_interval_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, agent={"status_interval_s": 0})
    line = _error_line(capsys, path)
    assert "status_interval_s must be positive" in line
