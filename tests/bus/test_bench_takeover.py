"""The takeover benchmark runs once per event and reports real figures (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benchruns import processes_mentioning, run_bench

SCENARIOS = ("standby", "restart", "handover")


@pytest.mark.nats
@pytest.mark.timeout(150)
def test_takeover_quick_reports_each_gap_and_no_sample_scored_twice(tmp_path: Path) -> None:
    done, scratch = run_bench("takeover", ["--quick", "--repeats", "1"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "takeover.json").read_text())
    assert results["benchmark"] == "takeover" and results["machine"]["commit"]
    params = results["parameters"]
    assert params["quick"] is True and params["repeats"] == 1 and params["lease_s"] == [3.0, 1.0]
    assert set(results["summary"]) == set(results["samples"]) == {"3", "1"}
    for key, run in results["samples"].items():
        # one gap per event, each ended by a report after the new holder wrote its lease
        assert [g["scenario"] for g in run["gaps"]] == list(SCENARIOS)
        for gap in run["gaps"]:
            assert 0 < gap["lease_moved_s"] <= gap["gap_s"], gap
            assert gap["report_after_lease_s"] >= 0 and gap["silence_s"] > 0
            assert gap["samples_sent_in_gap"] > 0 and gap["samples_unscored"] >= 0
        standby, restart, handover = run["gaps"]
        # the lease went to the other replica, except in the restart (the same one again)
        assert standby["new_holder"] != standby["old_holder"]
        assert handover["new_holder"] != handover["old_holder"]
        assert restart["new_holder"] == restart["old_holder"]
        # the samples of a kill -9 go unscored; every clean stop exited 0
        assert standby["samples_unscored"] > 0
        assert {e["why"] for e in run["exits"]} >= {"kill -9", "handover", "end"}
        summary = results["summary"][key]
        assert summary["unclean_stops"] == []
        # samples went out and were scored, none twice, none lost outside a takeover
        assert summary["sent"] > 0 and 0 < summary["scored"] <= summary["sent"]
        assert summary["scored_twice"] == 0
        assert summary["unscored_outside_gaps"] == 0
        for scenario in SCENARIOS:
            assert summary[scenario]["n"] == 1 and summary[scenario]["median"] > 0
        assert summary["ratio_standby_restart_median"] > 0
    names = [goal["name"] for goal in results["goals"]]
    assert names[0] == "samples scored twice" and results["goals"][0]["value"] == 0
    assert len(names) == 3 and done.stdout.count("goal ") == 3
    assert not processes_mentioning(scratch)
