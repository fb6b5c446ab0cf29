"""The evaluator's report ids: drawn from the OS's random source in batches."""

from __future__ import annotations

from schemas.events import MetricsSample
from services.evaluator.service import ReportIds


def test_report_ids_are_fresh_random_hex_as_new_ids_are() -> None:
    ids = ReportIds()
    sample = MetricsSample(server="A", seq=1, status_ok=True, threads_active=1)
    made = [ids(sample) for _ in range(3 * ReportIds.BATCH + 5)]
    assert len(set(made)) == len(made)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in made)
