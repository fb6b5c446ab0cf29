"""A recorded incident: `aaa-failover demo --keep` run once per session.

The demo runs a whole farm (embedded nats-server, three reference servers,
every service, twenty clients) through one overload incident of server A and
keeps its folder, stream store included. Tests of the demo read its output;
tests of replay, what-if and report read its recording.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from services.runtime.config import Config, load_config
from services.runtime.natsserver import EmbeddedNats


@dataclass(frozen=True)
class RecordedDemo:
    """The demo's folder, its output, its config and the incident it recorded."""

    directory: Path
    config_path: Path
    returncode: int
    stdout: str
    stderr: str
    leftovers: list[int]

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def incident_id(self) -> str:
        match = re.search(r"incident id: ([0-9a-f]{32})", self.stdout)
        assert match, self.stdout[-2000:]
        return match.group(1)


@pytest.fixture(scope="session")
def recorded_demo(tmp_path_factory: pytest.TempPathFactory) -> RecordedDemo:
    directory = tmp_path_factory.mktemp("recorded") / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "services.launch.cli", "demo", "--keep", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(directory) in part for part in (p.info["cmdline"] or []))
    ]
    return RecordedDemo(
        directory,
        directory / "config.toml",
        result.returncode,
        result.stdout,
        result.stderr,
        leftovers,
    )


@pytest.fixture
def stored_bus(recorded_demo: RecordedDemo) -> Iterator[str]:
    """A nats-server over the demo's stored stream, for one test; its URL."""
    assert recorded_demo.returncode == 0, recorded_demo.stderr[-2000:]
    with EmbeddedNats(recorded_demo.directory / ".nats") as server:
        yield server.url
