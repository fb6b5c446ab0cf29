"""Helpers shared by the tests: services run in-process, a test's bus, RADIUS probes."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import pytest

from schemas.events import ClientStatus
from services.launch.registry import Entry
from services.radius import packet as radius
from services.radius.client import RadiusClient
from services.radius.packet import reply_values, status_request
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from services.runtime.lifecycle import ShutdownTrigger, signalling_started
from services.runtime.permissions import HARNESS


@asynccontextmanager
async def running(
    run: Entry, config: Config, only: list[str] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a service in-process from when it has started until the block ends."""
    stop = asyncio.Event()
    started = asyncio.Event()
    task: asyncio.Task[None] = asyncio.create_task(
        _call(run, config, stop.wait, only),
        name="service under test",
        context=signalling_started(started),
    )
    waiter = asyncio.ensure_future(started.wait())
    await asyncio.wait({waiter, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("the service stopped before it started")
    assert started.is_set(), "the service did not start within 20 s"
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _call(
    run: Entry, config: Config, trigger: ShutdownTrigger, only: list[str] | None
) -> None:
    await run(config, shutdown_trigger=trigger, only=only)


async def operator_bus(config: Config, stack: AsyncExitStack, name: str = "test") -> Bus:
    """A bus holding the config's keys, as the operator's harness (the admin user)."""
    return await Bus.connect(
        config.bus, Keyring.from_config(config), name=name, stack=stack, user=HARNESS
    )


async def status(config: Config, server_id: str, *, retries: int = 0) -> dict[str, Any]:
    """The FreeRADIUS statistics of a running server, by attribute name."""
    server = config.server(server_id)
    secret = config.read_secret(server.status_secret)
    client = await RadiusClient.open((server.ip, server.probe_port), secret)
    try:
        reply = await client.send(status_request(secret), timeout_s=0.1, retries=retries)
    finally:
        client.close()
    assert reply.code == radius.ACCESS_ACCEPT
    return reply_values(reply)


async def wait_ready(config: Config, server_id: str) -> None:
    """Wait (retransmitting Status-Server) until the server answers."""
    await status(config, server_id, retries=100)


async def wait_status(
    config: Config, server_id: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 5
) -> dict[str, Any]:
    """Probe until the server's statistics pass ``check``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = await status(config, server_id, retries=3)
        if check(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"status of {server_id} never passed: last {values}")
        await asyncio.sleep(0.01)


T = TypeVar("T")


async def next_matching(
    queue: asyncio.Queue[T], check: Callable[[T], bool], timeout_s: float = 10
) -> T:
    """The next item of ``queue`` that passes ``check``; fail after ``timeout_s`` with the last."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"nothing passed the check in {timeout_s}s; last: {last}")
        try:
            last = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            continue
        if check(last):
            return last


class Recorder:
    """Every verified event a test hears, and a way to wait on a condition of them."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = asyncio.Event()

    async def on_event(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def latest_status(self) -> dict[str, ClientStatus]:
        """Each client's last ClientStatus heard."""
        latest: dict[str, ClientStatus] = {}
        for status in self.of(ClientStatus):
            latest[status.client] = status
        return latest

    async def until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Wait until ``condition`` holds; return how long it took; fail after the timeout."""
        begin = time.monotonic()
        while not condition():
            remaining = begin + timeout_s - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        return time.monotonic() - begin


def watch_stderr(
    proc: subprocess.Popen[str], marker: Callable[[str], bool]
) -> tuple[list[str], threading.Event, threading.Thread]:
    """Read ``proc``'s stderr in a thread: the lines so far, an event set at the
    first line that passes ``marker`` (or when stderr ends), and the thread."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if marker(line):
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, seen, reader
