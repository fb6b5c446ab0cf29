"""The growth benchmark runs in quick mode, writes its points and both plots (no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from tests.support import needs

BENCH = Path(__file__).resolve().parents[3] / "bench" / "growth.py"
PNG = b"\x89PNG\r\n\x1a\n"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_growth", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_slope_of_linear_and_quadratic_growth() -> None:
    bench = load_bench()
    assert abs(bench.slope([(10, 1.0), (100, 10.0), (1000, 100.0)]) - 1.0) < 1e-9
    assert abs(bench.slope([(10, 1.0), (100, 100.0)]) - 2.0) < 1e-9


def test_quick_mode_writes_points_and_plots(tmp_path: Path) -> None:
    needs.module("matplotlib", "bench")
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "growth.json").read_text())
    assert results["benchmark"] == "growth"
    assert set(results) >= {"machine", "parameters", "samples", "summary", "goals"}
    params = results["parameters"]
    assert params["quick"] is True
    for name, sizes in (
        ("fanout", params["fanout_sizes"]),
        ("planner", params["planner_sizes"]),
    ):
        summary = results["summary"][name]
        for series in ("subject", "floor", "ratio"):
            points = summary[series]
            assert [p[0] for p in points] == sizes
            assert all(p[1] > 0 for p in points)
        png = tmp_path / results["summary"]["plots"][name]
        assert png.name == f"growth_{name}.png"
        assert png.read_bytes().startswith(PNG)
    for kind in ("notices", "raw"):
        assert sorted(results["samples"]["fanout"][kind]) == sorted(
            str(n) for n in params["fanout_sizes"]
        )
    assert len(results["goals"]) == 3
    for goal in results["goals"]:
        assert set(goal) == {"name", "target", "value", "met"} and goal["value"] > 0
