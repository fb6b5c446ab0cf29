"""The readmission benchmark runs in quick mode and writes its results (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benchruns import processes_mentioning, run_bench


@pytest.mark.nats
@pytest.mark.timeout(150)
def test_quick_mode_readmits_every_client_in_both_runs(tmp_path: Path) -> None:
    done, scratch = run_bench("readmission", ["--quick"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "readmission.json").read_text())
    assert results["benchmark"] == "readmission"
    assert set(results) >= {"machine", "parameters", "samples", "summary", "goals"}
    params = results["parameters"]
    assert params["quick"] is True and params["clients"] > 0 and params["wave_interval_s"] > 0
    assert set(params["settings"]) == {"fixed", "adaptive"}
    assert params["rooms"]["roomy"]["full_load_threads"] > 0  # quick: the roomy farm only
    assert set(results["summary"]) == set(results["samples"]) == {"roomy"}
    summary, samples = results["summary"]["roomy"], results["samples"]["roomy"]
    for sizing in ("fixed", "adaptive"):
        run = summary[sizing]
        clients = run["clients"]
        assert run["sizing"] == sizing and clients == params["clients"]
        # the incident opened, recovered and closed, and every client came home in a wave
        assert run["incident_states"][:3] == ["opened", "recovering", "closed"]
        assert run["every_client_home"] is True
        assert run["readmitted_in_waves"] == clients == sum(run["wave_sizes"])
        assert run["home_after_recovering"] == clients
        assert run["waves"] == len(run["wave_sizes"]) >= 1
        assert run["time_home_s"] is not None and run["time_closed_s"] is not None
        assert 0 < run["lowest_health_to_end"] <= run["lowest_health"] <= 1
        assert run["relapses"] >= 0 and run["below_failover_threshold"] >= 0
        assert run["unclean_stops"] == []
        raw = samples[sizing]
        assert [len(w["clients"]) for w in raw["waves"]] == run["wave_sizes"]
        assert all(w["reason"] for w in raw["waves"])
        assert raw["health"] and len(raw["home_at_s"]) == clients
    # fixed waves are of the default wave_size; the adaptive first wave is its small one
    defaults = params["readmitter_defaults"]
    fixed = summary["fixed"]["wave_sizes"]
    assert all(size == defaults["wave_size"] for size in fixed[:-1])
    assert summary["adaptive"]["wave_sizes"][0] == defaults["first_wave_size"]
    assert len(results["goals"]) == 2 and done.stdout.count("goal ") == 2
    for goal in results["goals"]:
        assert goal["name"] and goal["target"] and isinstance(goal["met"], bool)
        assert isinstance(goal["value"], int | float)
    assert not processes_mentioning(scratch)
