"""The planner benchmark runs in quick mode and writes its results (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[3] / "bench" / "planner.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_planner", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_writes_the_results_json(tmp_path: Path) -> None:
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "planner.json").read_text())
    assert set(results) >= {"machine", "parameters", "plan", "samples", "summary"}
    assert results["machine"]["python"] and results["machine"]["platform"]
    params = results["parameters"]
    assert params["quick"] is True and params["clients"] == 2000
    assert params["policy"] == ["group", "topology"] and params["candidates"] > 0
    samples = results["samples"]
    assert len(samples["plan_s"]) == len(samples["floor_s"]) == params["repeats"]
    assert all(s > 0 for s in samples["plan_s"] + samples["floor_s"])
    summary = results["summary"]
    for name in ("plan", "floor"):
        assert summary[name]["median_s"] > 0 and summary[name]["p90_s"] > 0
    assert summary["ratio_median"] > 0 and summary["goal_ratio"] == 5.0
    assert results["plan"]["moves"] > 0 and results["plan"]["reason"].startswith("step 1:")
