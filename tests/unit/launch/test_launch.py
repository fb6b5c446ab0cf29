"""The registry of services: what `up` starts for a config, in which order, and how."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.launch import registry
from services.launch.farm import write_farm


def test_up_starts_a_server_each_then_the_deciders_the_collector_and_the_agent(
    tmp_path: Path,
) -> None:
    config, _ = write_farm(tmp_path, bus_url="nats://127.0.0.1:4222", clients=2)
    plan = registry.plan(config)
    assert [p.name for p in plan] == [
        "aaa-A", "aaa-B", "aaa-C",
        "evaluator", "targeter", "notifier", "readmitter", "collector", "agent",
    ]  # fmt: skip
    assert plan[0].args == ["--only", "A"]
    assert all(p.args == [] for p in plan[3:])


def test_without_clients_no_agent_and_a_sandbox_runs_the_deciders_alone(tmp_path: Path) -> None:
    config, _ = write_farm(tmp_path, bus_url="nats://127.0.0.1:4222", clients=0)
    assert "agent" not in [p.service for p in registry.plan(config)]
    sandbox = registry.plan(config.as_sandbox("sbx"))
    assert [p.service for p in sandbox] == list(registry.SANDBOX)
    assert all(p.args == ["--sandbox", "sbx"] for p in sandbox)


def test_a_run_command_and_an_unknown_service() -> None:
    argv = registry.run_argv("agent", Path("farm.toml"), bus_url="nats://x", args=["--only", "n"])
    assert argv == [
        sys.executable, "-m", "services.launch.cli", "run", "agent",
        "-c", "farm.toml", "--bus-url", "nats://x", "--only", "n",
    ]  # fmt: skip
    assert registry.service("evaluator").entry().__module__ == "services.evaluator.service"
    with pytest.raises(KeyError):
        registry.service("nope")


def test_up_runs_an_agent_per_agent_user_of_the_bus(tmp_path: Path) -> None:
    agents = {"site-1": ["nas-01"], "site-2": ["nas-02", "nas-03"]}
    config, _ = write_farm(
        tmp_path,
        bus_url="nats://127.0.0.1:4222",
        clients=3,
        bus_auth={"dir": "nats", "agents": agents},
    )
    agent_processes = [p for p in registry.plan(config) if p.service == "agent"]
    assert agent_processes == [
        registry.Process("site-1", "agent", ["--only", "nas-01"]),
        registry.Process("site-2", "agent", ["--only", "nas-02", "--only", "nas-03"]),
    ]
