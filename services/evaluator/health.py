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

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from schemas.events import MetricsSample, ServiceCheck
from services.runtime.config import CheckBase, EvaluatorConfig, HealthRule, ServerConfig

logger = logging.getLogger(__name__)

RESOURCE_PARTS = ("threads", "queue", "memory", "cpu", "processes")
"""The resource parts, in the order they are reported."""

DEFAULT_PENALTY: float = next(
    f.default for f in msgspec.structs.fields(CheckBase) if f.name == "weight"
)
"""What a failed dependent service takes off when the server's config does not name it."""


@dataclass(frozen=True)
class Health:
    """The score of one sample: the health, its parts and penalties, what decided it and why."""

    health: float
    parts: Mapping[str, float] = field(default_factory=dict)
    limiting: str = ""
    reason: str = ""
    penalties: Mapping[str, float] = field(default_factory=dict)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def resource_parts(
    sample: MetricsSample, server: ServerConfig, cfg: EvaluatorConfig
) -> dict[str, float]:
    """The resource headrooms whose inputs the sample holds."""
    parts: dict[str, float] = {}
    threads_max = sample.threads_max if sample.threads_max is not None else server.threads_max
    if sample.threads_active is not None and threads_max is not None and threads_max > 0:
        parts["threads"] = _clamp((threads_max - sample.threads_active) / threads_max)
    if sample.queue_len is not None and server.queue_max > 0:
        parts["queue"] = _clamp(1 - min(sample.queue_len, server.queue_max) / server.queue_max)
    if sample.memory_percent is not None:
        parts["memory"] = _clamp(1 - sample.memory_percent / 100)
    if sample.cpu_percent is not None:
        parts["cpu"] = _clamp(1 - min(sample.cpu_percent, 100.0) / 100)
    if sample.process_count is not None and cfg.max_processes > 0:
        count = min(sample.process_count, cfg.max_processes)
        parts["processes"] = _clamp(1 - count / cfg.max_processes)
    return parts


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
    weights = {c.name: c.weight for c in server.services}
    found: dict[str, Penalty] = {}
    for check in sample.services:
        if check.kind != "dependent" or check.ok or check.name in found:
            continue
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


def score(sample: MetricsSample, server: ServerConfig, cfg: EvaluatorConfig) -> Health:
    """The health of ``server`` as ``sample`` shows it, under the server's health rule.

    Rule ``min``: the lowest part. Rule ``weighted``: the mean of the parts
    weighted by the rule's weights (a weight of 0 leaves a part out). Then
    health = max(0, combined parts - the sum of the failed dependent services'
    weights). ``limiting`` is the deciding part, or ``penalty:<name>`` when the
    penalties take off more than the parts do.
    """
    rule = cfg.health_rule(server)
    parts = resource_parts(sample, server, cfg)
    failed = dependent_penalties(sample, server)
    taken = {p.name: p.weight for p in failed}

    if not sample.status_ok:
        detail = "; ".join(sample.errors) if sample.errors else "no answer"
        return Health(0.0, parts, "status", f"Status-Server failed ({detail})", taken)

    down = [c for c in sample.services if c.kind == "mandatory" and not c.ok]
    if down:
        return _mandatory_down(down, parts, taken)

    unknown = [p for p in RESOURCE_PARTS if p not in parts]
    if rule.rule == "weighted":
        parts = {p: v for p, v in parts.items() if _weight(rule, p) > 0}
    notes = [p.describe() for p in failed]
    if unknown:
        notes.append("unknown: " + ", ".join(unknown))
    if not parts:
        return Health(0.0, parts, "", "; ".join(["no health parts known", *notes]), taken)

    combined, deciding, head = _combine(rule, parts)
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
    return Health(health, parts, limiting, "; ".join([head, *notes]), taken)


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
    part = min(parts, key=lambda p: parts[p])
    return parts[part], part, f"min of {count}: {part} {parts[part]:.2f}"


def deficit(health: float, failover_threshold: float) -> float:
    """How far health is below the failover threshold, as a share of it (0 when not below)."""
    if failover_threshold <= 0 or health >= failover_threshold:
        return 0.0
    return min(1.0, (failover_threshold - health) / failover_threshold)
