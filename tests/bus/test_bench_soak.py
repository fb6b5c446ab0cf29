"""The soak benchmark runs briefly and reports real figures (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benchruns import processes_mentioning, run_bench

SERVICES = {
    "aaa-A",
    "aaa-B",
    "aaa-C",
    "evaluator",
    "targeter",
    "notifier",
    "readmitter",
    "collector",
    "agent-1",
    "agent-2",
    "agent-3",
}


@pytest.mark.nats
@pytest.mark.timeout(150)
def test_soak_reports_memory_events_and_requests_of_each_process(tmp_path: Path) -> None:
    done, scratch = run_bench("soak", ["--duration", "12"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "soak.json").read_text())
    assert results["benchmark"] == "soak" and results["machine"]["commit"]
    assert results["parameters"]["mode"]["duration_s"] == 12
    summary = results["summary"]
    for label in ("10x", "1x"):
        run = summary[label]
        # every process of the farm was measured, more than once after the warm-up
        assert set(run["memory"]) == SERVICES | {"nats-server"}
        for name, memory in run["memory"].items():
            assert memory["samples"] > 1, name
            assert memory["warm_mib"] > 1 and memory["end_mib"] > 1, name
            assert memory["slope_mib_per_h"] is not None, name
        # every service reported its counters as it stopped, and stopped cleanly
        assert set(run["exits"]) == SERVICES and set(run["exits"].values()) == {0}
        events = run["events"]
        assert all(p["reported"] for p in events["processes"].values())
        assert events["published"] == events["heard"] > 0
        assert events["processes"]["evaluator"]["received"] > 0
        assert events["processes"]["collector"]["published"] > 0
        # requests went and came back; the stall opened an incident that closed
        assert run["requests"]["sent"] > 0 and run["requests"]["answered"] > 0
        assert run["incidents"]["stalls"] and run["incidents"]["opened"] >= 1
        assert run["incidents"]["left_open"] == 0
    # no event lost anywhere
    assert summary["lost_events"] == {"10x": 0, "1x": 0}, done.stdout
    # ten times the rate is ten times the requests, roughly, and more samples
    fast, slow = summary["10x"]["rates"], summary["1x"]["rates"]
    assert fast["access-requests"] > 3 * slow["access-requests"]
    assert fast["metrics"] > slow["metrics"]
    assert set(summary["slope_ratio"]) == SERVICES | {"nats-server"}
    assert results["goals"][0]["name"] == "no event lost at 10x"
    assert done.stdout.count("goal ") == len(results["goals"]) == 4
    assert not processes_mentioning(scratch)
