"""The incident benchmark runs in quick mode and writes its results (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "incident.py"


@pytest.mark.nats
@pytest.mark.timeout(120)
def test_quick_mode_writes_the_results_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "response_window_s=" in done.stdout  # the client-side defaults are printed
    results = json.loads((tmp_path / "incident.json").read_text())
    assert results["benchmark"] == "incident"
    assert set(results) >= {"machine", "parameters", "samples", "summary", "goals"}
    params = results["parameters"]
    assert params["quick"] is True and params["clients"] > 0 and params["rate"] > 0
    assert set(params["proxy_defaults"]) == {
        "response_window_s",
        "check_interval_s",
        "check_timeout_s",
        "answers_to_alive",
    }
    for name in ("client-side", "aaa-failover"):
        run = results["summary"][name]
        assert run["sent"] > 0 and run["sent_during_overload"] > 0
        assert 0 <= run["lost"] <= run["sent"]
        assert run["p99_incident_ms"] > 0 and run["p50_ms"] > 0
        assert run["overload_s"] > 0 and run["duration_s"] > run["overload_s"]
        assert run["a_samples"] > 0
        assert run["reoverloads_sampled"] >= 0 and run["incident_relapses"] >= 0
    # only the aaa-failover run has an incident on the bus
    assert results["summary"]["client-side"]["incident_states"] == []
    # ... and it recovers once the overload is over (it did not while the collector read the
    # benchmark's own Status-Servers as requests in flight)
    assert results["summary"]["aaa-failover"]["incident_states"][:2] == ["opened", "recovering"]
    assert len(results["goals"]) == 3
    for goal in results["goals"]:
        assert goal["name"] and goal["target"] and isinstance(goal["met"], bool)
        assert isinstance(goal["value"], int | float)
    assert done.stdout.count("goal ") == 3
