"""The fan-out benchmark runs in quick mode and writes its results (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fanout.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fanout", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.nats
def test_quick_mode_writes_the_results_json(tmp_path: Path) -> None:
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "fanout.json").read_text())
    assert results["benchmark"] == "fanout"
    assert set(results) >= {"machine", "parameters", "samples", "summary", "goals"}
    params = results["parameters"]
    assert params["quick"] is True
    sizes = [str(n) for n in params["sizes"]]
    assert sizes and max(params["sizes"]) <= 1_000
    for kind in ("notices", "raw"):
        assert sorted(results["samples"][kind]) == sorted(sizes)
        for size in sizes:
            values = results["samples"][kind][size]
            assert len(values) == params["repeats"]
            assert all(v > 0 for v in values)
    for size in sizes:
        row = results["summary"]["sizes"][size]
        assert row["notices"]["median"] > 0 and row["raw"]["median"] > 0
        assert row["ratio_median"] > 0 and row["store_s"] > 0
        # each process's share of a core: the notifier works in the notices rounds only,
        # the raw publisher in the raw ones
        busy = row["cores_busy"]
        assert busy["notices"]["notifier"] > busy["raw"]["notifier"] >= 0
        assert busy["raw"]["raw publisher"] > busy["notices"]["raw publisher"] >= 0
    assert len(results["goals"]) == 2
    for goal in results["goals"]:
        assert set(goal) == {"name", "target", "value", "met"}
        assert goal["value"] > 0 and isinstance(goal["met"], bool)
