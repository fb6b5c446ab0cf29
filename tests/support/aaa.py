"""What the reference server's tests share: a thread-side condition polled until true, its worker
threads by name, the names of the statistics its Status-Server answers carry, and a clock a test
moves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` (a thread-side condition) until true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


ACTIVE = "FreeRADIUS-Stats-Threads-Active"
TOTAL = "FreeRADIUS-Stats-Threads-Total"
MAX = "FreeRADIUS-Stats-Threads-Max"
QUEUE = "FreeRADIUS-Queue-Len-Auth"


class FakeClock:
    """A clock the test moves; the pool's worker threads read it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
