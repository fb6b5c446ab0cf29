"""Quantiles of measured times, as the collector's probes and the agents' reports give them."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of the sorted, non-empty ``values``, by the nearest rank."""
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]
