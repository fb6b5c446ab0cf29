"""The cost-of-watching benchmark runs in its quick mode and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.nats
@pytest.mark.timeout(90)
def test_watching_quick_writes_its_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "watching.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "watching.json").read_text())
    assert results["benchmark"] == "watching" and results["machine"]["commit"]
    assert results["samples"]["watching"]["samples"] > 0
    assert results["summary"]["core_share"] > 0
    assert [g["name"] for g in results["goals"]] == ["collector CPU at 1 Hz, one server"]
