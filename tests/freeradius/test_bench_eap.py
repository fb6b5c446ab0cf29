"""The EAP benchmark: one short real run of eapol_test conversations through the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import eap
from tests.support.eap import eapol_test_program
from tests.support.freeradius import require


@pytest.mark.freeradius
@pytest.mark.nats
@pytest.mark.timeout(120)
async def test_moves_by_notice_and_readmission_fail_no_conversation_in_a_short_run(
    tmp_path: Path,
) -> None:
    require("freeradius")
    eapol_test_program()
    params = {"moves_s": 4.0, "move_every_s": 1.5}
    out = await eap.run_moves(params, tmp_path)
    assert out["moves"] == 2 and out["across_a_move"] > 0, out
    assert out["failed"] == 0 and out["ok"] == out["conversations"] > 0, out
    assert out["draining_acked"] > 0, out
