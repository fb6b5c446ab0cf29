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


def test_the_demo_runs_on_a_secured_bus_that_refuses_its_services_nothing(
    recorded_demo: RecordedDemo,
) -> None:
    """The demo's embedded bus has a user per service with the exact permissions of its
    prefix, and TLS: a whole incident runs on it and its server logs no violation."""
    demo = recorded_demo
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Violation" not in demo.stdout + demo.stderr
    logs = list((demo.directory / "logs").glob("*.log"))
    assert logs
    for log in logs:
        assert "violation" not in log.read_text().lower(), log.name
    nats = demo.config_path.parent / ".nats"
    assert {"collector", "agent", "harness"} <= {p.name for p in (nats / "auth").iterdir()}
    assert (nats / "tls" / "ca.pem").is_file()
    assert not (nats / "nats-server.conf").exists()
