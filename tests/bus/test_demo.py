"""`aaa-failover demo` runs to its summary, exits 0 and leaves no process behind."""

from __future__ import annotations

from tests.support.recorded import RecordedDemo


def test_demo_runs_to_its_summary_and_cleans_up(recorded_demo: RecordedDemo) -> None:
    demo = recorded_demo
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "incident opened" in out and "plan: move" in out
    assert "clients moved: 7 of 7 targeted" in out
    assert "readmit wave 1" in out and "(final)" in out
    assert "summary" in out
    assert "clients on their home server at the end: 20 of 20" in out
    assert "incident closed: yes" in out
    assert f"aaa-failover report -c {demo.config_path} --incident {demo.incident_id}" in out
    assert demo.leftovers == []
