"""Each service starts as its own process, takes SIGTERM and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from services.launch.registry import NAMES
from services.runtime.lifecycle import says_started
from tests.conftest import FarmFactory
from tests.support.helpers import watch_stderr


@pytest.mark.parametrize("service", NAMES)
def test_service_starts_and_stops_on_sigterm(farm: FarmFactory, service: str) -> None:
    _, path = farm(clients=2)
    argv = [sys.executable, "-m", f"services.{service}", "-c", str(path)]
    if service == "aaa":
        argv += ["--only", "A"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        lines, started, _ = watch_stderr(proc, says_started)
        started.wait(20)
        assert any(" started" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
