"""The health function: one score in [0, 1] from one metrics sample of one server.

Each part is a headroom in [0, 1] (1 = idle, 0 = exhausted) computed only
from figures the sample actually holds; a figure that could not be read never
counts as healthy. The parts combine by the server's own rule (or the
evaluator's default): their minimum, or their weighted mean. Each failed
dependent service then takes its configured weight off. A server that does
not answer Status-Server, or whose mandatory service is down, has health 0
whatever its other figures say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from schemas.events import MetricsSample, ServiceCheck
from services.runtime.config import CheckBase, EvaluatorConfig, HealthRule, ServerConfig

RESOURCE_PARTS = ("threads", "queue", "memory", "cpu", "processes")
"""The resource parts, in the order they are reported."""

_WITH_LATENCY = (*RESOURCE_PARTS, "latency")
"""The parts a server with a latency probe is expected to have."""

REQUEST_PARTS = ("latency", "outstanding", "clients")
"""The request-path parts: the collector's probes, the server's counters, the agents' view."""

PART_SOURCES = {
    "queue": "queue_len",
    "memory": "memory_percent",
    "cpu": "cpu_percent",
    "processes": "process_count",
    "latency": "probes",
    "outstanding": "outstanding",
}
"""The sample figure whose ``sources`` entry says where each part was read."""

WHY_UNKNOWN = {
    "threads": ("process", "threads_active", "threads_max"),
    "memory": ("process",),
    "cpu": ("process",),
    "latency": ("latency",),
    "outstanding": ("outstanding",),
}
"""The prefixes of the sample's errors that say why a part is unknown."""

DEFAULT_PENALTY: float = next(
    f.default for f in msgspec.structs.fields(CheckBase) if f.name == "weight"
)
"""What a failed dependent service takes off when the server's config does not name it."""


class Health(msgspec.Struct, frozen=True):
    """The score of one sample: the health, its parts and penalties, what decided it and why.

    ``sources`` says where each part was read. (A Struct rather than a frozen dataclass:
    one is made per sample, and a frozen dataclass sets each field through
    ``object.__setattr__``.)
    """

    health: float
    parts: Mapping[str, float] = msgspec.field(default_factory=dict)
    limiting: str = ""
    reason: str = ""
    penalties: Mapping[str, float] = msgspec.field(default_factory=dict)
    sources: Mapping[str, str] = msgspec.field(default_factory=dict)


class Parts:
    """Headrooms by part, where each was read, and a few words on the figures behind some."""

    __slots__ = ("details", "sources", "values")

    def __init__(
        self,
        values: dict[str, float] | None = None,
        sources: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        self.values: dict[str, float] = {} if values is None else values
        self.sources: dict[str, str] = {} if sources is None else sources
        self.details: dict[str, str] = {} if details is None else details

    def add(self, name: str, value: float, source: str, detail: str = "") -> None:
        self.values[name] = _clamp(value)
        self.sources[name] = source
        if detail:
            self.details[name] = detail


def _clamp(value: float) -> float:
    """``value`` within [0, 1], NaN as 0: ``min(1.0, max(0.0, value))`` without the calls."""
    if value > 0.0:
        return value if value < 1.0 else 1.0
    return 0.0


def _threads_max(sample: MetricsSample, server: ServerConfig) -> int | None:
    threads_max = sample.threads_max if sample.threads_max is not None else server.threads_max
    return threads_max if threads_max is not None and threads_max > 0 else None


def resource_parts(
    sample: MetricsSample, server: ServerConfig, cfg: EvaluatorConfig
) -> dict[str, float]:
    """The resource headrooms whose inputs the sample holds."""
    return sample_parts(sample, server, cfg).values


def sample_parts(sample: MetricsSample, server: ServerConfig, cfg: EvaluatorConfig) -> Parts:
    """Every headroom whose inputs the sample holds: the resources, then the request path.

    Written out rather than through :meth:`Parts.add`: it runs on every sample."""
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    where = sample.sources
    threads_max = _threads_max(sample, server)
    if sample.threads_active is not None and threads_max is not None:
        values["threads"] = _clamp((threads_max - sample.threads_active) / threads_max)
        sources["threads"] = where.get("threads_active", "")
    if sample.queue_len is not None and server.queue_max > 0:
        queue = min(sample.queue_len, server.queue_max)
        values["queue"] = _clamp(1 - queue / server.queue_max)
        sources["queue"] = where.get("queue_len", "")
    if sample.memory_percent is not None:
        values["memory"] = _clamp(1 - sample.memory_percent / 100)
        sources["memory"] = where.get("memory_percent", "")
    if sample.cpu_percent is not None:
        values["cpu"] = _clamp(1 - min(sample.cpu_percent, 100.0) / 100)
        sources["cpu"] = where.get("cpu_percent", "")
    if sample.process_count is not None and cfg.max_processes > 0:
        count = min(sample.process_count, cfg.max_processes)
        values["processes"] = _clamp(1 - count / cfg.max_processes)
        sources["processes"] = where.get("process_count", "")
    parts = Parts(values, sources)
    if server.probe is not None or sample.outstanding is not None:
        _request_parts(sample, server, parts, threads_max)
    return parts


def _request_parts(
    sample: MetricsSample, server: ServerConfig, parts: Parts, threads_max: int | None
) -> None:
    """The latency of the probes against the server's objective, and the requests in flight."""
    probe = server.probe
    if probe is not None and sample.probes and sample.probes_slow is not None:
        share = sample.probes_slow / sample.probes
        failed = f", {sample.probes_failed} unanswered" if sample.probes_failed else ""
        parts.add(
            "latency",
            1 - share / probe.tolerance,
            sample.sources.get("probes", "probes"),
            f"{sample.probes_slow} of {sample.probes} probes over {probe.objective_s:g}s{failed}",
        )
    if sample.outstanding is not None and threads_max is not None:
        implied = (
            f", ~{sample.outstanding_latency_s:.2g}s each"
            if sample.outstanding_latency_s is not None
            else ""
        )
        pool = f", pool grown to {sample.threads_total}" if sample.threads_total is not None else ""
        parts.add(
            "outstanding",
            1 - sample.outstanding / threads_max,
            sample.sources.get("outstanding", "counters"),
            f"{sample.outstanding} in flight for {threads_max} threads{pool}{implied}",
        )


@dataclass(frozen=True)
class Penalty:
    """What one failed dependent service takes off, and how to say it."""

    name: str
    weight: float
    configured: bool
    detail: str

    def describe(self) -> str:
        why = [] if self.configured else [f"not configured, default weight {DEFAULT_PENALTY:.2f}"]
        if self.detail:
            why.append(self.detail)
        return (
            f"dependent {self.name} down (-{self.weight:.2f}{': ' if why else ''}{'; '.join(why)})"
        )


def dependent_penalties(sample: MetricsSample, server: ServerConfig) -> list[Penalty]:
    """The failed dependent services of ``sample``, each with the weight ``server`` gives it."""
    found: dict[str, Penalty] = {}
    weights: dict[str, float] | None = None
    for check in sample.services:
        if check.kind != "dependent" or check.ok or check.name in found:
            continue
        if weights is None:
            weights = {c.name: c.weight for c in server.services}
        configured = check.name in weights
        weight = weights[check.name] if configured else DEFAULT_PENALTY
        found[check.name] = Penalty(check.name, weight, configured, check.detail)
    return list(found.values())


def _mandatory_down(
    down: list[ServiceCheck], parts: dict[str, float], taken: dict[str, float]
) -> Health:
    first = down[0]
    names = ", ".join(c.name for c in down)
    detail = f": {first.detail}" if first.detail else ""
    reason = f"mandatory {names} down{detail}"
    return Health(0.0, parts, f"service:{first.name}", reason, taken)


def score(
    sample: MetricsSample,
    server: ServerConfig,
    cfg: EvaluatorConfig,
    extra: Parts | None = None,
) -> Health:
    """The health of ``server`` as ``sample`` shows it, under the server's health rule.

    Rule ``min``: the lowest part. Rule ``weighted``: the mean of the parts
    weighted by the rule's weights (a weight of 0 leaves a part out). Then
    health = max(0, combined parts - the sum of the failed dependent services'
    weights). ``limiting`` is the deciding part, or ``penalty:<name>`` when the
    penalties take off more than the parts do. ``extra`` holds parts read
    outside the sample (the clients' view of the server).
    """
    rule = cfg.health_rule(server)
    found = sample_parts(sample, server, cfg)
    if extra is not None:
        for name, value in extra.values.items():
            found.add(name, value, extra.sources.get(name, ""), extra.details.get(name, ""))
    parts, sources = found.values, found.sources
    failed = dependent_penalties(sample, server)
    taken = {p.name: p.weight for p in failed}

    if not sample.status_ok:
        detail = "; ".join(e for e in sample.errors if e.startswith("status")) or "no answer"
        reason = "; ".join([f"Status-Server failed ({detail})", *_request_path(found)])
        return Health(0.0, parts, "status", reason, taken, sources)

    down = [c for c in sample.services if c.kind == "mandatory" and not c.ok]
    if down:
        return msgspec.structs.replace(_mandatory_down(down, parts, taken), sources=sources)

    expected = RESOURCE_PARTS if server.probe is None else _WITH_LATENCY
    unknown = [p for p in expected if p not in parts]
    if rule.rule == "weighted":
        parts = {p: v for p, v in parts.items() if _weight(rule, p) > 0}
        sources = {p: v for p, v in sources.items() if p in parts}
    notes = [p.describe() for p in failed]
    if unknown:
        notes.append("unknown: " + ", ".join(unknown) + _why_unknown(unknown, sample.errors))
    if not parts:
        reason = "; ".join(["no health parts known", *notes])
        return Health(0.0, parts, "", reason, taken, sources)

    combined, deciding, head = _combine(rule, parts)
    if deciding in found.details:
        head += f" ({found.details[deciding]})"
    total = sum(taken.values())
    health = _clamp(combined - total)
    limiting = deciding
    if total > 1.0 - combined:
        worst = max(failed, key=lambda p: p.weight)
        limiting = f"penalty:{worst.name}"
        notes[failed.index(worst)] += " limits"
    else:
        head += " limits"
    if failed:
        notes.insert(len(failed), f"{combined:.2f} - {total:.2f} = {health:.2f}")
    return Health(health, parts, limiting, "; ".join([head, *notes]), taken, sources)


def _request_path(found: Parts) -> list[str]:
    """The request-path parts that show trouble, in words: what the clients' requests meet."""
    return [
        f"{name} {found.values[name]:.2f} ({found.details[name]})"
        for name in REQUEST_PARTS
        if name in found.values and found.values[name] < 1.0 and name in found.details
    ]


def _why_unknown(unknown: list[str], errors: list[str]) -> str:
    """The sample's errors that say why the ``unknown`` parts are unknown, in brackets."""
    prefixes = {prefix for part in unknown for prefix in WHY_UNKNOWN.get(part, ())}
    why: list[str] = []
    for error in errors:
        if error.split(":", 1)[0] in prefixes and error not in why:
            why.append(error)
    return f" ({'; '.join(why[:2])})" if why else ""


def _weight(rule: HealthRule, part: str) -> float:
    weight: float = getattr(rule.weights, part)
    return weight


def _combine(rule: HealthRule, parts: dict[str, float]) -> tuple[float, str, str]:
    """The combined parts, the part that decides it, and the words for both."""
    count = f"{len(parts)} part{'s' if len(parts) != 1 else ''}"
    if rule.rule == "weighted":
        total = sum(_weight(rule, p) for p in parts)
        combined = _clamp(sum(_weight(rule, p) * v for p, v in parts.items()) / total)
        # The deciding part is the one whose shortfall costs the most; ties go to the lowest.
        part = max(parts, key=lambda p: (_weight(rule, p) * (1 - parts[p]), -parts[p]))
        head = f"weighted mean of {count} {combined:.2f}: {part} {parts[part]:.2f}"
        return combined, part, head
    part = min(parts, key=parts.__getitem__)
    return parts[part], part, f"min of {count}: {part} {parts[part]:.2f}"
