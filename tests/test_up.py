"""`aaa-failover up` starts the embedded bus and every service, and stops them all."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from services.farm import write_farm


def test_up_runs_every_service_on_an_embedded_bus_and_stops_cleanly(tmp_path: Path) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "-c", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "all services started" in line:
                started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    children: list[psutil.Process] = []
    try:
        assert started.wait(60), "".join(lines[-30:])
        assert proc.poll() is None, "".join(lines[-30:])
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for service in ("evaluator", "targeter", "notifier", "readmitter", "collector", "agent"):
            assert f"run {service}" in names
        assert "nats-server" in names
        assert names.count("run aaa") == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(lines[-30:])
        reader.join(5)
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:  # whatever a failed run left behind
            if child.is_running():
                child.kill()
        assert proc.stderr is not None
        proc.stderr.close()
