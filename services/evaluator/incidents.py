"""The incident state machine of one server, with hysteresis.

``healthy`` turns ``overloaded`` (an incident opens) after
``failover_samples`` consecutive samples below the failover threshold;
``overloaded`` turns ``recovering`` after ``recovery_samples`` consecutive
samples at or above the connection threshold; ``recovering`` relapses to
``overloaded`` (the same incident, one more relapse) on ``failover_samples``
consecutive lows, or closes when readmission has finished. A sample that
breaks a run resets its counter, so health between the thresholds holds the
state where it is.

Pure: :func:`step` and :func:`close` return a new state and the transition it
made, if any. A state is a frozen msgspec Struct, stored as JSON in KV.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import msgspec

from schemas.events import IncidentState, new_id
from services.runtime.config import EvaluatorConfig

logger = logging.getLogger(__name__)

Phase = Literal["healthy", "overloaded", "recovering"]


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

    def __post_init__(self) -> None:
        in_incident = self.phase != "healthy"
        if in_incident != (self.incident_id is not None and self.opened_at is not None):
            raise ValueError(f"phase {self.phase!r} does not agree with incident_id/opened_at")
        if self.relapses < 0 or self.lows < 0 or self.highs < 0:
            raise ValueError("counters must not be negative")


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A change of an incident, to be published as an Incident event."""

    state: IncidentState
    incident_id: str
    opened_at: float
    relapses: int
    health: float


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
    lows = state.lows + 1 if low else 0
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
            health=health,
            changed_at=now,
        )
        return new, Transition(
            state="opened", incident_id=incident_id, opened_at=now, relapses=0, health=health
        )

    if state.phase == "overloaded" and highs >= cfg.recovery_samples:
        new = msgspec.structs.replace(
            state, phase="recovering", lows=0, highs=0, health=health, changed_at=now
        )
        return new, _transition(new, "recovering", health)

    if state.phase == "recovering" and lows >= cfg.failover_samples:
        new = msgspec.structs.replace(
            state,
            phase="overloaded",
            relapses=state.relapses + 1,
            lows=0,
            highs=0,
            health=health,
            changed_at=now,
        )
        return new, _transition(new, "opened", health)

    return msgspec.structs.replace(state, lows=lows, highs=highs, health=health), None


def close(
    state: ServerState, incident_id: str, health: float, now: float
) -> tuple[ServerState, Transition | None]:
    """Close the recovering incident ``incident_id``: its readmission has finished.

    Anything else (another incident, or one not recovering) is left as it is.
    """
    if state.phase != "recovering" or state.incident_id != incident_id:
        return state, None
    transition = _transition(state, "closed", health)
    return ServerState(server=state.server, health=health, changed_at=now), transition


def _transition(state: ServerState, kind: IncidentState, health: float) -> Transition:
    assert state.incident_id is not None and state.opened_at is not None
    return Transition(
        state=kind,
        incident_id=state.incident_id,
        opened_at=state.opened_at,
        relapses=state.relapses,
        health=health,
    )
