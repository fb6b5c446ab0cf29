"""`what-if` and `report` over a real recorded incident (the demo's, tests/support/recorded.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from schemas.events import HealthReport
from services.launch.cli import main
from services.tools.recording import WindowSpec, load
from tests.support import needs
from tests.support.recorded import RecordedDemo


def _cli(demo: RecordedDemo, bus_url: str, *args: str) -> list[str]:
    return [
        "--log-level", "WARNING", *args,
        "-c", str(demo.config_path), "--bus-url", bus_url, "--incident", demo.incident_id,
    ]  # fmt: skip


def test_what_if_with_the_live_settings_decides_as_recorded(
    recorded_demo: RecordedDemo, stored_bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli(recorded_demo, stored_bus, "what-if", "--json")) == 0
    both = json.loads(capsys.readouterr().out)
    recorded, simulated = both["recorded"], both["simulated"]
    assert recorded["clients_moved"] and recorded["waves"]
    assert simulated["clients_moved"] == recorded["clients_moved"]
    assert [w["clients"] for w in simulated["waves"]] == [w["clients"] for w in recorded["waves"]]
    assert abs(simulated["onset_at"] - recorded["onset_at"]) < 0.1
    assert simulated["closed_at"] is not None


def _onset(reports: list[HealthReport], threshold: float, samples: int) -> float | None:
    """When ``samples`` reports in a row first fell below ``threshold``: an oracle
    read straight off the recorded health, independent of the simulation."""
    run = 0
    for report in reports:
        run = run + 1 if report.health < threshold else 0
        if run == samples:
            return report.time
    return None


def test_what_if_with_a_lower_failover_threshold_detects_the_onset_later_or_never(
    recorded_demo: RecordedDemo, stored_bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = recorded_demo.config.on_bus(stored_bus)
    loaded = asyncio.run(load(config, WindowSpec(incident=recorded_demo.incident_id)))
    reports = [e for e in loaded.events if isinstance(e, HealthReport) and e.server == "A"]
    samples = config.evaluator.failover_samples
    lower = config.evaluator.failover_threshold / 2
    expected = _onset(reports, lower, samples)

    args = _cli(
        recorded_demo, stored_bus, "what-if", "--set", f"evaluator.failover_threshold={lower}"
    )
    assert main([*args, "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    recorded, simulated = both["recorded"], both["simulated"]
    assert main(args) == 0
    text = capsys.readouterr().out
    if expected is None:
        assert simulated["onset_at"] is None and simulated["clients_moved"] == []
        assert f"the onset is never detected: health never stayed below {lower:g}" in text
    else:
        assert simulated["onset_at"] == pytest.approx(expected, abs=0.05)
        assert simulated["onset_at"] >= recorded["onset_at"] - 0.05
        assert "later" in text or "at the same time" in text


def test_what_if_with_more_samples_detects_the_onset_later(
    recorded_demo: RecordedDemo, stored_bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    interval = recorded_demo.config.collector.interval_s
    args = _cli(recorded_demo, stored_bus, "what-if", "--set", "evaluator.failover_samples=4")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"the onset is detected {2 * interval:.1f} s later" in out


def test_what_if_refuses_an_unknown_setting(
    recorded_demo: RecordedDemo, stored_bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli(recorded_demo, stored_bus, "what-if", "--set", "evaluator.threshold=0.1")
    assert main(args) == 2
    assert "evaluator has no field 'threshold'" in capsys.readouterr().err


def test_report_draws_the_recorded_incident(
    recorded_demo: RecordedDemo, stored_bus: str, tmp_path: Path
) -> None:
    needs.module("matplotlib", "report")
    from PIL import Image

    png = tmp_path / "incident.png"
    assert main([*_cli(recorded_demo, stored_bus, "report"), "-o", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (1200, 800)
        series = image.info["Description"]
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    for name in ("health A", "health B", "health C", "clients on A", "failover threshold"):
        assert name in series
    assert colours is not None and len(colours) > 100
    html = tmp_path / "incident.html"
    assert main([*_cli(recorded_demo, stored_bus, "report"), "-o", str(html)]) == 0
    text = html.read_text()
    assert "data:image/png;base64," in text and recorded_demo.incident_id[:8] in text


def test_report_of_an_unknown_incident_is_a_clear_error(
    recorded_demo: RecordedDemo, stored_bus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli(recorded_demo, stored_bus, "report")
    args[args.index("--incident") + 1] = "f" * 32
    assert main([*args, "-o", str(tmp_path / "x.png")]) == 2
    assert "no incident 'ffff" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
