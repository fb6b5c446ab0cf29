"""The FreeRADIUS incident benchmark: one short real run of the whole loop on FreeRADIUS."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import freeradius_incident as fi
from tests.support.freeradius import require


@pytest.mark.freeradius
@pytest.mark.nats
@pytest.mark.timeout(120)
async def test_the_whole_loop_on_freeradius_opens_and_moves_before_a_window_is_paid(
    tmp_path: Path,
) -> None:
    require("freeradius")
    params = {"warmup_s": 2.0, "incident_s": 4.0, "recovery_s": 4.0}
    out = await fi.run_one("aaa-failover", (1.0, 4.0), params, tmp_path)
    assert out["sent"] == 1000 and out["lost"] == 0 and out["answered_late"] == 0, out
    assert out["incident_s"] is not None and out["first_move_s"] is not None, out
    assert out["paid_window"] < 100, out
