"""The proxy benchmark runs in quick mode and writes its results (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "proxy.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_proxy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.nats
def test_quick_mode_writes_the_results_json(tmp_path: Path) -> None:
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "proxy.json").read_text())
    assert results["benchmark"] == "proxy"
    assert set(results) >= {"machine", "parameters", "samples", "summary"}
    assert results["machine"]["python"] and results["machine"]["platform"]
    params = results["parameters"]
    assert params["quick"] is True and params["rounds"] == 2 and params["requests"] == 200
    assert params["concurrency"] > 0 and params["service_time_ms"] >= 0
    for path in ("direct", "proxied"):
        samples = results["samples"][path]
        assert len(samples) == params["rounds"]
        for sample in samples:
            # every request of every batch was answered, and accepted
            assert (sample["accepted"], sample["other"], sample["lost"]) == (200, 0, 0)
            assert sample["rps"] > 0 and 0 < sample["p50_ms"] <= sample["p99_ms"]
        summary = results["summary"][path]
        assert summary["rps_median"] > 0 and 0 < summary["p50_ms"] <= summary["p99_ms"]
        assert summary["accepted"] == params["rounds"] * params["requests"]
    summary = results["summary"]
    for ratio in ("ratio_rps", "ratio_p50", "ratio_p99"):
        assert summary[ratio] > 0
