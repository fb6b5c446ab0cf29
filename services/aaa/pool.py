"""A pool of real worker threads fed by a bounded queue, with stallable workers.

Each job waits the pool's service time in its worker, then runs. A number of
workers can be held busy ("stalled", as by a hung backend) until that number
is lowered: that is how a reference server is overloaded on purpose. The
figures a RADIUS server reports in Status-Server (threads busy, threads
alive, queue length) come from :meth:`WorkerPool.stats`.

Busy workers are also kept as an integral over time (:class:`BusyWindow`),
updated when a worker takes a job or stalls and when it is done, so that the
pool can say how many workers were busy on average over the last
``window_s``, whoever asks and however often. Clients that send in lock-step
keep every worker busy for a few milliseconds and then none: a count read at
one instant sees a full pool or an empty one, by chance; the mean over a
window sees the load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Job = Callable[[], None]
Clock = Callable[[], float]

BUSY_WINDOW_S = 1.0
"""The span over which a pool's busy workers are averaged (``PoolStats.busy_mean``).

One second, twice the collector's default interval: each reading covers at
least the whole time since the one before, so no burst falls between
readings; consecutive readings overlap. An overload that holds
every worker reads as all busy one window after it began; rounded to whole
workers, as Status-Server reports them, a stall of 7 workers of 8 reads as 7
once the mean reaches 6.5, 0.93 s in.
"""

MARKS_PER_WINDOW = 1000
"""How finely :class:`BusyWindow` remembers the changes in its window (at most this many)."""


@dataclass(slots=True)
class _Mark:
    """The integral up to ``at``, and the count from ``at`` on."""

    at: float
    integral: float
    count: int


class BusyWindow:
    """A count that changes over time, kept as its integral, read as its mean over a window.

    ``add`` and ``mean`` take the time; the caller holds any lock. The time of
    each change is remembered, so that the integral at the start of the window
    can be taken off; changes closer than ``window_s / MARKS_PER_WINDOW`` to
    the last remembered one share its mark, which bounds the memory at
    ``MARKS_PER_WINDOW`` marks and the error of a mean at the largest count
    over ``MARKS_PER_WINDOW`` (0.008 of a worker for 8 workers). Before
    ``start`` the count was 0.
    """

    def __init__(self, window_s: float, start: float) -> None:
        if not window_s > 0:
            raise ValueError("the window must be longer than 0 s")
        self.window_s = window_s
        self._resolution_s = window_s / MARKS_PER_WINDOW
        self.count = 0
        self._at = start
        self._integral = 0.0
        self._marks: deque[_Mark] = deque([_Mark(start, 0.0, 0)])

    def _advance(self, now: float) -> None:
        if now > self._at:
            self._integral += self.count * (now - self._at)
            self._at = now

    def _forget(self) -> None:
        """Drop the marks before the last one at or before the window's start."""
        start = self._at - self.window_s
        marks = self._marks
        while len(marks) > 1 and marks[1].at <= start:
            marks.popleft()

    def add(self, delta: int, now: float) -> None:
        """The count changes by ``delta`` at ``now``."""
        self._advance(now)
        self.count += delta
        last = self._marks[-1]
        if self._at - last.at < self._resolution_s:
            last.count = self.count
        else:
            self._marks.append(_Mark(self._at, self._integral, self.count))
        self._forget()

    def mean(self, now: float) -> float:
        """The count's mean over the ``window_s`` up to ``now``."""
        self._advance(now)
        self._forget()
        first = self._marks[0]
        start = self._at - self.window_s
        before = first.integral + first.count * max(0.0, start - first.at)
        return max(0.0, (self._integral - before) / self.window_s)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool.

    ``busy`` is the workers busy now, ``busy_mean`` the mean of that count
    over the pool's ``window_s`` up to now; both count stalled workers.
    """

    busy: int
    alive: int
    workers: int
    queued: int
    stalled: int
    completed: int
    busy_mean: float


class WorkerPool:
    """``workers`` threads taking jobs from a queue of at most ``queue_max``.

    Busy workers are averaged over the last ``window_s`` of ``clock`` (a test
    may pass its own clock; the workers read it when they start or stall and
    when they are done).
    """

    def __init__(
        self,
        name: str,
        *,
        workers: int,
        queue_max: int,
        service_time_s: float = 0.0,
        stalled: int = 0,
        window_s: float = BUSY_WINDOW_S,
        clock: Clock = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if queue_max < 0:
            raise ValueError("queue_max must not be negative")
        self.name = name
        self.workers = workers
        self.queue_max = queue_max
        self._lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)
        self._stall_cv = threading.Condition(self._lock)
        self._halt = threading.Event()
        self._jobs: deque[Job] = deque()
        self._threads: list[threading.Thread] = []
        self._service_time_s = max(0.0, service_time_s)
        self._stall_target = max(0, stalled)
        self._stalled = 0
        self._clock = clock
        self._busy = BusyWindow(window_s, clock())
        self._completed = 0
        self._stopping = False

    # --- control --------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads."""
        if self._threads:
            return
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-worker-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and the job is not taken) when the queue is full."""
        with self._lock:
            if self._stopping or len(self._jobs) >= self.queue_max:
                return False
            self._jobs.append(job)
            self._work_cv.notify()
            return True

    def set_stalled(self, count: int) -> None:
        """Hold ``count`` workers busy from now on (0 releases them all)."""
        if count < 0:
            raise ValueError("stalled workers must not be negative")
        with self._lock:
            self._stall_target = count
            self._work_cv.notify_all()
            self._stall_cv.notify_all()

    def set_service_time(self, seconds: float) -> None:
        """The time each job waits in its worker before it runs, from the next job on."""
        if seconds < 0:
            raise ValueError("service time must not be negative")
        with self._lock:
            self._service_time_s = seconds

    @property
    def service_time_s(self) -> float:
        return self._service_time_s

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                busy=self._busy.count,
                alive=sum(1 for t in self._threads if t.is_alive()),
                workers=self.workers,
                queued=len(self._jobs),
                stalled=self._stalled,
                completed=self._completed,
                busy_mean=self._busy.mean(self._clock()),
            )

    def stop(self) -> int:
        """Stop taking jobs, drop the queued ones and release stalled workers.

        Returns how many queued jobs were dropped. Workers finish the job in
        hand (its service-time wait is cut short) and exit.
        """
        with self._lock:
            self._stopping = True
            dropped = len(self._jobs)
            self._jobs.clear()
            self._halt.set()
            self._work_cv.notify_all()
            self._stall_cv.notify_all()
        return dropped

    def join(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` in all for the workers; return how many are still alive."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(1 for t in self._threads if t.is_alive())
        if alive:
            logger.warning(
                "%s: %d worker threads did not stop in %.1fs", self.name, alive, timeout_s
            )
        return alive

    # --- workers --------------------------------------------------------

    def _next_job(self) -> Job | None:
        """The next job to run, stalling first if asked; None when stopping (lock held)."""
        while not self._stopping:
            if self._stalled < self._stall_target:
                self._stalled += 1
                self._busy.add(1, self._clock())
                if self._jobs:
                    self._work_cv.notify()
                while not self._stopping and self._stalled <= self._stall_target:
                    self._stall_cv.wait()
                self._stalled -= 1
                self._busy.add(-1, self._clock())
                continue
            if self._jobs:
                self._busy.add(1, self._clock())
                return self._jobs.popleft()
            self._work_cv.wait()
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._next_job()
                if job is None:
                    return
                service_time_s = self._service_time_s
            try:
                if service_time_s > 0:
                    self._halt.wait(service_time_s)
                job()
            except Exception:
                logger.exception("%s: job failed", self.name)
            finally:
                with self._lock:
                    self._busy.add(-1, self._clock())
                    self._completed += 1
