"""The health function: one score in [0, 1] from one metrics sample of one server.

Each part is a headroom in [0, 1] (1 = idle, 0 = exhausted) computed only
from figures the sample actually holds; a figure that could not be read never
counts as healthy. A server that does not answer Status-Server, or whose
mandatory service is down, has health 0 whatever its other figures say.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.events import MetricsSample
from services.runtime.config import EvaluatorConfig, ServerConfig

logger = logging.getLogger(__name__)

RESOURCE_PARTS = ("threads", "queue", "memory", "cpu", "processes")
"""The resource parts, in the order they are reported."""

DEPENDENT_PREFIX = "dependent:"
"""Prefix of the part of a dependent service (weighted rule only)."""

DEPENDENT_WEIGHT = 1.0
"""Weight of each dependent-service part in the weighted rule."""


@dataclass(frozen=True)
class Health:
    """The score of one sample: the health, its parts, the part that limits it and why."""

    health: float
    parts: Mapping[str, float] = field(default_factory=dict)
    limiting: str = ""
    reason: str = ""


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


def _weight(cfg: EvaluatorConfig, part: str) -> float:
    if part.startswith(DEPENDENT_PREFIX):
        return DEPENDENT_WEIGHT
    weight: float = getattr(cfg.weights, part)
    return weight


def score(sample: MetricsSample, server: ServerConfig, cfg: EvaluatorConfig) -> Health:
    """The health of ``server`` as ``sample`` shows it, under the rule of ``cfg``.

    Rule ``min``: the lowest part. Rule ``weighted``: the mean of the parts
    weighted by ``cfg.weights`` (a weight of 0 leaves a part out), where each
    dependent service is one more part, 1 when up and 0 when down. Under
    ``min`` a dependent service that is down is named in the reason only.
    """
    parts = resource_parts(sample, server, cfg)
    unknown = [p for p in RESOURCE_PARTS if p not in parts]
    dependents_down = [c.name for c in sample.services if c.kind == "dependent" and not c.ok]
    notes: list[str] = []
    if unknown:
        notes.append("unknown: " + ", ".join(unknown))

    if not sample.status_ok:
        detail = "; ".join(sample.errors) if sample.errors else "no answer"
        return Health(0.0, parts, "status", f"status: Status-Server failed ({detail})")

    down = [c for c in sample.services if c.kind == "mandatory" and not c.ok]
    if down:
        first = down[0]
        names = ", ".join(c.name for c in down)
        detail = f": {first.detail}" if first.detail else ""
        return Health(0.0, parts, f"service:{first.name}", f"mandatory down: {names}{detail}")

    if cfg.rule == "weighted":
        parts = {p: v for p, v in parts.items() if _weight(cfg, p) > 0}
        for check in sample.services:
            if check.kind == "dependent":
                parts[DEPENDENT_PREFIX + check.name] = 1.0 if check.ok else 0.0
    elif dependents_down:
        notes.append("dependent down (not scored by rule min): " + ", ".join(dependents_down))

    if not parts:
        return Health(0.0, parts, "", "; ".join(["no health parts known", *notes]))

    limiting = min(parts, key=lambda p: parts[p])
    if cfg.rule == "weighted":
        total = sum(_weight(cfg, p) for p in parts)
        health = _clamp(sum(_weight(cfg, p) * v for p, v in parts.items()) / total)
        head = f"weighted {health:.3f}, lowest {limiting} {parts[limiting]:.3f}"
    else:
        health = parts[limiting]
        head = f"min: {limiting} {health:.3f}"
    return Health(health, parts, limiting, "; ".join([head, *notes]))
