"""`what-if` and `report` over a real recorded incident (the demo's, tests/recorded.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from services.cli import main
from tests.recorded import RecordedDemo


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


def test_what_if_with_a_lower_failover_threshold_never_detects_the_onset(
    recorded_demo: RecordedDemo, stored_bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's overload holds A's health at 1/8: a threshold below it never fires."""
    args = _cli(recorded_demo, stored_bus, "what-if", "--set", "evaluator.failover_threshold=0.1")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the onset is never detected: health never stayed below 0.1" in out
    assert "No client moves (7 clients in the recording)" in out


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
