"""`aaa-failover up` starts the embedded bus and every service, and stops them all."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from services.launch.farm import write_farm
from services.runtime import busfile
from tests.conftest import FarmFactory
from tests.support.helpers import watch_stderr


@contextmanager
def running_up(*args: str) -> Iterator[str]:
    """`aaa-failover up ARGS` from all services started to a clean SIGTERM exit;
    yields the command lines of its child processes, joined."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.launch.cli", "up", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, started, reader = watch_stderr(proc, lambda line: "all services started" in line)
    children: list[psutil.Process] = []
    try:
        assert started.wait(60), "".join(lines[-30:])
        assert proc.poll() is None, "".join(lines[-30:])
        children = psutil.Process(proc.pid).children(recursive=True)
        yield " ".join(" ".join(c.cmdline()) for c in children)
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


@pytest.mark.nats
def test_up_runs_every_service_on_an_embedded_bus_and_stops_cleanly(tmp_path: Path) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=2)
    with running_up("-c", str(path)) as names:
        for service in ("evaluator", "targeter", "notifier", "readmitter", "collector", "agent"):
            assert f"run {service}" in names
        assert "nats-server" in names
        assert names.count("run aaa") == 3


def test_up_in_a_sandbox_runs_the_decision_services_alone(farm: FarmFactory) -> None:
    config, path = farm(clients=2)
    assert config.bus.url is not None
    with running_up("-c", str(path), "--sandbox", "sbx-up", "--bus-url", config.bus.url) as names:
        for service in ("evaluator", "targeter", "notifier", "readmitter"):
            assert f"run {service}" in names
        assert names.count("--sandbox sbx-up") == 4
        for other in ("run collector", "run agent", "run aaa", "nats-server"):
            assert other not in names


@pytest.mark.nats
def test_tools_given_only_the_config_find_the_bus_of_a_running_up(tmp_path: Path) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    bus_file = path.with_name(path.name + ".bus")
    with running_up("-c", str(path)):
        found = busfile.read(path)
        assert found is not None and bus_file.is_file()
        assert "up" in psutil.Process(found.pid).cmdline()

        tail = subprocess.Popen(
            [sys.executable, "-m", "services.launch.cli", "tail", "-c", str(path), "--server", "A"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        err, started, err_reader = watch_stderr(tail, lambda line: "tail of" in line)
        sample = threading.Event()
        out: list[str] = []

        def read_out() -> None:
            assert tail.stdout is not None
            for line in tail.stdout:
                out.append(line)
                if "metrics.A" in line and line.rstrip().endswith("[ok]"):
                    sample.set()

        out_reader = threading.Thread(target=read_out, daemon=True)
        out_reader.start()
        try:
            assert started.wait(20) and tail.poll() is None, "".join(err)
            assert found.url in "".join(err)  # it says which bus it joined
            assert sample.wait(20), "".join(out + err)  # the collector's samples of A, verified
            tail.send_signal(signal.SIGTERM)
            assert tail.wait(15) == 0, "".join(err)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.wait()
            err_reader.join(5)
            out_reader.join(5)
            for stream in (tail.stdout, tail.stderr):
                assert stream is not None
                stream.close()
        assert "refused" not in "".join(err)

        # a second `up` of the same config would run every service twice: refused
        second = subprocess.run(
            [sys.executable, "-m", "services.launch.cli", "up", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1, second.stderr
        assert f"another `aaa-failover up` (pid {found.pid}) runs" in second.stderr
        assert busfile.running_url(path) == found.url
    assert not bus_file.exists()  # removed by the clean stop
