"""A benchmark run as its own process, its farms in a scratch folder of the test's, and
the processes it may have left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def run_bench(
    name: str, args: list[str], out: Path, *, timeout_s: float = 140
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``bench/<name>.py args --out out`` with ``TMPDIR`` a fresh folder under ``out``;
    its result and that folder (what it made there: its farms, its logs)."""
    scratch = out / "scratch"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done, scratch


def processes_mentioning(folder: Path) -> list[str]:
    """Command lines of processes still running with ``folder`` in them."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(folder) in line:
            found.append(line)
    return found
