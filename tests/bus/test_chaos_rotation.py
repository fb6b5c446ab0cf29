"""The ordinary suite's share of the chaos matrix: every process killed once, on a rotation.

Each run is a chaos case of tests/support/chaos.py with up to four kills; which target goes
with which moment turns with the day (``AAA_CHAOS_ROTATION`` picks a day), so the moments
move round the targets from one day to the next. The whole matrix is `make chaos`
(tests/chaos).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import run_case
from tests.support.chaos_moments import Kill, rotation, rotation_day

RUNS = rotation(rotation_day())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kills", RUNS, ids=lambda kills: "+".join(str(k) for k in kills))
async def test_a_rotating_share_of_the_chaos_matrix(tmp_path: Path, kills: list[Kill]) -> None:
    outcome = await run_case(tmp_path, kills)
    print(outcome.report())
    assert outcome.ok, outcome.report()
