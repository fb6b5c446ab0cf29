"""`aaa-failover up`: every service of a config as its own process, supervised.

With no bus URL in the config it first starts the embedded nats-server, on a
free port, with a user per service, each allowed only its own subjects, their
passwords in files under ``.nats/auth`` (services/launch/bususers.py), and
writes its URL to the config's bus file (``farm.toml.bus``,
services/runtime/busfile.py) so that the tools given only ``-c`` find it; the
file goes when the supervisor stops. Each service runs as
`python -m services.launch.cli run <service> -c FILE --bus-url URL` (no credential on
its command line: it reads its own password file); a service that
exits unexpectedly is restarted with back-off (:class:`Backoff`), and so is the
embedded server, on the same port and data folder, so every service reconnects
to it and JetStream keeps its streams. On SIGINT or SIGTERM the
services are stopped in reverse start order (SIGTERM, then SIGKILL after a
grace period) and the embedded server last. When `up` dies, even by SIGKILL,
its children die with it (Linux: PR_SET_PDEATHSIG, services/runtime/natsserver.py
``spawn``: SIGKILL to each service, SIGTERM to nats-server), and at start `up`
stops what a killed `up` of the config left running (:func:`clear_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from services.launch import bususers, registry
from services.runtime import busfile
from services.runtime.busauth import redact
from services.runtime.config import Config, ConfigError
from services.runtime.lifecycle import ShutdownSignals, says_started
from services.runtime.natsserver import EmbeddedNats, NatsServerError, spawn

logger = logging.getLogger(__name__)

LogSink = Callable[[str, str], None]


@dataclass
class Backoff:
    """The delays before restarting a process that keeps exiting: ``initial_s``, doubled
    at each exit up to ``max_s``, and from ``initial_s`` again once a run lasted
    ``stable_s`` (a process that crashed once an hour is not made to wait 30 s)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    failures: int = 0

    def next_delay(self, ran_s: float) -> float:
        """The delay before the next start of a process that exited after ``ran_s``."""
        if ran_s >= self.stable_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return delay


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
        self.started_at = 0.0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.ready.clear()
        self.started_at = time.monotonic()
        self.proc = spawn(
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
        stable_s: float = 60.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.sink = sink
        self.grace_s = grace_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.backoffs: dict[str, Backoff] = {}
        self.nats: EmbeddedNats | None = None
        self.nats_started_at = 0.0
        self.nats_next_restart = 0.0
        self.processes: list[ServiceProcess] = []
        self.bus_url = config.bus.url or ""
        self.bus_file: Path | None = None

    def start(self, *, ready_timeout_s: float = 30.0) -> None:
        """Start the bus (if embedded) and every service; wait until each has started."""
        if not self.bus_url:
            self.nats = bususers.embedded(self.config).start()
            self.nats_started_at = time.monotonic()
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

    def backoff(self, name: str) -> Backoff:
        if name not in self.backoffs:
            self.backoffs[name] = Backoff(max_s=self.max_backoff_s, stable_s=self.stable_s)
        return self.backoffs[name]

    def check(self) -> None:
        """Restart the embedded bus or any process that exited, with back-off."""
        now = time.monotonic()
        self._check_nats(now)
        for process in self.processes:
            status = process.exited
            if status is None:
                continue
            if process.next_restart == 0.0:
                delay = self.backoff(process.name).next_delay(now - process.started_at)
                process.next_restart = now + delay
                logger.warning(
                    "%s exited with status %s; restarting in %.1fs", process.name, status, delay
                )
            elif now >= process.next_restart:
                process.restarts += 1
                process.next_restart = 0.0
                process.start()

    def _check_nats(self, now: float) -> None:
        """Start the embedded nats-server again once it died: on its port, its data folder,
        its users and TLS; the services' connections find it again by themselves."""
        nats = self.nats
        if nats is None or (nats.proc is not None and nats.exited is None):
            return
        if self.nats_next_restart == 0.0:
            delay = self.backoff("nats-server").next_delay(now - self.nats_started_at)
            self.nats_next_restart = now + delay
            logger.warning(
                "the embedded nats-server %s; restarting it on %s in %.1fs",
                "did not start" if nats.proc is None else f"exited with status {nats.exited}",
                redact(self.bus_url),
                delay,
            )
            return
        if now < self.nats_next_restart:
            return
        self.nats_next_restart = 0.0
        self.nats_started_at = time.monotonic()
        try:
            nats.restart()
        except NatsServerError as exc:
            logger.error("the embedded nats-server did not start again: %s", exc)
            return
        logger.warning("the embedded nats-server runs again at %s", redact(nats.url))

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


@dataclass(frozen=True)
class Leftover:
    """A process found at start that belongs to this config: ``ours`` when a dead `up` of
    the config left it (a service or nats-server it started), else someone else's."""

    pid: int
    command: str
    why: str
    ours: bool


def _config_of(cmdline: list[str], cwd: str) -> tuple[str, Path, list[str]] | None:
    """``(service, config, rest)`` of an `aaa-failover run SERVICE -c CONFIG ...` command."""
    try:
        at = cmdline.index("run")
    except ValueError:
        return None
    if at == 0 or not any(
        part == "services.launch.cli" or Path(part).name == "aaa-failover" for part in cmdline[:at]
    ):
        return None
    rest = cmdline[at + 2 :]
    for flag in ("-c", "--config"):
        if flag in rest[:-1]:
            path = Path(cwd, rest[rest.index(flag) + 1])
            return cmdline[at + 1] if len(cmdline) > at + 1 else "", path.resolve(), rest
    return None


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def _is_up(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        cmdline = process.cmdline()
        return "up" in cmdline and any(
            part == "services.launch.cli" or Path(part).name == "aaa-failover" for part in cmdline
        )
    return False


def _ports(config: Config, previous: busfile.BusFile | None) -> set[int]:
    """The ports a running `up` of ``config`` listens on: its reference servers', its
    services' metrics ports and, from the bus file, its embedded bus's; none for a sandbox."""
    ports: set[int] = set()
    if config.bus.sandbox:
        return ports  # a sandbox shares the bus of the farm it replays, and serves no port
    for server in config.servers:
        if server.reference is not None:
            ports.update(p for p in (server.auth_port, server.acct_port, server.status_port) if p)
            if server.acct_port is None:
                ports.add(server.auth_port + 1)
    ports.update(p for p in config.metrics.ports.values() if p)
    if previous is not None:
        with contextlib.suppress(ValueError):
            ports.add(int(previous.url.rsplit(":", 1)[1].split("/")[0]))
    return ports


def recognise(
    cmdline: list[str],
    cwd: str,
    *,
    config_path: Path,
    data_dir: Path | None,
    sandbox: str | None,
    bus_url: str | None,
) -> tuple[str, bool] | None:
    """What the command line ``cmdline`` (run in ``cwd``) is of the config at
    ``config_path`` (resolved): ``(what, as_up_starts_it)``, else None.

    A service of the config in the same sandbox (``sandbox``, None for the farm)
    is started by `up` with ``--bus-url``, the URL of the bus file ``bus_url`` when
    there is one; the embedded nats-server (``data_dir``: None when the bus is not
    embedded, so not this config's) stores in the config's ``.nats``.
    """
    if not cmdline:
        return None
    if Path(cmdline[0]).name == "nats-server":
        store = _value(cmdline, "-sd")
        if data_dir is not None and store is not None and Path(cwd, store).resolve() == data_dir:
            return f"nats-server on {data_dir}", True
        return None
    run = _config_of(cmdline, cwd)
    if run is None or run[1] != config_path or _value(run[2], "--sandbox") != sandbox:
        return None
    url = _value(run[2], "--bus-url")
    return f"runs {run[0]} of {config_path}", url is not None and bus_url in (None, url)


def leftovers(
    config: Config, config_path: Path, previous: busfile.BusFile | None
) -> list[Leftover]:
    """The processes, other than this one's, that run ``config`` or hold its ports.

    A process is ``ours`` (left by a dead `up` of this config) when it runs as `up`
    starts it (:func:`recognise`) and its parent is no `up`.
    """
    config_path = config_path.resolve()
    # with a bus.url, the bus is not this config's to stop
    data_dir = None if config.bus.url else config.path(".nats").resolve()
    sandbox = config.bus.prefix if config.bus.sandbox else None
    holders: dict[int, set[int]] = {}
    ports = _ports(config, previous)
    if ports:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.net_connections(kind="inet"):
                listening = conn.status == psutil.CONN_LISTEN or (
                    conn.type == socket.SOCK_DGRAM and not conn.raddr
                )
                if conn.pid and listening and conn.laddr and conn.laddr.port in ports:
                    holders.setdefault(conn.pid, set()).add(conn.laddr.port)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found: list[Leftover] = []
    for process in psutil.process_iter():
        if process.pid in mine:
            continue
        try:
            cmdline = process.cmdline()
            known = None
            if cmdline and ("run" in cmdline or Path(cmdline[0]).name == "nats-server"):
                known = recognise(
                    cmdline,
                    process.cwd(),
                    config_path=config_path,
                    data_dir=data_dir,
                    sandbox=sandbox,
                    bus_url=previous.url if previous is not None else None,
                )
            why, as_up_starts_it = known or ("", False)
            if process.pid in holders:
                held = ", ".join(str(p) for p in sorted(holders[process.pid]))
                why = f"{why}; holds port {held}" if why else f"holds port {held} of the config"
            if not why:
                continue
            parent = process.parent()
            ours = as_up_starts_it and (parent is None or not _is_up(parent))
            found.append(Leftover(process.pid, " ".join(cmdline)[:200], why, ours))
        except psutil.Error:
            continue
    return found


def stop_leftovers(found: list[Leftover], grace_s: float) -> None:
    """SIGTERM each process of ``found``, then SIGKILL those still running after ``grace_s``."""
    processes = []
    for leftover in found:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(leftover.pid)
            process.terminate()
            processes.append(process)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        logger.warning("pid %d did not stop in %.0fs: killing it", process.pid, grace_s)
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def clear_leftovers(config: Config, config_path: Path, *, grace_s: float = 10.0) -> bool:
    """Report what a previous `up` of ``config`` left behind, and stop it when that `up` is
    dead. False (nothing stopped) when another `up` of the config still runs, or a
    process that is not a dead `up`'s runs the config or holds one of its ports."""
    # the bus file is an embedded bus's (a sandbox on a farm's bus does not own it)
    previous = None if config.bus.url else busfile.recorded(config_path)
    if previous is not None and busfile.is_alive(previous):
        logger.error(
            "another `aaa-failover up` (pid %d) runs %s, its bus at %s: stop it first",
            previous.pid,
            config_path,
            previous.url,
        )
        return False
    if previous is not None:
        logger.warning(
            "the `aaa-failover up` (pid %d) that last ran %s is gone without stopping "
            "(killed?): its bus file %s is stale",
            previous.pid,
            config_path,
            busfile.path_for(config_path),
        )
    found = leftovers(config, config_path, previous)
    theirs = [f for f in found if not f.ours]
    if theirs:
        for leftover in theirs:
            logger.error("pid %d %s: %s", leftover.pid, leftover.why, leftover.command)
        logger.error(
            "not starting %s: stop pid %s first (not left by a dead `aaa-failover up`)",
            config_path,
            ", ".join(str(f.pid) for f in theirs),
        )
        return False
    if found:
        for leftover in found:
            logger.warning(
                "stopping pid %d, left running by a dead `aaa-failover up`: %s (%s)",
                leftover.pid,
                leftover.why,
                leftover.command,
            )
        stop_leftovers(found, grace_s)
    elif previous is not None:
        logger.info("nothing the `up` of pid %d started still runs", previous.pid)
    return True


def up(config: Config, config_path: Path) -> int:
    """Run every service of ``config`` until interrupted; exit 0 on a clean stop.

    Refuses to start (exit 1) while another `up` runs the same config (both would
    serve every service twice, on one data folder), or while a process that is not
    a dead `up`'s runs a service of it or holds one of its ports (each named); stops
    first, naming each, the processes a dead (killed) `up` of the config left behind.
    """
    if config.bus.sandbox and not config.bus.url:
        raise ConfigError(
            "a sandbox joins the bus that holds the recording: set bus.url, pass --bus-url, "
            "or start it while `aaa-failover up` runs this config"
        )
    if not clear_leftovers(config, config_path):
        return 1
    return asyncio.run(_up(Supervisor(config, config_path.resolve(), sink=_print_sink)))


async def _up(supervisor: Supervisor) -> int:
    # Signal handlers first, so a SIGTERM during start-up still stops everything cleanly.
    with ShutdownSignals() as signals:
        try:
            await asyncio.to_thread(supervisor.start)
            logger.info("all services started; bus at %s", redact(supervisor.bus_url))
            while not signals.event.is_set():
                await asyncio.to_thread(supervisor.check)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signals.event.wait(), 0.5)
        finally:
            statuses = await asyncio.to_thread(supervisor.stop)
    failed = {name: status for name, status in statuses.items() if status != 0}
    if failed:
        logger.error("services exited with errors: %s", failed)
        return 1
    return 0
