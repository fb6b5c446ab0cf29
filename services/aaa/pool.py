"""A pool of real worker threads fed by a bounded queue, with stallable workers.

Each job waits the pool's service time in its worker, then runs. A number of
workers can be held busy ("stalled", as by a hung backend) until that number
is lowered: that is how a reference server is overloaded on purpose. The
figures a RADIUS server reports in Status-Server (threads busy, threads
alive, queue length) come from :meth:`WorkerPool.stats`.
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


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool: ``busy`` counts stalled workers too."""

    busy: int
    alive: int
    workers: int
    queued: int
    stalled: int
    completed: int


class WorkerPool:
    """``workers`` threads taking jobs from a queue of at most ``queue_max``."""

    def __init__(
        self,
        name: str,
        *,
        workers: int,
        queue_max: int,
        service_time_s: float = 0.0,
        stalled: int = 0,
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
        self._busy = 0
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
                busy=self._busy,
                alive=sum(1 for t in self._threads if t.is_alive()),
                workers=self.workers,
                queued=len(self._jobs),
                stalled=self._stalled,
                completed=self._completed,
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
                self._busy += 1
                if self._jobs:
                    self._work_cv.notify()
                while not self._stopping and self._stalled <= self._stall_target:
                    self._stall_cv.wait()
                self._stalled -= 1
                self._busy -= 1
                continue
            if self._jobs:
                self._busy += 1
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
                    self._busy -= 1
                    self._completed += 1
