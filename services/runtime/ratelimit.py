"""Warnings at a bounded rate: the first few of a kind per window, then one count of the rest.

A flood of bad input (40,000 malformed datagrams, say) must not become
40,000 log lines. :class:`LogLimiter` logs the first ``burst`` messages of
each kind (its *key*, a short label such as ``"nas-01 proxy drop unknown-nas"``)
in each ``interval_s`` window and counts the rest; when the window is over
(at the next message of that kind, or at :meth:`LogLimiter.flush`, which a
service calls from a loop it already runs) it logs one line, the last
message logged for that key followed by ``... and N more like it in the
last 10 s``. Nothing is lost from the counts a service keeps: the limiter
only decides what reaches the log.

Keys are meant to be few (a reason, not a source address); at most
``max_keys`` are tracked, the last of them an overflow key that messages of
further kinds share. The clock is the caller's to give (``time.monotonic`` by default), so
tests step it by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OVERFLOW_KEY = "(other kinds)"


@dataclass
class _Window:
    start: float
    level: int
    logged: int = 0
    suppressed: int = 0
    last: str = ""


class LogLimiter:
    """Rate-limited logging to ``logger``, per key: ``burst`` lines per ``interval_s``."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        burst: int = 1,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("interval_s must be positive, burst and max_keys at least 1")
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self.suppressed_total = 0
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._windows)

    def warning(self, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def info(self, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args, **kwargs)

    def error(self, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args, **kwargs)

    def log(self, level: int, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` used up its burst in this window
        (then count it); True if it was logged. ``kwargs`` go to the logger (``exc_info``)."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        summaries: list[tuple[int, str, int, float]] = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.start >= self.interval_s:
                summaries += self._close(key, window, now)
                window = None
            if window is None:
                room = self.max_keys - (OVERFLOW_KEY not in self._windows)
                if len(self._windows) >= room:
                    summaries += self._expire(now)
                    room = self.max_keys - (OVERFLOW_KEY not in self._windows)
                if len(self._windows) >= room:
                    key = OVERFLOW_KEY
                    window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = _Window(start=now, level=level)
            emit = window.logged < self.burst
            if emit:
                window.logged += 1
                window.last = msg % args if args else msg
            else:
                window.suppressed += 1
                self.suppressed_total += 1
        self._emit(summaries)
        if emit:
            self.logger.log(level, msg, *args, **kwargs)
        return emit

    def flush(self, *, force: bool = False) -> int:
        """Log the count of every window that is over (every window with ``force``, as at
        shutdown) and forget those windows; how many summaries were logged."""
        now = self.clock()
        with self._lock:
            summaries = self._expire(now, force=force)
        self._emit(summaries)
        return len(summaries)

    def _emit(self, summaries: list[tuple[int, str, int, float]]) -> None:
        for level, last, count, span in summaries:
            self.logger.log(level, "%s ... and %d more like it in the last %g s", last, count, span)

    def _close(self, key: str, window: _Window, now: float) -> list[tuple[int, str, int, float]]:
        del self._windows[key]
        if not window.suppressed:
            return []
        span = round(min(self.interval_s, max(0.0, now - window.start)), 1)
        return [(window.level, window.last, window.suppressed, span)]

    def _expire(self, now: float, *, force: bool = False) -> list[tuple[int, str, int, float]]:
        out = []
        for key, window in list(self._windows.items()):
            if force or now - window.start >= self.interval_s:
                out += self._close(key, window, now)
        return out
