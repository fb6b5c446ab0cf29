"""How many clients the next readmission wave brings back: pure, over plain data.

``fixed`` sizing sends ``wave_size`` clients every wave. ``adaptive`` sizing
measures what each wave cost and sizes the next one by it, as a slow start
that learns the server's slope:

- The first wave is small (``first_wave_size``).
- A wave's cost is the health it took per request/s it brought: the health
  when it went out (the level after the wave before, if there was one), less
  the level since, over the request rate of its clients. The level is the
  mean of the latest ``RECENT`` reports from ``settle_s`` after the wave:
  means, because one report is one sample of a busy count; from then,
  because a wave's load shows in the reports only as its clients' requests
  arrive and the server's figures catch up (on a reference server, whose
  busy count is a one-second mean, about 2 s), so earlier reports read
  short. A drop under ``NOISE`` is no measurable cost.
- The next wave waits for ``settle_reports`` such reports after the previous
  one, so that its cost is measured.
- Its clients are as many, in wave order, as their rates fit in the load
  that keeps health ``margin`` above the connection threshold at that cost;
  when health is within the margin already, in half the room left above the
  threshold. When every client still away fits above the threshold itself,
  they all go: the margin guards a wave against a short measure while more
  are to come, but with every client home the load is what it will be
  anyway (and a client held away comes home when its notice expires). With
  no measurable cost yet, it is ``growth`` times the previous wave; never
  more than that, nor more than ``max_wave_size``.
- A wave after which health (its level since) dipped below the connection
  threshold plus ``margin`` also halves the next (the health check of
  :mod:`waves` pauses them below the threshold itself).

A client's rate is its measured one (its agent's status), else its
configured one; a client of unknown rate counts as the mean of those known,
or 1 request/s when none is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec

from services.runtime.config import ReadmitterConfig

NOISE = 0.02
"""A health drop smaller than this is within a sample's noise: no measurable cost."""

RECENT = 3
"""The latest reports after a wave whose mean is its level of health."""


class WaveCost(msgspec.Struct, frozen=True, kw_only=True):
    """What one wave brought back and what health did after it."""

    wave: int
    clients: int
    load: float
    health_before: float | None
    at: float = 0.0
    reports: int = 0
    recent: tuple[float, ...] = ()

    @property
    def health_after(self) -> float | None:
        """The level of health since the wave: the mean of the latest reports."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def per_load(self) -> float | None:
        """Health lost per request/s brought; None when the drop is not measurable."""
        after = self.health_after
        if self.health_before is None or after is None or self.load <= 0:
            return None
        drop = self.health_before - after
        return drop / self.load if drop >= NOISE else None


class Size(msgspec.Struct, frozen=True, kw_only=True):
    """The next wave brings back ``clients`` clients, for ``reason``."""

    clients: int
    reason: str


class Measuring(msgspec.Struct, frozen=True, kw_only=True):
    """The previous wave's cost is not measured yet: no wave before it is."""

    reason: str


def observed(cost: WaveCost, health: float) -> WaveCost:
    """``cost`` with one more health report after its wave."""
    recent = (*cost.recent, health)[-RECENT:]
    return msgspec.structs.replace(cost, reports=cost.reports + 1, recent=recent)


def loads(clients: Sequence[str], rates: Mapping[str, float]) -> list[float]:
    """Each of ``clients``' request rate: known, else the mean of those known (else 1)."""
    known = [rates[c] for c in clients if rates.get(c, 0.0) > 0]
    default = sum(known) / len(known) if known else 1.0
    return [rates[c] if rates.get(c, 0.0) > 0 else default for c in clients]


def measuring(costs: Sequence[WaveCost], *, settings: ReadmitterConfig) -> Measuring | None:
    """While the last wave's cost is still measured (adaptive waves), the wait for it."""
    if settings.sizing == "fixed" or not costs:
        return None
    last = costs[-1]
    if last.reports < settings.settle_reports:
        return Measuring(
            reason=f"measuring wave {last.wave}: {last.reports} of "
            f"{settings.settle_reports} health reports from {settings.settle_s:g}s after it"
        )
    return None


def next_size(
    costs: Sequence[WaveCost],
    *,
    settings: ReadmitterConfig,
    health: float,
    connection_threshold: float,
    away_loads: Sequence[float],
) -> Size | Measuring:
    """The size of the next wave, given the waves so far and the latest ``health``.

    ``away_loads`` are the rates of the clients still away, in wave order.
    """
    if settings.sizing == "fixed":
        return Size(clients=settings.wave_size, reason=f"fixed waves of {settings.wave_size}")
    if not costs:
        return Size(clients=settings.first_wave_size, reason="first wave: small")
    waiting = measuring(costs, settings=settings)
    if waiting is not None:
        return waiting
    last = costs[-1]
    most = min(settings.max_wave_size, max(1, math.floor(last.clients * settings.growth)))
    floor = connection_threshold + settings.margin
    after = last.health_after
    dipped = ""
    if after is not None and after < floor:
        most = max(1, min(most, last.clients // 2))
        dipped = f"wave {last.wave} took health down to {after:.2f}, below {floor:.2f}: "
    cost = next((c.per_load() for c in reversed(costs) if c.per_load() is not None), None)
    if cost is None:
        if dipped:
            return Size(clients=most, reason=f"{dipped}halved to {most}")
        return Size(
            clients=most,
            reason=f"wave {last.wave} ({last.clients} clients) cost no measurable health: "
            f"{settings.growth:g}x, at most {settings.max_wave_size}",
        )
    total = sum(away_loads)
    expected = health - cost * total
    if expected >= connection_threshold:
        size = min(most, len(away_loads))
        limit = f", at most {most} now" if size < len(away_loads) else ""
        return Size(
            clients=size,
            reason=f"{dipped}every client away ({total:.1f} request/s at {cost:.4f} health per "
            f"request/s) leaves health at {expected:.2f}, at or above the threshold "
            f"{connection_threshold:.2f}: {size} clients{limit}",
        )
    if health >= floor:
        room, towards = health - floor, f"less {floor:.2f}"
    else:
        room, towards = max(0.0, health - connection_threshold) / 2, "within the margin: half"
    budget = room / cost
    fit = _fitting(away_loads, budget)
    size = max(1, min(most, fit))
    limit = ""
    if fit > most:
        limit = f", halved to {most}" if dipped else f", capped at {most}"
    return Size(
        clients=size,
        reason=f"{dipped}health {health:.2f} {towards} at {cost:.4f} health per request/s "
        f"fits {budget:.1f} request/s: {size} client{'' if size == 1 else 's'}{limit}",
    )


def _fitting(away_loads: Sequence[float], budget: float) -> int:
    """How many of ``away_loads``, in order, fit in ``budget`` together."""
    total = 0.0
    for count, load in enumerate(away_loads):
        total += load
        if total > budget:
            return count
    return len(away_loads)
