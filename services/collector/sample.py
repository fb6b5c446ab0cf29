"""From what was read of a server to its MetricsSample: plain functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.events import MetricsSample
from services.collector.process import ProcessReading
from services.runtime.radius import STATS_FIELDS


@dataclass(frozen=True)
class StatusReading:
    """The figures of one Status-Server probe; ``ok`` is whether the server answered."""

    ok: bool
    figures: dict[str, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def status_reading(values: Mapping[str, Any], threads_max_fallback: int | None) -> StatusReading:
    """Map a Status-Server reply's attributes to sample fields.

    A statistic missing from the reply is None with an error, except
    ``threads_max``, which falls back to the configured value when there is one.
    """
    figures: dict[str, int | None] = {}
    errors: list[str] = []
    for attribute, name in STATS_FIELDS.items():
        value = values.get(attribute)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            figures[name] = value
            continue
        if name == "threads_max" and threads_max_fallback is not None:
            figures[name] = threads_max_fallback
            continue
        figures[name] = None
        errors.append(
            f"status reply lacks {attribute}"
            if value is None
            else f"status reply has a bad {attribute}: {value!r}"
        )
    return StatusReading(ok=True, figures=figures, errors=errors)


def status_failure(error: str) -> StatusReading:
    """A probe that got no valid answer: no figures, one error."""
    return StatusReading(ok=False, errors=[error])


def make_sample(
    server: str, seq: int, status: StatusReading, process: ProcessReading, *, source: str = ""
) -> MetricsSample:
    """The MetricsSample of one server in one interval."""
    figures = status.figures
    return MetricsSample(
        source=source,
        server=server,
        seq=seq,
        status_ok=status.ok,
        threads_active=figures.get("threads_active"),
        threads_total=figures.get("threads_total"),
        threads_max=figures.get("threads_max"),
        queue_len=figures.get("queue_len"),
        process_threads=process.process_threads,
        memory_percent=process.memory_percent,
        cpu_percent=process.cpu_percent,
        process_count=process.process_count,
        errors=[*status.errors, *process.errors],
    )
