"""`aaa-failover demo` runs to its summary, exits 0 and leaves no process behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest


@pytest.mark.timeout(150)
def test_demo_runs_to_its_summary_and_cleans_up(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--keep", str(demo_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "incident opened" in out and "plan: move" in out
    assert "clients moved: 7 of 7 targeted" in out
    assert "readmit wave 1" in out and "(final)" in out
    assert "summary" in out
    assert "clients on their home server at the end: 20 of 20" in out
    assert "incident closed: yes" in out
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(demo_dir) in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
