"""The HealthReport of one scored sample, as the evaluator publishes it.

Pure: shared by the evaluator service and the ``what-if`` replay, so both
report a sample alike.
"""

from __future__ import annotations

import time

from schemas.events import HealthReport, MetricsSample, deficit, new_id
from services.evaluator.health import Health
from services.evaluator.incidents import ServerState
from services.runtime.config import EvaluatorConfig


def health_report(
    sample: MetricsSample,
    result: Health,
    state: ServerState,
    cfg: EvaluatorConfig,
    *,
    source: str,
    event_id: str | None = None,
    at: float | None = None,
) -> HealthReport:
    """The report of ``sample`` scored ``result``, with its server's machine in ``state``.

    ``event_id`` and ``at`` default to a fresh id and now.
    """
    return HealthReport(
        id=event_id or new_id(),
        time=time.time() if at is None else at,
        source=source,
        server=state.server,
        sample_id=sample.id,
        health=result.health,
        parts=dict(result.parts),
        sources=dict(result.sources),
        penalties=dict(result.penalties),
        limiting=result.limiting,
        reason=result.reason,
        failover_threshold=cfg.failover_threshold,
        connection_threshold=cfg.connection_threshold,
        deficit=deficit(result.health, cfg.failover_threshold),
        incident_id=state.incident_id,
        state=state.phase,
    )
