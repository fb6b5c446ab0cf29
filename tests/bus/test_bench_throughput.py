"""The evaluator-throughput benchmark runs in quick mode and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.nats
@pytest.mark.timeout(90)
def test_throughput_quick_writes_its_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "throughput.json").read_text())
    assert results["benchmark"] == "throughput" and results["machine"]["commit"]
    params = results["parameters"]
    assert params["quick"] is True and params["samples"] == 2000
    rounds = results["samples"]
    assert sorted(r["path"] for r in rounds) == ["bare", "bare", "evaluator", "evaluator"]
    for r in rounds:
        assert r["published"] == 2000 and r["counted"] + r["missing"] == 2000
        assert r["rate"] > 0 and r["elapsed_s"] > 0
    summary = results["summary"]
    for path in ("bare", "evaluator"):
        assert 0 < summary[path]["rate_min"] <= summary[path]["rate_median"]
    assert summary["ratio"] > 0
    # every process's CPU over each round: the evaluator works in its own rounds only
    for r in rounds:
        assert set(r["cpu_s"]) == {"evaluator", "nats-server", "counter", "bench"}
    per = {path: summary[path]["cpu_us_per_message"] for path in ("bare", "evaluator")}
    assert per["evaluator"]["evaluator"] > per["bare"]["evaluator"] >= 0
    assert per["evaluator"]["nats-server"] > 0 and per["bare"]["counter"] > 0
    assert summary["evaluator"]["ceiling_rate"] > 0 and summary["ceiling_ratio"] > 0
    # the evaluator's own counters were read from its shutdown line
    bus = summary["evaluator_bus"]
    assert bus["received"] >= 2 * 2000 and bus["published"] > 0
    [goal] = results["goals"]
    assert goal["target"] == ">= 0.6x" and goal["value"] == summary["ratio"]
    assert "goal evaluator samples/s" in done.stdout
