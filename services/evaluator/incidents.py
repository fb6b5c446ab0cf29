"""The incident state machine of one server, with hysteresis.

``healthy`` turns ``overloaded`` (an incident opens) after
``failover_samples`` consecutive samples below the failover threshold;
``overloaded`` turns ``recovering`` after ``recovery_samples`` consecutive
samples at or above the connection threshold; ``recovering`` relapses to
``overloaded`` (the same incident, one more relapse) on ``failover_samples``
consecutive lows, or closes when readmission has finished. A sample that
breaks a run resets its counter, so health between the thresholds holds the
state where it is.

Predictive onset (``predict_horizon_s`` above 0): while ``healthy``, a sample
between the thresholds also counts as low when the health trend is about to
cross the failover threshold (:func:`predicted_low`): the least-squares line
through the last ``predict_samples`` (time, health) points falls by at least
``predict_min_drop`` across them, health fell since the previous sample,
and the line reaches the threshold within the horizon. A sample at or
above the connection threshold never counts, so a server noisy around a high
value is never predicted; relapses and recovery use the thresholds alone. The
points are kept in the state, so a restart keeps the trend.

Pure: :func:`step` and :func:`close` return a new state and the transition it
made, if any. A state is a frozen msgspec Struct, stored as JSON in KV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from schemas.events import Incident, IncidentState, new_id
from services.runtime.config import EvaluatorConfig

Phase = Literal["healthy", "overloaded", "recovering"]

Point = tuple[float, float]
"""One sample's (time, health)."""


class ServerState(msgspec.Struct, frozen=True, kw_only=True):
    """Where one server is in the machine, and its current incident if any."""

    server: str
    phase: Phase = "healthy"
    incident_id: str | None = None
    opened_at: float | None = None
    relapses: int = 0
    lows: int = 0
    highs: int = 0
    health: float | None = None
    changed_at: float = 0.0
    # Added with predictive onset; the defaults let states stored before it load.
    predicted: int = 0
    recent: tuple[Point, ...] = ()
    # Stored only by earlier versions, which wrote a change here before they published it:
    # what a state loaded with one still holds is published at start.
    outbox: tuple[Incident, ...] = ()

    def __post_init__(self) -> None:
        in_incident = self.phase != "healthy"
        if in_incident != (self.incident_id is not None and self.opened_at is not None):
            raise ValueError(f"phase {self.phase!r} does not agree with incident_id/opened_at")
        if self.relapses < 0 or self.lows < 0 or self.highs < 0 or self.predicted < 0:
            raise ValueError("counters must not be negative")
        if self.predicted > self.lows:
            raise ValueError("more predicted lows than lows")


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A change of an incident, to be published as an Incident event.

    ``reason`` says why in one line; ``predicted`` counts the samples of an
    opening that were low by the health trend rather than below the threshold.
    """

    state: IncidentState
    incident_id: str
    opened_at: float
    relapses: int
    health: float
    reason: str = ""
    predicted: int = 0


class Trend(msgspec.Struct, frozen=True, kw_only=True):
    """The least-squares line through recent (time, health) points, seen from the last one.

    ``slope`` is health per second, ``fitted`` the line's health at the last
    point, ``drop`` how much it falls from the first point to the last (negative
    when it rises), ``crosses_in`` the seconds from the last point until it
    reaches the threshold it was fitted against (0 if already below; None if
    it does not fall).
    """

    slope: float
    fitted: float
    drop: float
    crosses_in: float | None

    def describe(self, health: float, threshold: float) -> str:
        """``health 0.45 falling 0.40/s, crosses 0.20 in 0.6s``."""
        return (
            f"health {health:.2f} falling {-self.slope:.2f}/s, "
            f"crosses {threshold:.2f} in {self.crosses_in or 0.0:.1f}s"
        )


def fit(points: Sequence[Point], threshold: float) -> Trend | None:
    """The line through ``points`` by least squares, or None with fewer than two distinct times."""
    if len(points) < 2:
        return None
    t0, now = points[0][0], points[-1][0]
    n = len(points)
    mean_t = sum(t - t0 for t, _ in points) / n
    mean_h = sum(h for _, h in points) / n
    var = sum((t - t0 - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return None
    slope = sum((t - t0 - mean_t) * (h - mean_h) for t, h in points) / var
    fitted = mean_h + slope * (now - t0 - mean_t)
    crosses_in = None if slope >= 0 else max(0.0, (fitted - threshold) / -slope)
    return Trend(slope=slope, fitted=fitted, drop=-slope * (now - t0), crosses_in=crosses_in)


def predicted_low(points: Sequence[Point], cfg: EvaluatorConfig) -> Trend | None:
    """The trend that makes the last of ``points`` low by prediction, or None.

    Only with prediction on, a full window of ``predict_samples`` points, the
    last health between the thresholds (below the failover threshold it is low
    anyway; at or above the connection threshold it is healthy), below the
    previous one (a step down that then holds stops counting at once), and the
    fitted line falling by ``predict_min_drop`` or more and reaching the
    failover threshold within ``predict_horizon_s``.
    """
    if cfg.predict_horizon_s <= 0 or len(points) < cfg.predict_samples:
        return None
    health = points[-1][1]
    if not cfg.failover_threshold <= health < cfg.connection_threshold:
        return None
    if health >= points[-2][1]:
        return None
    trend = fit(points[-cfg.predict_samples :], cfg.failover_threshold)
    if trend is None or trend.crosses_in is None or trend.drop < cfg.predict_min_drop:
        return None
    return trend if trend.crosses_in <= cfg.predict_horizon_s else None


def _recent(
    state: ServerState, health: float, now: float, cfg: EvaluatorConfig
) -> tuple[Point, ...]:
    """The points the trend is fitted on, with this sample last (none while prediction is off).

    Points not before ``now`` (a clock set back) are dropped.
    """
    if cfg.predict_horizon_s <= 0:
        return ()
    kept = [p for p in state.recent if p[0] < now]
    return (*kept[-(cfg.predict_samples - 1) :], (now, health))


def is_low(health: float, cfg: EvaluatorConfig) -> bool:
    """Below the failover threshold (the threshold itself is not low)."""
    return health < cfg.failover_threshold


def is_high(health: float, cfg: EvaluatorConfig) -> bool:
    """At or above the connection threshold."""
    return health >= cfg.connection_threshold


def step(
    state: ServerState,
    health: float,
    now: float,
    cfg: EvaluatorConfig,
    make_id: Callable[[], str] = new_id,
) -> tuple[ServerState, Transition | None]:
    """Feed one sample's health to the machine."""
    low, high = is_low(health, cfg), is_high(health, cfg)
    recent = _recent(state, health, now, cfg)
    trend = predicted_low(recent, cfg) if state.phase == "healthy" and not low else None
    counted = low or trend is not None
    lows = state.lows + 1 if counted else 0
    predicted = state.predicted + (trend is not None) if counted else 0
    highs = state.highs + 1 if high else 0

    if state.phase == "healthy" and lows >= cfg.failover_samples:
        incident_id = make_id()
        new = msgspec.structs.replace(
            state,
            phase="overloaded",
            incident_id=incident_id,
            opened_at=now,
            relapses=0,
            lows=0,
            highs=0,
            predicted=0,
            health=health,
            changed_at=now,
            recent=recent,
        )
        return new, Transition(
            state="opened",
            incident_id=incident_id,
            opened_at=now,
            relapses=0,
            health=health,
            reason=_opening_reason(health, trend, predicted, lows, cfg),
            predicted=predicted,
        )

    if state.phase == "overloaded" and highs >= cfg.recovery_samples:
        new = msgspec.structs.replace(
            state,
            phase="recovering",
            lows=0,
            highs=0,
            predicted=0,
            health=health,
            changed_at=now,
            recent=recent,
        )
        reason = (
            f"health {health:.2f} at or above {cfg.connection_threshold:.2f} for {_samples(highs)}"
        )
        return new, _transition(new, "recovering", health, reason)

    if state.phase == "recovering" and lows >= cfg.failover_samples:
        new = msgspec.structs.replace(
            state,
            phase="overloaded",
            relapses=state.relapses + 1,
            lows=0,
            highs=0,
            predicted=0,
            health=health,
            changed_at=now,
            recent=recent,
        )
        reason = f"health {health:.2f} below {cfg.failover_threshold:.2f} for {_samples(lows)}"
        return new, _transition(new, "opened", health, reason)

    new = msgspec.structs.replace(
        state, lows=lows, highs=highs, predicted=predicted, health=health, recent=recent
    )
    return new, None


def _samples(n: int) -> str:
    return f"{n} sample{'' if n == 1 else 's'}"


def _opening_reason(
    health: float, trend: Trend | None, predicted: int, lows: int, cfg: EvaluatorConfig
) -> str:
    """Why an incident opens: health below the threshold, or its trend about to cross it."""
    threshold = cfg.failover_threshold
    if trend is not None:
        return f"{trend.describe(health, threshold)} ({predicted} of {_samples(lows)} predicted)"
    reason = f"health {health:.2f} below {threshold:.2f} for {_samples(lows)}"
    return f"{reason}, {predicted} of them predicted" if predicted else reason


def close(
    state: ServerState, incident_id: str, health: float, now: float
) -> tuple[ServerState, Transition | None]:
    """Close the recovering incident ``incident_id``: its readmission has finished.

    Anything else (another incident, or one not recovering) is left as it is.
    """
    if state.phase != "recovering" or state.incident_id != incident_id:
        return state, None
    transition = _transition(state, "closed", health, "readmission finished")
    healthy = ServerState(server=state.server, health=health, changed_at=now, recent=state.recent)
    return healthy, transition


def resume(state: ServerState, incident: Incident) -> ServerState:
    """``state`` brought up to ``incident``, the last change of its server the stream has,
    when the state was stored before it (an evaluator that stopped after it published the
    change and before it stored its state). A change it already holds leaves it as it is.

    The machine takes the incident's phase, id, opening and relapses, with its run
    counters reset; its trend points are kept.
    """
    if incident.server != state.server or incident.time <= state.changed_at:
        return state
    if incident.state == "closed":
        return ServerState(
            server=state.server,
            health=incident.health,
            changed_at=incident.time,
            recent=state.recent,
        )
    return ServerState(
        server=state.server,
        phase="overloaded" if incident.state == "opened" else "recovering",
        incident_id=incident.incident_id,
        opened_at=incident.opened_at,
        relapses=incident.relapses,
        health=incident.health,
        changed_at=incident.time,
        recent=state.recent,
    )


def _transition(state: ServerState, kind: IncidentState, health: float, reason: str) -> Transition:
    assert state.incident_id is not None and state.opened_at is not None
    return Transition(
        state=kind,
        incident_id=state.incident_id,
        opened_at=state.opened_at,
        relapses=state.relapses,
        health=health,
        reason=reason,
    )
