"""The lease's names: the role a replica holds, and who holds it."""

from __future__ import annotations

import pytest

from services.runtime.lease import holder_name, role
from services.runtime.permissions import USES, leased


def test_a_role_is_the_service_or_the_service_and_its_servers_in_order() -> None:
    assert role("evaluator") == "evaluator"
    assert role("evaluator", []) == "evaluator"
    assert role("readmitter", ["B", "A"]) == "readmitter.A.B"


def test_a_holder_is_its_host_and_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAA_FAILOVER_REPLICA", raising=False)
    assert holder_name().endswith("/1")
    monkeypatch.setenv("AAA_FAILOVER_REPLICA", "2")
    assert holder_name().endswith("/2")


def test_the_services_that_keep_one_machine_per_server_are_leased_and_the_others_not() -> None:
    assert {name for name in USES if leased(name)} == {
        "collector",
        "evaluator",
        "targeter",
        "readmitter",
    }
