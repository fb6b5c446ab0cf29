"""`aaa-failover plan --dry-run`: the plan a situation would produce, explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.launch.cli import main
from services.launch.farm import farm_dict, write_config


def _config(tmp_path: Path) -> Path:
    data = farm_dict(tmp_path, bus_url=None, clients=12, capacity_rps=1000.0)
    data["targeter"] = {"max_share": 1.0, "gain": 10.0}
    return write_config(tmp_path, data)


def test_dry_run_prints_who_moves_where_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    args = ["plan", "--dry-run", "-c", str(path), "--server", "A", "--health", "0.1"]
    assert main([*args, "--server-health", "B=0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("plan for A: ")
    moves = [line for line in out if line.startswith("  move ")]
    assert len(moves) == 4
    assert all("chosen:" in line and "room" in line for line in moves)
    # C has more room than B, so it takes more of A's clients
    to_c = sum(1 for line in moves if "-> C" in line)
    assert to_c > len(moves) - to_c


def test_dry_run_json_is_a_failover_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    args = ["plan", "--dry-run", "-c", str(path), "--server", "A", "--health", "0.1", "--json"]
    assert main([*args, "--server-health", "B=0.1", "--server-health", "C=0.1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["type"] == "failover.plan"
    assert plan["moves"] == [] and len(plan["unplaced"]) == 4  # B and C are in incidents


def test_dry_run_refuses_unknown_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    assert main(["plan", "-c", str(path), "--server", "Z", "--health", "0.1"]) == 2
    assert "Z" in capsys.readouterr().err
