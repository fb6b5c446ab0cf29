"""`aaa-failover up`: every service of a config as its own process, supervised.

With no bus URL in the config it first starts the embedded nats-server, on a
free port, with a user per service, each allowed only its own subjects, their
passwords in files under ``.nats/auth`` (services/launch/bususers.py), and
writes its URL to the config's bus file (``farm.toml.bus``,
services/runtime/busfile.py) so that the tools given only ``-c`` find it; the
file goes when the supervisor stops. Each service runs as
`python -m services.launch.cli run <service> -c FILE --bus-url URL` (no credential on
its command line: it reads its own password file); a service that
exits unexpectedly is restarted with back-off. On SIGINT or SIGTERM the
services are stopped in reverse start order (SIGTERM, then SIGKILL after a
grace period) and the embedded server last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from services.launch import bususers, registry
from services.runtime import busfile
from services.runtime.busauth import redact
from services.runtime.config import Config, ConfigError
from services.runtime.lifecycle import ShutdownSignals, says_started
from services.runtime.natsserver import EmbeddedNats

logger = logging.getLogger(__name__)

LogSink = Callable[[str, str], None]


class ServiceProcess:
    """One supervised service process whose stderr is read line by line."""

    def __init__(
        self, name: str, argv: list[str], *, sink: LogSink | None = None, env: dict[str, str]
    ) -> None:
        self.name = name
        self.argv = argv
        self.sink = sink
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.restarts = 0
        self.next_restart = 0.0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.ready.clear()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stderr,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if says_started(line):
                self.ready.set()
            if self.sink is not None:
                self.sink(self.name, line.rstrip("\n"))
        stream.close()

    @property
    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        """Wait for exit; SIGKILL after ``timeout_s``. Returns the exit status."""
        assert self.proc is not None
        try:
            status = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs: killing it", self.name, timeout_s)
            self.proc.kill()
            status = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        return status


class Supervisor:
    """Starts, watches, restarts and stops the processes of one config."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        *,
        sink: LogSink | None = None,
        grace_s: float = 10.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.sink = sink
        self.grace_s = grace_s
        self.max_backoff_s = max_backoff_s
        self.nats: EmbeddedNats | None = None
        self.processes: list[ServiceProcess] = []
        self.bus_url = config.bus.url or ""
        self.bus_file: Path | None = None

    def start(self, *, ready_timeout_s: float = 30.0) -> None:
        """Start the bus (if embedded) and every service; wait until each has started."""
        if not self.bus_url:
            self.nats = bususers.embedded(self.config).start()
            self.bus_url = self.nats.url
            self.bus_file = busfile.write(self.config_path, self.bus_url)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name, service, args in registry.plan(self.config):
            argv = registry.run_argv(service, self.config_path, bus_url=self.bus_url, args=args)
            process = ServiceProcess(name, argv, sink=self.sink, env=env)
            process.start()
            self.processes.append(process)
        deadline = time.monotonic() + ready_timeout_s
        for process in self.processes:
            if not process.ready.wait(max(0.0, deadline - time.monotonic())):
                status = process.exited
                raise RuntimeError(
                    f"{process.name} did not start"
                    + (f" (exit status {status})" if status is not None else "")
                )

    def check(self) -> None:
        """Restart any process that exited, with exponential back-off."""
        now = time.monotonic()
        for process in self.processes:
            status = process.exited
            if status is None:
                continue
            if process.next_restart == 0.0:
                delay = min(self.max_backoff_s, 0.5 * 2**process.restarts)
                process.next_restart = now + delay
                logger.warning(
                    "%s exited with status %s; restarting in %.1fs", process.name, status, delay
                )
            elif now >= process.next_restart:
                process.restarts += 1
                process.next_restart = 0.0
                process.start()

    def stop_process(self, name: str) -> int:
        """Stop one process now (it is not restarted); return its exit status."""
        for process in self.processes:
            if process.name == name:
                self.processes.remove(process)
                process.terminate()
                return process.wait(self.grace_s)
        raise KeyError(name)

    def stop(self) -> dict[str, int]:
        """Stop every process in reverse start order, then the embedded bus and its bus file."""
        statuses: dict[str, int] = {}
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            statuses[process.name] = process.wait(self.grace_s)
        self.processes.clear()
        if self.bus_file is not None:
            busfile.remove(self.config_path)
            self.bus_file = None
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        return statuses


def _print_sink(name: str, line: str) -> None:
    print(f"{name:>12} | {line}", file=sys.stderr, flush=True)


def up(config: Config, config_path: Path) -> int:
    """Run every service of ``config`` until interrupted; exit 0 on a clean stop.

    With an embedded bus, refuses to start (exit 1) while another `up` runs
    the same config: both would serve every service twice, on one data folder.
    """
    if config.bus.sandbox and not config.bus.url:
        raise ConfigError(
            "a sandbox joins the bus that holds the recording: set bus.url, pass --bus-url, "
            "or start it while `aaa-failover up` runs this config"
        )
    if not config.bus.url:
        running = busfile.read(config_path)
        if running is not None:
            logger.error(
                "another `aaa-failover up` (pid %d) runs %s, its bus at %s: stop it first",
                running.pid,
                config_path,
                running.url,
            )
            return 1
    return asyncio.run(_up(Supervisor(config, config_path.resolve(), sink=_print_sink)))


async def _up(supervisor: Supervisor) -> int:
    # Signal handlers first, so a SIGTERM during start-up still stops everything cleanly.
    with ShutdownSignals() as signals:
        try:
            await asyncio.to_thread(supervisor.start)
            logger.info("all services started; bus at %s", redact(supervisor.bus_url))
            while not signals.event.is_set():
                supervisor.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signals.event.wait(), 0.5)
        finally:
            statuses = await asyncio.to_thread(supervisor.stop)
    failed = {name: status for name, status in statuses.items() if status != 0}
    if failed:
        logger.error("services exited with errors: %s", failed)
        return 1
    return 0
