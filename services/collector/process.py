"""Process figures of an AAA server, read with psutil.

A :class:`ProcessWatch` finds the server's process by a
:class:`~services.runtime.config.ProcessMatch` (pid file, process name,
command-line substring; every one given must match) and keeps the
``psutil.Process`` between samples, so that ``cpu_percent`` covers the time
since the previous sample; it also reads the CPU time of each of the
process's threads (from which the collector estimates how many are busy)
and counts the process with its descendants. Reading blocks (it walks
/proc): call :meth:`ProcessWatch.sample` from a thread.

When the process cannot be read, the reading's errors say what was
configured, what was not found and which figures are missing as a result,
and the watch logs it as a warning once, when that state begins (and at
info level when the process is found again), not at every interval.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from schemas.errors import AaaFailoverError
from services.runtime.config import ProcessMatch

logger = logging.getLogger(__name__)

PRIME_S = 0.1
"""On finding a process, CPU use is first measured over this many seconds."""

MISSING = "no thread, memory or CPU figures"
"""What a sample lacks when the process cannot be read."""

FOREGROUND_HINT = (
    "a server run in the foreground writes none, as FreeRADIUS does under "
    "Debian's systemd unit (freeradius -f): match by name instead"
)
"""Why a configured pid file may never exist, and what to do about it."""


class NotFound(AaaFailoverError):
    """The process could not be found; the message says why, ``hint`` what may help."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def describe(match: ProcessMatch) -> str:
    """``match`` in words: 'pid file X, named 'Y', with 'Z' in its command line'."""
    parts = []
    if match.pid_file is not None:
        parts.append(f"pid file {match.pid_file}")
    if match.name is not None:
        parts.append(f"named {match.name!r}")
    if match.cmdline is not None:
        parts.append(f"with {match.cmdline!r} in its command line")
    return ", ".join(parts) or "nothing"


def _mismatch(proc: psutil.Process, match: ProcessMatch) -> str | None:
    """How ``proc`` differs from the name and command line ``match`` asks for, or None."""
    if match.name is not None:
        name = proc.name()
        if name != match.name:
            return f"it is named {name!r}, not {match.name!r}"
    if match.cmdline is not None and match.cmdline not in " ".join(proc.cmdline()):
        return f"its command line lacks {match.cmdline!r}"
    return None


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
        raise NotFound(f"pid file {path} does not exist", hint=FOREGROUND_HINT) from None
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
    return _mismatch(proc, match) is None


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
            mismatch = _mismatch(proc, match)
            if mismatch is not None:
                raise NotFound(f"process {pid} from pid file {path} does not match: {mismatch}")
        except psutil.NoSuchProcess:
            raise NotFound(
                f"process {pid} from pid file {path} is not running",
                hint="a stale pid file: the server stopped or was started another way",
            ) from None
        except psutil.AccessDenied:
            raise NotFound(f"process {pid} from pid file {path}: access denied") from None
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
        raise NotFound(f"no running process {describe(match)}")
    return min(found, key=lambda p: p.create_time())


class ProcessWatch:
    """The process of one server, followed across samples.

    ``label`` names the server in log lines. ``problem`` is why the last
    sample read no process figures (None when it read them): a warning is
    logged when it changes, not at every sample.
    """

    def __init__(
        self,
        match: ProcessMatch | None,
        resolve: Callable[[str], Path] = Path,
        *,
        prime_s: float = PRIME_S,
        label: str = "",
    ) -> None:
        self.match = match
        self.resolve = resolve
        self.prime_s = prime_s
        self.label = label
        self.process: psutil.Process | None = None
        self.problem: str | None = None

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
            unset = f"process: none configured for this server: {MISSING}"
            errors.append(unset)
            problem: str | None = unset
            reading = ProcessReading(process_count=process_count, errors=errors)
        else:
            reading, problem = self._read(errors, process_count)
        self._note(problem)
        return reading

    def _read(
        self, errors: list[str], process_count: int | None
    ) -> tuple[ProcessReading, str | None]:
        """The reading, and why it has no process figures (None if it has them)."""
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
            hint = f" ({exc.hint})" if exc.hint else ""
            problem = f"process: {exc}{hint}: {MISSING}"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pid = self.process.pid if self.process is not None else None
            self.process = None
            problem = f"process: the watched process {pid} ended: {MISSING}"
        except psutil.Error as exc:
            problem = f"process: {exc}: {MISSING}"
        else:
            if fresh:
                self._found(proc)
            return self._figures(proc, threads, memory, cpu, process_count, errors), None
        errors.append(problem)
        return ProcessReading(process_count=process_count, errors=errors), problem

    def _figures(
        self,
        proc: psutil.Process,
        threads: int,
        memory: float,
        cpu: float,
        process_count: int | None,
        errors: list[str],
    ) -> ProcessReading:
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

    def _prefix(self) -> str:
        return f"{self.label}: " if self.label else ""

    def _found(self, proc: psutil.Process) -> None:
        """Log which process a fresh search found, so an operator can check it is the server."""
        assert self.match is not None
        try:
            name = proc.name()
        except psutil.Error:
            name = "?"
        logger.info(
            "%swatching process %d (%s), found by %s",
            self._prefix(),
            proc.pid,
            name,
            describe(self.match),
        )

    def _note(self, problem: str | None) -> None:
        """Log a change of ``problem``: a warning when one begins or changes."""
        if problem == self.problem:
            return
        if problem is not None:
            logger.warning("%s%s", self._prefix(), problem)
        self.problem = problem
