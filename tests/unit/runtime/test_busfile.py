"""The bus file: where a running `up` has its bus, and who may trust it."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from services.runtime import busfile
from services.runtime.busfile import BusFile


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "farm.toml"
    path.write_text("[bus]\n")
    return path


@pytest.fixture
def other() -> Iterator[psutil.Process]:
    """Another process that keeps running until the test ends."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield psutil.Process(child.pid)
    finally:
        child.kill()
        child.wait(10)


def _plant(config_path: Path, url: str, pid: int, started: float) -> Path:
    """A bus file as another process would have written it."""
    path = busfile.path_for(config_path)
    path.write_bytes(msgspec.json.encode(BusFile(url=url, pid=pid, started=started)))
    return path


def test_the_file_is_beside_the_config_and_named_after_it(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert busfile.path_for(config_path) == config_path.with_name("farm.toml.bus")
    monkeypatch.chdir(config_path.parent)
    assert busfile.path_for("farm.toml") == config_path.with_name("farm.toml.bus")


def test_what_up_writes_is_read_back_and_removed(config_path: Path) -> None:
    assert busfile.read(config_path) is None
    path = busfile.write(config_path, "nats://127.0.0.1:40001")
    assert path == config_path.with_name("farm.toml.bus")
    # written whole through a temporary file: nothing else is left beside the config
    assert sorted(p.name for p in config_path.parent.iterdir()) == ["farm.toml", "farm.toml.bus"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    found = busfile.read(config_path)
    assert found is not None
    assert (found.url, found.pid) == ("nats://127.0.0.1:40001", os.getpid())
    assert busfile.running_url(config_path) == "nats://127.0.0.1:40001"

    busfile.write(config_path, "nats://127.0.0.1:40002")  # a restart overwrites it
    assert busfile.running_url(config_path) == "nats://127.0.0.1:40002"
    busfile.remove(config_path)
    assert not path.exists()
    busfile.remove(config_path)  # already gone: nothing to do
    assert busfile.running_url(config_path) is None


def test_a_file_from_an_up_that_died_is_ignored_and_overwritten(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.runtime.busfile")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(dead.pid).create_time()
    dead.wait(10)
    path = _plant(config_path, "nats://127.0.0.1:40003", dead.pid, started)
    assert busfile.read(config_path) is None
    assert f"the `up` that wrote it (pid {dead.pid}) is no longer running" in caplog.text
    assert busfile.choose(config_path, given=None, configured=None) is None

    busfile.write(config_path, "nats://127.0.0.1:40004")
    assert busfile.running_url(config_path) == "nats://127.0.0.1:40004"
    assert path.exists()


def test_a_pid_reused_by_another_process_is_not_the_up_that_wrote_it(
    config_path: Path, other: psutil.Process
) -> None:
    _plant(config_path, "nats://127.0.0.1:40005", other.pid, other.create_time())
    assert busfile.running_url(config_path) == "nats://127.0.0.1:40005"
    # the same pid, started at another time: not the writer
    _plant(config_path, "nats://127.0.0.1:40005", other.pid, other.create_time() - 3600)
    assert busfile.running_url(config_path) is None


def test_a_file_that_is_not_a_bus_file_is_ignored_with_a_warning(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = busfile.path_for(config_path)
    for junk in (b"", b"nats://127.0.0.1:4222\n", b'{"url": "nats://x:1"}'):
        path.write_bytes(junk)
        caplog.clear()
        assert busfile.read(config_path) is None
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert f"ignoring the bus file {path}" in caplog.text


def test_only_the_writer_removes_the_file(config_path: Path, other: psutil.Process) -> None:
    path = _plant(config_path, "nats://127.0.0.1:40006", other.pid, other.create_time())
    busfile.remove(config_path)
    assert path.exists()
    assert busfile.running_url(config_path) == "nats://127.0.0.1:40006"


def test_the_bus_a_command_joins_in_order(config_path: Path) -> None:
    def choose(given: str | None, configured: str | None) -> str | None:
        return busfile.choose(config_path, given=given, configured=configured)

    assert choose(None, None) is None  # the caller's default
    busfile.write(config_path, "nats://127.0.0.1:40007")
    assert choose(None, None) == "nats://127.0.0.1:40007"
    assert choose(None, "nats://configured:4222") == "nats://configured:4222"
    assert choose("nats://given:4222", "nats://configured:4222") == "nats://given:4222"
    assert choose("nats://given:4222", None) == "nats://given:4222"
