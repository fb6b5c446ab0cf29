"""Process figures of an AAA server, read with psutil.

A :class:`ProcessWatch` finds the server's process by a
:class:`~services.runtime.config.ProcessMatch` (pid file, process name,
command-line substring; every one given must match) and keeps the
``psutil.Process`` between samples, so that ``cpu_percent`` covers the time
since the previous sample; it also reads the CPU time of each of the
process's threads (from which the collector estimates how many are busy)
and counts the process with its descendants. Reading blocks (it walks
/proc): call :meth:`ProcessWatch.sample` from a thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from services.runtime.config import ProcessMatch

logger = logging.getLogger(__name__)

PRIME_S = 0.1
"""On finding a process, CPU use is first measured over this many seconds."""


class NotFound(Exception):
    """The process could not be found; the message says why."""


@dataclass(frozen=True)
class ProcessReading:
    """Figures of one sample; a figure that could not be read is None, with a reason.

    ``thread_times`` maps each thread id of the process to its CPU time
    (user + system, seconds); ``process_tree_count`` is the process and all
    its descendants; ``process_count`` is every process of the host.
    """

    pid: int | None = None
    process_threads: int | None = None
    memory_percent: float | None = None
    cpu_percent: float | None = None
    process_count: int | None = None
    thread_times: dict[int, float] | None = None
    process_tree_count: int | None = None
    errors: list[str] = field(default_factory=list)


def _pid_from_file(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise NotFound(f"pid file {path} does not exist") from None
    except OSError as exc:
        raise NotFound(f"pid file {path}: {exc.strerror}") from None
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        raise NotFound(f"pid file {path} holds no pid") from None
    if pid <= 0:
        raise NotFound(f"pid file {path} holds no pid")
    return pid


def _matches(proc: psutil.Process, match: ProcessMatch) -> bool:
    """Whether ``proc`` has the name and command line ``match`` asks for."""
    if match.name is not None and proc.name() != match.name:
        return False
    return match.cmdline is None or match.cmdline in " ".join(proc.cmdline())


def find_process(match: ProcessMatch, resolve: Callable[[str], Path] = Path) -> psutil.Process:
    """The process ``match`` describes; raise NotFound.

    With a pid file, the process it names (checked against name and
    command line if given too); otherwise the oldest process whose name and
    command line match. A command-line match never picks the caller itself.
    """
    if match.pid_file is None and match.name is None and match.cmdline is None:
        raise NotFound("the process match names no pid file, name or command line")
    if match.pid_file is not None:
        path = resolve(match.pid_file)
        pid = _pid_from_file(path)
        try:
            proc = psutil.Process(pid)
            if not _matches(proc, match):
                raise NotFound(f"process {pid} from {path} does not match {match}")
        except psutil.NoSuchProcess:
            raise NotFound(f"process {pid} from {path} is not running") from None
        except psutil.AccessDenied:
            raise NotFound(f"process {pid} from {path}: access denied") from None
        return proc
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if match.cmdline is not None and proc.pid == os.getpid():
            continue
        try:
            if _matches(proc, match):
                proc.create_time()
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    if not found:
        raise NotFound(f"no running process matches {match}")
    return min(found, key=lambda p: p.create_time())


class ProcessWatch:
    """The process of one server, followed across samples."""

    def __init__(
        self,
        match: ProcessMatch | None,
        resolve: Callable[[str], Path] = Path,
        *,
        prime_s: float = PRIME_S,
    ) -> None:
        self.match = match
        self.resolve = resolve
        self.prime_s = prime_s
        self.process: psutil.Process | None = None

    def _current(self) -> tuple[psutil.Process, bool]:
        """The watched process and whether it was just found."""
        assert self.match is not None
        cached = self.process
        if cached is not None and cached.is_running():
            if self.match.pid_file is None:
                return cached, False
            try:
                if _pid_from_file(self.resolve(self.match.pid_file)) == cached.pid:
                    return cached, False
            except NotFound:
                pass
        self.process = None
        proc = find_process(self.match, self.resolve)
        self.process = proc
        return proc, True

    def sample(self) -> ProcessReading:
        """Read the figures now (blocking); never raises."""
        errors: list[str] = []
        try:
            process_count: int | None = len(psutil.pids())
        except Exception as exc:
            process_count = None
            errors.append(f"process count: {exc}")
        if self.match is None:
            errors.append("no process match configured")
            return ProcessReading(process_count=process_count, errors=errors)
        try:
            proc, fresh = self._current()
            if fresh:
                cpu = proc.cpu_percent(interval=self.prime_s)
            else:
                cpu = proc.cpu_percent(interval=None)
            with proc.oneshot():
                threads = proc.num_threads()
                memory = proc.memory_percent()
        except NotFound as exc:
            errors.append(str(exc))
            return ProcessReading(process_count=process_count, errors=errors)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pid = self.process.pid if self.process is not None else None
            self.process = None
            errors.append(f"process {pid} ended")
            return ProcessReading(process_count=process_count, errors=errors)
        except psutil.Error as exc:
            errors.append(f"process: {exc}")
            return ProcessReading(process_count=process_count, errors=errors)
        thread_times: dict[int, float] | None = None
        try:
            thread_times = {t.id: t.user_time + t.system_time for t in proc.threads()}
        except psutil.Error as exc:
            errors.append(f"threads of process {proc.pid}: {exc}")
        tree: int | None = None
        try:
            tree = 1 + len(proc.children(recursive=True))
        except psutil.Error as exc:
            errors.append(f"descendants of process {proc.pid}: {exc}")
        return ProcessReading(
            pid=proc.pid,
            process_threads=threads,
            memory_percent=memory,
            cpu_percent=cpu,
            process_count=process_count,
            thread_times=thread_times,
            process_tree_count=tree,
            errors=errors,
        )
