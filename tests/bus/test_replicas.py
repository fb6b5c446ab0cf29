"""Two replicas of a leased service: one acts, the other takes over when it dies.

Two evaluator processes on the same farm (``AAA_FAILOVER_REPLICA`` 1 and 2)
while the test publishes a sample of A every 50 ms. Every sample must be
scored once: never by both (no double decision), and the samples that go
unscored are only those of the takeover. The takeover after a ``kill -9`` of
the holder is measured from the kill to the first report of the standby, and
printed beside ``bus.lease_s``; after a SIGTERM the holder gives the lease up
and the standby takes it at its next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

from schemas import codec
from schemas.events import FailoverNotice, FailoverPlan, HealthReport, MetricsSample, Move
from services.evaluator.service import run as run_evaluator
from services.launch.registry import run_argv
from services.runtime.bus import Bus, Keyring
from services.runtime.durable import publish_stored
from services.runtime.lease import LeaseLost, holder_name
from services.runtime.lifecycle import Runtime, run_service, says_started
from tests.conftest import FarmFactory
from tests.support.helpers import watch_stderr

LEASE_S = 2.0


@contextmanager
def _replica(
    path: Path, replica: int, service: str = "evaluator", *, started_s: float = 0.0
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``service`` as replica ``replica`` in its own process (up to ``started_s`` for it to
    say it has started), and its log lines so far."""
    env = {**os.environ, "AAA_FAILOVER_REPLICA": str(replica)}
    proc = subprocess.Popen(run_argv(service, path), stderr=subprocess.PIPE, text=True, env=env)
    lines, started, _ = watch_stderr(proc, says_started)
    try:
        if started_s:
            assert started.wait(started_s), "".join(lines)
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


async def _holder(bus: Bus) -> str | None:
    kv = await bus.lease_bucket(LEASE_S)
    try:
        entry = await kv.get("evaluator")
    except Exception:
        return None
    return None if entry.value is None else entry.value.decode()


async def _until(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


class Scores:
    """The health reports of A heard, by sample id, and when each came."""

    def __init__(self) -> None:
        self.by_sample: Counter[str] = Counter()
        self.times: list[float] = []

    async def on_report(self, report: HealthReport) -> None:
        self.by_sample[report.sample_id] += 1
        self.times.append(time.monotonic())

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.times if t > moment), None)


async def _publish_samples(bus: Bus, stop: asyncio.Event, sent: list[str]) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        sample = MetricsSample(server="A", seq=seq, status_ok=True)
        await bus.publish(bus.subjects.metrics("A"), sample)
        sent.append(sample.id)
        await asyncio.sleep(0.05)


async def test_one_replica_scores_each_sample_and_the_other_takes_over_when_it_dies(
    farm: FarmFactory,
) -> None:
    config, path = farm({"bus": {"lease_s": LEASE_S}}, clients=2)
    me = holder_name().rsplit("/", 1)[0]
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="t", stack=stack)
        scores = Scores()
        await bus.subscribe(bus.subjects.health("A"), scores.on_report, types=(HealthReport,))
        stop, sent = asyncio.Event(), list[str]()
        with _replica(path, 1) as (first, first_log), _replica(path, 2) as (second, second_log):
            publishing = asyncio.ensure_future(_publish_samples(bus, stop, sent))
            try:
                await _until(lambda: _has(bus, scores))
                holder = await _holder(bus)
                assert holder in (f"{me}/1", f"{me}/2")
                leader, standby = (first, second) if holder == f"{me}/1" else (second, first)
                standby_name = f"{me}/2" if holder == f"{me}/1" else f"{me}/1"
                await _more_reports(scores)  # the holder at work

                leader.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await _until(lambda: _holder_is(bus, standby_name))
                await _until(lambda: _scored_after(scores, killed))
                taken = scores.first_after(killed)
                assert taken is not None
                print(f"takeover after kill -9: {taken - killed:.2f} s (lease_s {LEASE_S})")
                await _more_reports(scores)

                # the old holder comes back as a standby and the new one stops cleanly
                with _replica(path, 1 if leader is first else 2) as (back, back_log):
                    await _until(lambda: _logged(back_log, "standby:"))
                    standby.send_signal(signal.SIGTERM)
                    stopped = time.monotonic()
                    assert standby.wait(15) == 0
                    await _until(lambda: _scored_after(scores, stopped))
                    handed = scores.first_after(stopped)
                    assert handed is not None
                    print(f"handover after SIGTERM: {handed - stopped:.2f} s")
                    await _more_reports(scores)
                    back.send_signal(signal.SIGTERM)
                    assert back.wait(15) == 0, "".join(back_log)
            finally:
                stop.set()
                await publishing
        logs = "".join(first_log + second_log)
    doubled = {sample: n for sample, n in scores.by_sample.items() if n > 1}
    assert not doubled, f"samples scored by both replicas: {doubled}"
    assert "standby:" in logs
    assert len(scores.by_sample) > len(sent) // 2, (len(scores.by_sample), len(sent))


async def _all_noticed(notices: Counter[tuple[str, str]], want: set[tuple[str, str]]) -> bool:
    return set(notices) == want


async def _more_reports(scores: Scores, n: int = 20) -> None:
    """Wait until ``n`` more reports have come: the replica holding the lease at work."""
    at_least = len(scores.times) + n

    async def enough() -> bool:
        return len(scores.times) >= at_least

    await _until(enough)


async def _logged(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


async def _has(bus: Bus, scores: Scores) -> bool:
    return bool(scores.times)


async def _holder_is(bus: Bus, name: str) -> bool:
    return await _holder(bus) == name


async def _scored_after(scores: Scores, moment: float) -> bool:
    return scores.first_after(moment) is not None


async def test_notifier_replicas_share_the_plans_and_each_move_is_noticed_once(
    farm: FarmFactory,
) -> None:
    """Any notifier may send a plan's notices: the replicas pull from one durable consumer,
    so each plan is handled by one of them; after one is killed the other takes every
    plan, those published while it died too."""
    config, path = farm(clients=6)
    clients = [c.id for c in config.clients if c.home == "A"]
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="t", stack=stack)
        await bus.ensure_stream(max_age_s=600, max_bytes=1 << 24)
        notices: Counter[tuple[str, str]] = Counter()  # (plan, client) -> distinct notices
        ids: set[str] = set()

        async def on_notice(msg) -> None:  # type: ignore[no-untyped-def]
            event = codec.decode(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
            assert isinstance(event, FailoverNotice)
            if event.id not in ids:
                ids.add(event.id)
                notices[(event.incident_id, event.client)] += 1

        await bus.nc.subscribe(bus.subjects.notice("*"), cb=on_notice)
        plans: list[str] = []

        async def plan(n: int) -> None:
            for _ in range(n):
                incident = f"i-{len(plans)}"
                moves = [Move(client=c, alternates=["B"]) for c in clients]
                await publish_stored(
                    bus,
                    bus.subjects.plan("A"),
                    FailoverPlan(incident_id=incident, server="A", step=1, moves=moves),
                )
                plans.append(incident)

        with (
            _replica(path, 1, "notifier", started_s=30) as (one, _),
            _replica(path, 2, "notifier", started_s=30),
        ):
            await plan(10)
            one.send_signal(signal.SIGKILL)
            one.wait(10)
            await plan(10)
            want = {(incident, c) for incident in plans for c in clients}
            with contextlib.suppress(AssertionError):
                await _until(lambda: _all_noticed(notices, want))
    assert set(notices) == want, sorted(want - set(notices))
    assert all(n == 1 for n in notices.values()), {k: n for k, n in notices.items() if n > 1}


async def test_a_holder_that_finds_its_lease_taken_stops_acting(farm: FarmFactory) -> None:
    """Another holder wrote the lease (a standby that took it while this one was cut off):
    this one stops at its next renewal with LeaseLost, which the command line turns into
    exit status 75 for its supervisor to start it again, as a standby."""
    config, _ = farm({"bus": {"lease_s": 1.0}}, clients=2)
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="t", stack=stack)
        stop = asyncio.Event()
        service = asyncio.ensure_future(run_evaluator(config, shutdown_trigger=stop.wait))
        kv = await bus.lease_bucket(1.0)
        await _until(lambda: _holder_is(bus, holder_name()), 20)
        await kv.put("evaluator", b"elsewhere/9")
        try:
            await asyncio.wait_for(service, 10)
        except LeaseLost as lost:
            assert "taken by another replica" in str(lost)
        else:
            raise AssertionError("the evaluator went on after its lease was taken")
        finally:
            stop.set()


async def test_a_holder_told_to_stop_while_it_sets_up_stops_then(farm: FarmFactory) -> None:
    """Told to stop just after it took its lease, while it still loads its state (a
    JetStream still electing its leaders may keep it there for tens of seconds), a
    service stops at once, as a crash there would, instead of first finishing it."""
    config, _ = farm({"bus": {"lease_s": 1.0}}, clients=2)
    setting_up = asyncio.Event()

    async def setup(rt: Runtime) -> None:
        setting_up.set()
        await asyncio.Event().wait()  # never done

    stop = asyncio.Event()
    service = asyncio.ensure_future(
        run_service("evaluator", config, setup, shutdown_trigger=stop.wait)
    )
    await asyncio.wait_for(setting_up.wait(), 20)
    stop.set()
    await asyncio.wait_for(service, 10)
