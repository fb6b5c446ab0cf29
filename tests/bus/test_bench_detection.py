"""The detection-latency benchmark runs in quick mode and writes its results (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.nats
@pytest.mark.timeout(90)
def test_detection_quick_writes_its_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "detection.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "detection.json").read_text())
    assert results["benchmark"] == "detection" and results["machine"]["commit"]
    params = results["parameters"]
    assert params["quick"] is True and params["hops"] == 4
    assert all(size > 0 for size in params["payload_bytes"].values())
    for path in ("detection", "relay"):
        samples = results["samples"][path]
        assert len(samples) == params["incidents"] == 30
        # each hop is seen after the one before it, and the total is the last hop
        for s in samples:
            assert 0 < s["incident"] <= s["plan"] <= s["notice"] <= s["ack"] == s["total"]
        summary = results["summary"][path]
        assert summary["n"] == 30 and 0 < summary["median"] <= summary["p99"]
    summary = results["summary"]
    assert summary["ratio_p50"] > 0 and summary["ratio_p99"] > 0
    [goal] = results["goals"]
    assert goal["name"] == "detection p50 vs bare 4-hop relay p50" and goal["target"] == "<= 1.5x"
    assert goal["value"] == summary["ratio_p50"] and goal["met"] == (goal["value"] <= 1.5)
    assert "goal detection p50" in done.stdout
