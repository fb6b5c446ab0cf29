"""The chaos matrix: at each moment of an incident, each process killed and started again.

Every case runs the demo's farm for real (tests/support/chaos.py) and checks the recorded
stream (tests/support/incident_checks.py): every targeted client moved and came home in
waves, the incident closed, no decision lost or doubled. `make chaos` runs it all; the
ordinary suite runs a rotating share of it (tests/bus/test_chaos_rotation.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import run_case
from tests.support.chaos_moments import MOMENTS, TARGETS, Kill, Moment

pytestmark = [pytest.mark.chaos, pytest.mark.nats, pytest.mark.slow]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("target", TARGETS)
async def test_killed_and_started_again(tmp_path: Path, target: str, moment: Moment) -> None:
    outcome = await run_case(tmp_path, [Kill(target, moment)])
    print(outcome.report())
    assert outcome.ok, outcome.report()
