"""From what was read of a server to its MetricsSample: plain data in, a sample out, no I/O.

A Status-Server reply gives queue lengths, packets per second and the
``Total-*`` counters; rates per second are the counters' growth over the
time between two readings of the same server. Servers that send thread
figures (attributes 193-195, as the reference server and FreeRADIUS from
3.2.2 do) are believed; FreeRADIUS 3.2.1 sends none, and then the threads
come from its process: ``threads_total`` is the process's thread count,
``threads_active`` the number of its threads whose CPU time grew since the
previous reading (an estimate: a thread waiting on a database uses no CPU),
and ``threads_max`` the configured ``threads_max`` or else ``max_servers``
of its radiusd.conf. ``sources`` says where each figure came from.

FreeRADIUS counts the Status-Server probes themselves among its
Access-Requests, so an idle FreeRADIUS shows about one Access-Request per
probe interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.events import MetricsSample, ServiceCheck
from services.collector.backlog import NEVER_ANSWERED, BacklogTracker
from services.collector.latency import LatencySummary
from services.collector.process import ProcessReading
from services.collector.radiusd import RadiusdConfError, max_servers

STATUS_SERVER = "status-server"
PROCESS = "process"
HOST = "host"
CONFIG = "config"
RADIUSD_CONF = "radiusd.conf"
PROBES = "probes"
COUNTERS_SOURCE = "counters"

THREADS_ACTIVE = "FreeRADIUS-Stats-Threads-Active"
THREADS_TOTAL = "FreeRADIUS-Stats-Threads-Total"
THREADS_MAX = "FreeRADIUS-Stats-Threads-Max"
START_TIME = "FreeRADIUS-Stats-Start-Time"
THREAD_ATTRIBUTES = (THREADS_ACTIVE, THREADS_TOTAL, THREADS_MAX)

GAUGES: dict[str, str] = {
    THREADS_ACTIVE: "threads_active",
    THREADS_TOTAL: "threads_total",
    THREADS_MAX: "threads_max",
    "FreeRADIUS-Queue-Len-Auth": "queue_len",
    "FreeRADIUS-Queue-Len-Internal": "queue_len_internal",
    "FreeRADIUS-Queue-Len-Acct": "queue_len_acct",
    "FreeRADIUS-Queue-Len-Proxy": "queue_len_proxy",
    "FreeRADIUS-Queue-Len-Detail": "queue_len_detail",
    "FreeRADIUS-Queue-PPS-In": "pps_in",
    "FreeRADIUS-Queue-PPS-Out": "pps_out",
}
"""Status-Server attributes read as they are -> MetricsSample field."""

COUNTERS: dict[str, str] = {
    "FreeRADIUS-Total-Access-Requests": "access_requests_per_s",
    "FreeRADIUS-Total-Auth-Responses": "auth_responses_per_s",
    "FreeRADIUS-Total-Accounting-Requests": "acct_requests_per_s",
    "FreeRADIUS-Total-Accounting-Responses": "acct_responses_per_s",
}
"""Status-Server counters -> the MetricsSample field of their rate per second."""


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True)
class Counters:
    """The counters of one reply, when it came (monotonic seconds), and the server's start."""

    at: float
    values: dict[str, int] = field(default_factory=dict)
    started: int | None = None


@dataclass(frozen=True)
class StatusReading:
    """One Status-Server probe; ``ok`` is whether the server answered.

    ``figures`` holds the gauges the reply had (by sample field),
    ``missing`` the statistics attributes it lacked.
    """

    ok: bool
    figures: dict[str, int] = field(default_factory=dict)
    counters: Counters | None = None
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def status_reading(values: Mapping[str, Any], at: float) -> StatusReading:
    """What a Status-Server reply (attribute name -> value) says, received at ``at``."""
    missing: list[str] = []
    errors: list[str] = []

    def read(attribute: str) -> int | None:
        value = values.get(attribute)
        number = _count(value)
        if value is None:
            missing.append(attribute)
        elif number is None:
            errors.append(f"status reply has a bad {attribute}: {value!r}")
        return number

    figures = {name: n for attribute, name in GAUGES.items() if (n := read(attribute)) is not None}
    counters = {attribute: n for attribute in COUNTERS if (n := read(attribute)) is not None}
    for attribute in NEVER_ANSWERED:
        if (n := _count(values.get(attribute))) is not None:
            counters[attribute] = n
    started = _count(values.get(START_TIME))
    return StatusReading(
        ok=True,
        figures=figures,
        counters=Counters(at, counters, started),
        missing=missing,
        errors=errors,
    )


def status_failure(error: str) -> StatusReading:
    """A probe that got no valid answer: no figures, one error."""
    return StatusReading(ok=False, errors=[error])


def rates(
    previous: Counters | None, current: Counters | None
) -> tuple[dict[str, float], list[str]]:
    """Per-second rates (by sample field) from two readings' counters, and why any is missing.

    No rates on the first reading, nor for a counter that went down (the
    server restarted or the counter wrapped), nor when the server's start
    time changed.
    """
    if current is None or not current.values:
        return {}, []
    if previous is None:
        return {}, ["rates: first reading of the counters, no rates yet"]
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return {}, ["rates: no time passed since the previous reading"]
    if (
        previous.started is not None
        and current.started is not None
        and previous.started != current.started
    ):
        return {}, ["rates: the server restarted (its start time changed), no rates this time"]
    out: dict[str, float] = {}
    notes: list[str] = []
    for attribute, name in COUNTERS.items():
        now = current.values.get(attribute)
        if now is None:
            continue
        before = previous.values.get(attribute)
        if before is None:
            notes.append(f"rates: {attribute} was not in the previous reading")
        elif now < before:
            notes.append(
                f"rates: {attribute} went down from {before} to {now} "
                "(server restarted?), no rate this time"
            )
        else:
            out[name] = (now - before) / elapsed
    return out, notes


@dataclass(frozen=True)
class ThreadTimes:
    """The CPU time (seconds) of each thread of process ``pid``, by thread id."""

    pid: int
    times: dict[int, float]


def busy_threads(
    previous: ThreadTimes | None, current: ThreadTimes | None
) -> tuple[int | None, str | None]:
    """How many threads used CPU between two readings of one process, or why unknown.

    A thread that appeared since the previous reading counts if it used any
    CPU. With no current reading there is no estimate and no note (the
    process reading says why).
    """
    if current is None:
        return None, None
    if previous is None or previous.pid != current.pid:
        return None, (
            f"threads_active: first reading of the threads of process {current.pid}, "
            "no estimate yet"
        )
    grew = sum(1 for tid, t in current.times.items() if t > previous.times.get(tid, 0.0))
    return grew, None


@dataclass(frozen=True)
class Limit:
    """``threads_max`` for when Status-Server does not give it: value and source, or why not."""

    value: int | None = None
    source: str = ""
    error: str | None = None


def threads_limit(
    configured: int | None,
    radiusd_conf: str | None,
    text: str | None = None,
    read_error: str | None = None,
) -> Limit:
    """The server's configured ``threads_max``, else ``max_servers`` of its radiusd.conf.

    ``text`` is the radiusd.conf file's content, or None with ``read_error``
    when it could not be read.
    """
    if configured is not None:
        return Limit(configured, CONFIG)
    if radiusd_conf is None:
        return Limit()
    if text is None:
        return Limit(error=f"threads_max: cannot read {radiusd_conf}: {read_error}")
    try:
        value = max_servers(text)
    except RadiusdConfError as exc:
        return Limit(error=f"threads_max: {radiusd_conf}: {exc}")
    if value is None:
        return Limit(error=f"threads_max: {radiusd_conf} sets no max_servers in its thread pool")
    return Limit(value, RADIUSD_CONF)


class SampleBuilder:
    """Turns the readings of one server into its samples.

    Holds what the next sample needs from the previous reading: the
    counters (for rates) and the CPU times of the process's threads (for
    ``threads_active``).
    """

    def __init__(
        self, server: str, limit: Limit | None = None, *, cleanup_delay_s: float = 0.0
    ) -> None:
        self.server = server
        self.limit = limit or Limit()
        self.counters: Counters | None = None
        self.threads: ThreadTimes | None = None
        self.backlog = BacklogTracker(cleanup_delay_s)

    def build(
        self,
        seq: int,
        status: StatusReading,
        process: ProcessReading,
        *,
        services: list[ServiceCheck] | None = None,
        source: str = "",
        latency: LatencySummary | None = None,
        status_probes: int = 0,
    ) -> MetricsSample:
        """The sample numbered ``seq``; remembers this reading for the next one.

        ``latency`` is the window of the server's synthetic requests, when it
        is probed; ``status_probes`` the Status-Server requests sent to it so far.
        """
        counts: dict[str, int] = {}
        amounts: dict[str, float] = {}
        sources: dict[str, str] = {}
        errors = list(status.errors)

        current = None
        if process.pid is not None and process.thread_times is not None:
            current = ThreadTimes(process.pid, process.thread_times)
        busy, busy_note = busy_threads(self.threads, current)
        if current is not None:
            self.threads = current

        if status.ok:
            for name, value in status.figures.items():
                counts[name] = value
                sources[name] = STATUS_SERVER
            missing = [a for a in status.missing if a not in THREAD_ATTRIBUTES]
            if "threads_total" not in counts and process.process_threads is not None:
                counts["threads_total"] = process.process_threads
                sources["threads_total"] = PROCESS
            if "threads_active" not in counts:
                if busy is not None:
                    counts["threads_active"] = busy
                    sources["threads_active"] = PROCESS
                elif busy_note is not None:
                    errors.append(busy_note)
            if "threads_max" not in counts:
                if self.limit.value is not None:
                    counts["threads_max"] = self.limit.value
                    sources["threads_max"] = self.limit.source
                else:
                    errors.append(
                        self.limit.error
                        or "threads_max: not in the status reply, and neither threads_max "
                        "nor radiusd_conf is configured"
                    )
            if missing:
                errors.append("status reply lacks " + ", ".join(missing))
            found, notes = rates(self.counters, status.counters)
            for name, rate in found.items():
                amounts[name] = rate
                sources[name] = STATUS_SERVER
            errors.extend(notes)
            if status.counters is not None and status.counters.values:
                self.counters = status.counters
                self._outstanding(status.counters, status_probes, counts, amounts, sources, errors)

        for name, number in (
            ("process_threads", process.process_threads),
            ("process_tree_count", process.process_tree_count),
        ):
            if number is not None:
                counts[name] = number
                sources[name] = PROCESS
        for name, amount in (
            ("memory_percent", process.memory_percent),
            ("cpu_percent", process.cpu_percent),
        ):
            if amount is not None:
                amounts[name] = amount
                sources[name] = PROCESS
        if process.process_count is not None:
            counts["process_count"] = process.process_count
            sources["process_count"] = HOST
        errors.extend(process.errors)
        if latency is not None:
            _latency_figures(latency, counts, amounts, sources, errors)

        return MetricsSample(
            source=source,
            server=self.server,
            seq=seq,
            status_ok=status.ok,
            threads_active=counts.get("threads_active"),
            threads_total=counts.get("threads_total"),
            threads_max=counts.get("threads_max"),
            queue_len=counts.get("queue_len"),
            queue_len_internal=counts.get("queue_len_internal"),
            queue_len_acct=counts.get("queue_len_acct"),
            queue_len_proxy=counts.get("queue_len_proxy"),
            queue_len_detail=counts.get("queue_len_detail"),
            pps_in=counts.get("pps_in"),
            pps_out=counts.get("pps_out"),
            services=list(services or []),
            access_requests_per_s=amounts.get("access_requests_per_s"),
            auth_responses_per_s=amounts.get("auth_responses_per_s"),
            acct_requests_per_s=amounts.get("acct_requests_per_s"),
            acct_responses_per_s=amounts.get("acct_responses_per_s"),
            process_threads=counts.get("process_threads"),
            memory_percent=amounts.get("memory_percent"),
            cpu_percent=amounts.get("cpu_percent"),
            process_count=counts.get("process_count"),
            process_tree_count=counts.get("process_tree_count"),
            probes=counts.get("probes"),
            probes_slow=counts.get("probes_slow"),
            probes_failed=counts.get("probes_failed"),
            probe_latency_p50_s=amounts.get("probe_latency_p50_s"),
            probe_latency_p90_s=amounts.get("probe_latency_p90_s"),
            probe_latency_max_s=amounts.get("probe_latency_max_s"),
            outstanding=counts.get("outstanding"),
            outstanding_latency_s=amounts.get("outstanding_latency_s"),
            sources=sources,
            errors=errors,
        )

    def _outstanding(
        self,
        counters: Counters,
        status_probes: int,
        counts: dict[str, int],
        amounts: dict[str, float],
        sources: dict[str, str],
        errors: list[str],
    ) -> None:
        """The requests in flight, from the counters, capped by what the server can hold.

        That is the threads busy plus the queue when the server says how many
        of its threads are busy (``threads_active`` from Status-Server), else
        all its threads plus the queue: ``threads_active`` read from the
        process counts only threads that used CPU, and a thread waiting on a
        backend uses none.
        """
        queue = counts.get("queue_len") or 0
        if sources.get("threads_active") == STATUS_SERVER:
            held = counts.get("threads_active")
        else:
            held = counts.get("threads_total")
        cap = None if held is None else held + queue
        backlog = self.backlog.update(counters.at, counters.values, status_probes, cap)
        if backlog.note is not None:
            errors.append(backlog.note)
        if backlog.outstanding is not None:
            counts["outstanding"] = backlog.outstanding
            sources["outstanding"] = COUNTERS_SOURCE
        if backlog.latency_s is not None:
            amounts["outstanding_latency_s"] = backlog.latency_s
            sources["outstanding_latency_s"] = COUNTERS_SOURCE


def _latency_figures(
    latency: LatencySummary,
    counts: dict[str, int],
    amounts: dict[str, float],
    sources: dict[str, str],
    errors: list[str],
) -> None:
    """The probe window's figures, or why there are none."""
    if latency.count == 0:
        errors.append("latency: no probe decided in the window yet")
    else:
        counts.update(probes=latency.count, probes_slow=latency.slow, probes_failed=latency.failed)
        for name in ("probes", "probes_slow", "probes_failed"):
            sources[name] = PROBES
    for name, value in (
        ("probe_latency_p50_s", latency.p50_s),
        ("probe_latency_p90_s", latency.p90_s),
        ("probe_latency_max_s", latency.max_s),
    ):
        if value is not None:
            amounts[name] = value
            sources[name] = PROBES
    errors.extend(f"latency: probe {error}" for error in latency.errors)
