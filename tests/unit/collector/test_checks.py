"""Availability checks against real listeners, paths and processes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from services.collector.checks import run_check, run_checks
from services.launch.farm import free_udp_port
from services.runtime.config import (
    BusConfig,
    CommandCheck,
    Config,
    ProcessCheck,
    ProcessMatch,
    RadiusCheck,
    Secret,
    ServiceCheckConfig,
    TcpCheck,
    UnixCheck,
    WritableCheck,
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A config with no servers whose relative paths resolve against ``tmp_path``."""
    return Config(bus=BusConfig(), base_dir=str(tmp_path))


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


@pytest.fixture
async def tcp_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_hold, "127.0.0.1", 0)
    async with server:
        port: int = server.sockets[0].getsockname()[1]
        yield port


def _closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def test_tcp_ok_against_a_listener(config: Config, tcp_port: int) -> None:
    result = await run_check(TcpCheck(name="db", port=tcp_port, kind="dependent"), config)
    assert result.ok, result.detail
    assert (result.name, result.kind, result.check) == ("db", "dependent", "tcp")
    assert result.latency_s is not None and 0 <= result.latency_s < 1


async def test_tcp_fails_on_a_closed_port(config: Config) -> None:
    port = _closed_tcp_port()
    result = await run_check(TcpCheck(name="db", port=port), config)
    assert not result.ok
    assert result.detail == f"127.0.0.1:{port}: connection refused"
    assert result.kind == "mandatory" and result.check == "tcp"


async def test_unix_ok_and_failed(config: Config, tmp_path: Path) -> None:
    server = await asyncio.start_unix_server(_hold, str(tmp_path / "ldap.sock"))
    async with server:
        result = await run_check(UnixCheck(name="ldap", path="ldap.sock"), config)
        assert result.ok, result.detail
        assert result.check == "unix"

    missing = await run_check(UnixCheck(name="ldap", path="nothing.sock"), config)
    assert not missing.ok
    assert missing.detail == f"{tmp_path / 'nothing.sock'}: no such file or directory"

    (tmp_path / "plain").write_text("not a socket")
    plain = await run_check(UnixCheck(name="ldap", path="plain"), config)
    assert not plain.ok
    assert plain.detail.endswith("connection refused")


async def test_writable_ok_leaves_nothing_behind(config: Config, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    result = await run_check(WritableCheck(name="spool", path="spool"), config)
    assert result.ok, result.detail
    assert result.check == "writable"
    assert list(spool.iterdir()) == []


async def test_writable_fails_on_a_missing_dir_and_on_a_file(
    config: Config, tmp_path: Path
) -> None:
    missing = await run_check(WritableCheck(name="spool", path="gone"), config)
    assert not missing.ok
    assert missing.detail == f"{tmp_path / 'gone'} does not exist"

    (tmp_path / "file").write_text("x")
    plain = await run_check(WritableCheck(name="spool", path=str(tmp_path / "file")), config)
    assert not plain.ok
    assert plain.detail == f"{tmp_path / 'file'} is not a directory"


async def test_command_exit_status(config: Config) -> None:
    ok = await run_check(CommandCheck(name="t", command=["true"]), config)
    assert ok.ok and ok.check == "command" and ok.detail == ""

    failed = await run_check(CommandCheck(name="f", command=["false"]), config)
    assert not failed.ok
    assert failed.detail == "exit status 1"

    script = "echo first; echo 'queue is full' >&2; exit 3"
    noisy = await run_check(CommandCheck(name="n", command=["sh", "-c", script]), config)
    assert not noisy.ok
    assert noisy.detail == "exit status 3: queue is full"

    absent = await run_check(CommandCheck(name="a", command=["/nonexistent/check"]), config)
    assert not absent.ok
    assert absent.detail == "cannot run /nonexistent/check: no such file or directory"


async def test_command_timeout_kills_the_child(config: Config) -> None:
    before = _descendants()
    start = time.monotonic()
    result = await run_check(
        CommandCheck(name="slow", command=["sleep", "5"], timeout_s=0.2), config
    )
    elapsed = time.monotonic() - start
    assert not result.ok
    assert result.detail == "timed out after 0.2s"
    assert elapsed < 0.8
    assert result.latency_s is not None and 0.2 <= result.latency_s < 0.8
    assert _descendants() - before == set()


async def test_command_timeout_kills_its_descendants_too(config: Config, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 5 & echo $! > {pid_file}; wait"
    start = time.monotonic()
    result = await run_check(
        CommandCheck(name="slow", command=["sh", "-c", script], timeout_s=0.5), config
    )
    assert not result.ok and result.detail == "timed out after 0.5s"
    assert time.monotonic() - start < 1.5
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while True:
        try:
            gone = psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
        if gone:
            break
        assert time.monotonic() < deadline, f"pid {grandchild} still running"
        await asyncio.sleep(0.01)


async def test_process_ok_for_own_pid_file_and_failed_for_missing(
    config: Config, tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "self.pid").write_text(f"{os.getpid()}\n")
    result = await run_check(
        ProcessCheck(name="self", match=ProcessMatch(pid_file="run/self.pid")), config
    )
    assert result.ok, result.detail
    assert result.check == "process" and result.detail == f"pid {os.getpid()}"

    missing = await run_check(
        ProcessCheck(name="gone", match=ProcessMatch(pid_file="run/gone.pid")), config
    )
    assert not missing.ok
    assert missing.detail == f"pid file {tmp_path / 'run' / 'gone.pid'} does not exist"

    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    (tmp_path / "run" / "dead.pid").write_text(f"{dead.pid}\n")
    stale = await run_check(
        ProcessCheck(name="dead", match=ProcessMatch(pid_file="run/dead.pid")), config
    )
    assert not stale.ok
    assert "is not running" in stale.detail


async def test_a_bad_secret_is_a_failed_check(config: Config, tmp_path: Path) -> None:
    missing = await run_check(
        RadiusCheck(name="radius", port=1812, secret=Secret(file="secrets/none")), config
    )
    assert not missing.ok
    assert missing.detail.startswith(f"secret: cannot read {tmp_path / 'secrets' / 'none'}")

    (tmp_path / "empty").write_text("\n")
    empty = await run_check(
        RadiusCheck(name="radius", port=1812, secret=Secret(file="empty")), config
    )
    assert not empty.ok
    assert empty.detail == f"secret: {tmp_path / 'empty'} is empty"

    unset = await run_check(
        RadiusCheck(name="radius", port=1812, secret=Secret(env="AAA_CHECKS_TEST_UNSET")),
        config,
    )
    assert not unset.ok
    assert unset.detail == "secret: environment variable AAA_CHECKS_TEST_UNSET is not set"


async def test_run_checks_runs_concurrently_in_order(config: Config) -> None:
    udp = free_udp_port("127.0.0.1")
    (config.path("secret")).write_text("s3cret\n")
    specs: list[ServiceCheckConfig] = [
        CommandCheck(name="first", command=["sleep", "5"], timeout_s=0.4),
        RadiusCheck(name="second", port=udp, secret=Secret(file="secret"), timeout_s=0.4),
        CommandCheck(name="third", command=["sleep", "0.35"], timeout_s=2),
    ]
    start = time.monotonic()
    results = await run_checks(specs, config)
    elapsed = time.monotonic() - start
    assert [r.name for r in results] == ["first", "second", "third"]
    assert [r.ok for r in results] == [False, False, True]
    assert [r.check for r in results] == ["command", "radius", "command"]
    assert 0.35 <= elapsed < 0.8, elapsed
    assert await run_checks([], config) == []
