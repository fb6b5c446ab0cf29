"""`aaa-failover up` under chaos: its nats-server killed, itself killed, and started again.

Real processes throughout: the embedded nats-server is restarted on its port and store and
every service carries on; a SIGKILLed `up` takes its children with it; the next `up` of the
config reports what the dead one left and stops it before starting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.launch.farm import write_farm
from services.runtime import busfile
from services.runtime.bus import Bus, Keyring
from services.runtime.config import load_config
from services.runtime.permissions import HARNESS
from tests.support.helpers import watch_stderr

CLI = [sys.executable, "-m", "services.launch.cli"]


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``condition`` held within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: list[str]

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def nats(self) -> psutil.Process:
        (server,) = [c for c in self.children() if "nats-server" in c.name()]
        return server

    def services(self) -> list[psutil.Process]:
        return [c for c in self.children() if "nats-server" not in c.name()]


@contextmanager
def started_up(path: Path) -> Iterator[Up]:
    """`aaa-failover up -c PATH`, once every service has started; killed at the end, with
    whatever it left, if the test did not stop it."""
    proc = subprocess.Popen([*CLI, "up", "-c", str(path)], stderr=subprocess.PIPE, text=True)
    lines, started, reader = watch_stderr(proc, lambda line: "all services started" in line)
    children: list[psutil.Process] = []
    try:
        assert started.wait(60), "".join(lines[-30:])
        assert proc.poll() is None, "".join(lines[-30:])
        children = psutil.Process(proc.pid).children(recursive=True)
        yield Up(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:
            if child.is_running():
                child.kill()
        reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()


def stop(up: Up) -> None:
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, "".join(up.lines[-30:])


async def stored_messages(path: Path, url: str) -> int:
    """How many messages the farm's stream holds, read as the operator's harness."""
    config = load_config(path)
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(
            config.bus, Keyring.from_config(config), name="test", stack=stack, url=url,
            user=HARNESS,
        )  # fmt: skip
        info = await bus.js.stream_info(bus.subjects.stream_name())
        return int(info.state.messages)


def health_report_seen(path: Path, server: str) -> str:
    """Run `tail -c PATH --server SERVER` until it prints a verified health report of
    SERVER; return what it printed (empty when none came within the wait)."""
    tail = subprocess.Popen(
        [*CLI, "tail", "-c", str(path), "--server", server],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            out.append(line)
            if f"health.{server}" in line and line.rstrip().endswith("[ok]"):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        found = seen.wait(45)
    finally:
        tail.send_signal(signal.SIGTERM)
        try:
            tail.wait(15)
        except subprocess.TimeoutExpired:
            tail.kill()
            tail.wait()
        reader.join(5)
        assert tail.stdout is not None
        tail.stdout.close()
    return "".join(out) if found else ""


def test_a_killed_nats_server_comes_back_on_its_port_and_store_and_the_services_carry_on(
    tmp_path: Path,
) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    with started_up(path) as up:
        found = busfile.read(path)
        assert found is not None
        server = up.nats()
        argv = server.cmdline()
        services = {p.pid: " ".join(p.cmdline()) for p in up.services()}
        assert len(services) == 9
        assert health_report_seen(path, "A"), up.log[-3000:]
        before = asyncio.run(stored_messages(path, found.url))
        assert before > 0

        os.kill(server.pid, signal.SIGKILL)
        assert wait_for(lambda: "nats-server runs again" in up.log, 60), up.log[-3000:]
        again = up.nats()
        assert again.pid != server.pid
        port = found.url.rsplit(":", 1)[1]
        assert again.cmdline()[again.cmdline().index("-p") + 1] == port  # the same port
        assert again.cmdline()[again.cmdline().index("-sd") + 1] == argv[argv.index("-sd") + 1]
        assert busfile.running_url(path) == found.url  # the tools still find it

        # every service reconnects by itself: none exited, none was restarted
        def all_reconnected() -> bool:
            return up.log.count("bus reconnected") >= len(services)

        assert wait_for(all_reconnected, 60), up.log[-3000:]
        assert {p.pid for p in up.services()} == set(services)
        assert "exited with status" not in up.log.replace("nats-server exited with status", "")
        # JetStream kept what it stored, and the farm still measures and decides
        assert asyncio.run(stored_messages(path, found.url)) >= before
        assert health_report_seen(path, "A"), up.log[-3000:]
        stop(up)
    assert "Traceback" not in up.log, up.log[-3000:]


def orphan(argv: list[str]) -> int:
    """Start ``argv`` as a process whose parent has exited (as a killed `up` leaves its
    children); its pid."""
    launcher = subprocess.run(
        ["sh", "-c", '"$@" </dev/null >/dev/null 2>&1 & echo $!', "sh", *argv],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(launcher.stdout)


def test_a_killed_up_takes_its_children_and_the_next_up_clears_what_is_left(
    tmp_path: Path,
) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    with started_up(path) as first:
        found = busfile.read(path)
        assert found is not None and found.pid == first.proc.pid
        children = [c.pid for c in first.children()]
        assert len(children) == 10  # nats-server and nine services
        first.proc.kill()
        first.proc.wait()
        assert wait_for(lambda: all(gone(pid) for pid in children), 30), [
            pid for pid in children if not gone(pid)
        ]

    # what a killed `up` on another system, without PR_SET_PDEATHSIG, would leave: a service
    # of the config, still running, its parent gone
    left = orphan([*CLI, "run", "collector", "-c", str(path), "--bus-url", found.url])
    try:
        assert wait_for(lambda: psutil.Process(left).ppid() != os.getpid(), 10)
        with started_up(path) as second:
            log = second.log
            assert f"the `aaa-failover up` (pid {found.pid}) that last ran" in log, log[-3000:]
            assert f"stopping pid {left}, left running by a dead `aaa-failover up`" in log
            assert gone(left)
            now = busfile.read(path)
            assert now is not None and now.pid == second.proc.pid
            stop(second)
    finally:
        if not gone(left):
            os.kill(left, signal.SIGKILL)
