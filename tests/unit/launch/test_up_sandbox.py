"""`aaa-failover up --sandbox` refuses to start without the bus of the recording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.launch.farm import write_farm


def test_up_in_a_sandbox_needs_the_bus_of_the_recording(tmp_path: Path) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    result = subprocess.run(
        [sys.executable, "-m", "services.launch.cli", "up", "-c", str(path), "--sandbox", "sbx"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "a sandbox joins the bus that holds the recording" in result.stderr
