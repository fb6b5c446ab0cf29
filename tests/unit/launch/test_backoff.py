"""The restart back-off of `aaa-failover up`: doubling, capped, and reset by a stable run."""

from __future__ import annotations

from pathlib import Path

from services.launch.farm import write_farm
from services.launch.supervisor import Backoff, Supervisor


def test_a_process_that_keeps_crashing_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, stable_s=60.0)
    assert [backoff.next_delay(ran_s=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_run_that_lasted_the_stable_period_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, stable_s=60.0)
    for _ in range(8):
        backoff.next_delay(ran_s=2.0)
    assert backoff.next_delay(ran_s=2.0) == 30.0
    assert backoff.next_delay(ran_s=60.0) == 0.5  # ran for a minute: a new crash, a short wait
    assert backoff.next_delay(ran_s=0.1) == 1.0  # and doubling again from there
    assert backoff.next_delay(ran_s=59.9) == 2.0  # just short of stable: no reset


def test_the_supervisor_keeps_a_back_off_per_process_with_its_settings(tmp_path: Path) -> None:
    config, path = write_farm(tmp_path, bus_url="nats://127.0.0.1:4222", clients=1)
    supervisor = Supervisor(config, path, max_backoff_s=8.0, stable_s=20.0)
    evaluator = supervisor.backoff("evaluator")
    assert supervisor.backoff("evaluator") is evaluator
    assert (evaluator.max_s, evaluator.stable_s) == (8.0, 20.0)
    for _ in range(5):
        evaluator.next_delay(ran_s=0.0)
    assert evaluator.next_delay(ran_s=0.0) == 8.0
    assert supervisor.backoff("nats-server").next_delay(ran_s=0.0) == 0.5
