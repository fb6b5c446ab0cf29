"""How a what-if is shown: the recorded and simulated outcomes side by side, a summary in
words, or both as JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from services.tools.whatif.outcome import Outcome, WaveOutcome

HEALTH_NOTE = (
    "Health is as recorded: the simulation cannot know how load would have moved "
    "under other decisions."
)

NAMES_SHOWN = 6
"""The most client names one cell lists; the rest are counted."""


def _at(value: float | None, start: float) -> str:
    return "never" if value is None else f"{value - start:.1f} s"


def _clients(clients: Sequence[str]) -> str:
    if not clients:
        return "0"
    names = ", ".join(clients[:NAMES_SHOWN])
    more = f", +{len(clients) - NAMES_SHOWN} more" if len(clients) > NAMES_SHOWN else ""
    return f"{len(clients)}: {names}{more}"


def _wave(wave: WaveOutcome | None, start: float) -> str:
    if wave is None:
        return "-"
    return f"{_at(wave.at, start)}: {_clients(wave.clients)}{' (final)' if wave.final else ''}"


def _number(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def _threshold(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _rows(rec: Outcome, sim: Outcome, start: float) -> list[tuple[str, str, str]]:
    def both(label: str, show: Callable[[Outcome], str]) -> tuple[str, str, str]:
        return label, show(rec), show(sim)

    rows = [
        both("incident", lambda o: o.incident_id or "none"),
        both("failover threshold", lambda o: _threshold(o.failover_threshold)),
        both("connection threshold", lambda o: _threshold(o.connection_threshold)),
        both("onset detected", lambda o: _at(o.onset_at, start)),
        both("first client moved", lambda o: _at(o.first_move_at, start)),
        both("lowest health", lambda o: _number(o.lowest_health, 3)),
        both("clients moved", lambda o: _clients(o.clients_moved)),
        both("steps", lambda o: str(o.steps)),
        both("waves", lambda o: str(len(o.waves))),
    ]
    for n in range(max(len(rec.waves), len(sim.waves))):
        rows.append(
            (
                f"  wave {n + 1}",
                _wave(rec.waves[n] if n < len(rec.waves) else None, start),
                _wave(sim.waves[n] if n < len(sim.waves) else None, start),
            )
        )
    rows += [
        both("re-overloads", lambda o: str(o.re_overloads)),
        both("recovering", lambda o: _at(o.recovering_at, start)),
        both("closed", lambda o: _at(o.closed_at, start)),
        both("further incidents", lambda o: str(o.further_incidents)),
    ]
    return rows


def _shift(what: str, rec: float | None, sim: float | None) -> str | None:
    """How a time moved, in words, or None when it did not (to 0.1 s)."""
    if rec is None and sim is None:
        return None
    if sim is None:
        return f"{what} never"
    if rec is None:
        return f"{what} although it never did in the recording"
    delta = round(sim - rec, 1)
    if delta == 0:
        return None
    return f"{what} {abs(delta):.1f} s {'later' if delta > 0 else 'earlier'}"


MOVE_LAG_S = 0.25
"""How much later than its onset a recorded first move may come and still be at the onset:
the services' own latency from a sample to its plan, which the simulation does not have."""


def _moves_apart(rec: Outcome, sim: Outcome) -> bool:
    """Whether the first move is not as far from the onset in both (said only then: an
    onset predicted on the health trend moves no one until health is below the threshold)."""

    def lag(o: Outcome) -> float | None:
        return (
            None if o.first_move_at is None or o.onset_at is None else o.first_move_at - o.onset_at
        )

    rec_lag, sim_lag = lag(rec), lag(sim)
    if rec_lag is None or sim_lag is None:
        return False  # one side moves no one: the count of clients moved says so
    return abs(rec_lag - sim_lag) > MOVE_LAG_S


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(rec: Outcome, sim: Outcome, settings: Sequence[str]) -> str:
    """One or two sentences: what the settings change compared with the recording."""
    head = f"With {', '.join(settings)}" if settings else "With the live settings"
    if sim.onset_at is None:
        threshold = _threshold(sim.failover_threshold)
        samples = sim.failover_samples or 1
        held = "fell below" if samples == 1 else "stayed below"
        span = "" if samples == 1 else f" for {samples} samples"
        lowest = "" if sim.lowest_health is None else f" (lowest {sim.lowest_health:.3f})"
        first = f"{head} the onset is never detected: health never {held} {threshold}{span}{lowest}"
        if sim.predict_horizon_s:
            first += f", nor did its trend cross it within {sim.predict_horizon_s:g} s"
        moved = len(rec.clients_moved)
        return f"{first}. No client moves ({_count(moved, 'client', 'clients')} in the recording)."
    if rec.onset_at is None:
        first = f"{head} the onset is detected although the recording has none"
    else:
        first = f"{head} " + (
            _shift("the onset is detected", rec.onset_at, sim.onset_at)
            or "the onset is detected at the same time"
        )
    if sim.onset_predicted:
        first += f", on the health trend: {sim.onset_reason}"
    changes: list[str] = []
    if sim.clients_moved != rec.clients_moved:
        if len(sim.clients_moved) != len(rec.clients_moved):
            changes.append(
                f"{_count(len(sim.clients_moved), 'client moves', 'clients move')} "
                f"instead of {len(rec.clients_moved)}"
            )
        elif set(sim.clients_moved) == set(rec.clients_moved):
            changes.append("the same clients move in another order")
        else:
            changes.append(f"as many clients move ({len(sim.clients_moved)}) but not the same ones")
    if sim.steps != rec.steps:
        changes.append(f"in {_count(sim.steps, 'step', 'steps')} instead of {rec.steps}")
    if len(sim.waves) != len(rec.waves):
        changes.append(
            f"{_count(len(sim.waves), 'readmission wave', 'readmission waves')} "
            f"instead of {len(rec.waves)}"
        )
    if sim.re_overloads != rec.re_overloads:
        changes.append(
            f"{_count(sim.re_overloads, 're-overload', 're-overloads')} "
            f"instead of {rec.re_overloads}"
        )
    if _moves_apart(rec, sim):
        shift = _shift("the first client moves", rec.first_move_at, sim.first_move_at)
        changes.append(shift or "the first client moves at the same time")
    for what, r, s in (
        ("recovery starts", rec.recovering_at, sim.recovering_at),
        ("the incident closes", rec.closed_at, sim.closed_at),
    ):
        shift = _shift(what, r, s)
        if shift is not None:
            changes.append(shift)
    if sim.further_incidents != rec.further_incidents:
        changes.append(
            f"{_count(sim.further_incidents, 'further incident', 'further incidents')} "
            f"instead of {rec.further_incidents}"
        )
    if not changes:
        return f"{first}. Everything else is as recorded."
    rest = ", ".join(changes[:-1]) + (" and " if len(changes) > 1 else "") + changes[-1]
    return f"{first}. {rest[0].upper()}{rest[1:]}."


def side_by_side(
    recorded: Outcome, simulated: Outcome, *, settings: Sequence[str], start: float
) -> str:
    """A plain-text table of both outcomes (times in seconds after ``start``) and a summary."""
    when = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds")
    rows = [("", "recorded", "what-if"), *_rows(recorded, simulated, start)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [
        f"what-if for server {recorded.server}: times in seconds after {when}",
        f"settings: {' '.join(settings) if settings else 'as live'}",
        "",
    ]
    for label, rec, sim in rows:
        lines.append(f"{label:<{widths[0]}}  {rec:<{widths[1]}}  {sim}".rstrip())
    lines += ["", HEALTH_NOTE, summary(recorded, simulated, settings)]
    return "\n".join(lines)


def to_json(recorded: Outcome, simulated: Outcome, settings: Sequence[str]) -> dict[str, Any]:
    """Both outcomes, the settings, the health note and the summary, as JSON-ready data."""
    return {
        "settings": list(settings),
        "recorded": msgspec.to_builtins(recorded),
        "simulated": msgspec.to_builtins(simulated),
        "note": HEALTH_NOTE,
        "summary": summary(recorded, simulated, settings),
    }
