"""Replay of a recorded incident: printed from the stored stream, and re-run in a sandbox."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import uuid
from contextlib import AsyncExitStack

import psutil
import pytest
from nats.aio.msg import Msg

from schemas.events import Event, FailoverPlan, Incident, MetricsSample, ReadmitWave
from schemas.signing import ReplayGuard
from services.evaluator.service import run as run_evaluator
from services.readmitter.service import run as run_readmitter
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, ConfigError
from services.targeter.service import run as run_targeter
from services.tools.recording import RecordingError, WindowSpec, load
from services.tools.replay import (
    replay,
)
from tests.support.helpers import running
from tests.support.recorded import RecordedDemo


def _decisions(events: list[Event], server: str) -> dict[str, object]:
    """What the decision services decided about ``server``, without ids or times.

    The health an incident closed at is the latest the readmitter had heard
    when the final wave went out, and the order of a move's alternates ranks
    their latest health, which the other servers' reports of that instant
    decide: both are matters of timing, so only the closing and the set of
    alternates are compared.
    """
    incidents = [e for e in events if isinstance(e, Incident) and e.server == server]
    plans = [e for e in events if isinstance(e, FailoverPlan) and e.server == server]
    waves = [e for e in events if isinstance(e, ReadmitWave) and e.server == server]
    return {
        "incident": [
            (i.state, None if i.state == "closed" else round(i.health, 3), i.relapses)
            for i in incidents
        ],
        "moves": [(m.client, sorted(m.alternates)) for p in plans for m in p.moves],
        "unplaced": [c for p in plans for c in p.unplaced],
        "waves": [(w.wave, w.clients, w.final) for w in waves if w.wave > 0],
    }


def test_replay_prints_the_incident_from_the_stored_stream(recorded_demo: RecordedDemo) -> None:
    """With no bus URL the tool opens the stopped farm's store itself, and leaves nothing."""
    demo = recorded_demo

    def replay_cli(*extra: str) -> str:
        result = subprocess.run(
            [
                sys.executable, "-m", "services.launch.cli", "--log-level", "WARNING", "replay",
                "-c", str(demo.config_path), "--incident", demo.incident_id, *extra,
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    lines = replay_cli("--server", "A").splitlines()
    short = demo.incident_id[:8]
    assert any("incident" in x and "state=opened" in x and short in x for x in lines)
    assert any("state=recovering" in x for x in lines)
    assert any("incident" in x and "state=closed" in x for x in lines)
    assert any("failover.plan" in x and "moves=" in x for x in lines)
    assert any("readmit.wave" in x and "final" in x for x in lines)
    as_json = [json.loads(x) for x in replay_cli("--server", "A", "--json").splitlines()]
    assert len(as_json) == sum(1 for x in lines if x.endswith("]"))
    assert {x["event"]["server"] for x in as_json} == {"A"}
    assert all(x["verified"] for x in as_json)
    assert any(x.strip().startswith("metrics.sample") for x in lines), "no sizing table"
    assert not any("REJECTED" in x for x in lines)
    store = str(demo.directory / ".nats")
    left = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(store in part for part in (p.info["cmdline"] or []))
    ]
    assert left == []


async def test_replay_into_a_sandbox_gives_the_same_decisions(
    recorded_demo: RecordedDemo, stored_bus: str
) -> None:
    live = recorded_demo.config.on_bus(stored_bus)
    window = WindowSpec(incident=recorded_demo.incident_id, before_s=3.0, after_s=3.0)
    recorded = await load(live, window)
    assert recorded.span is not None and recorded.span.closed
    expected = _decisions(recorded.events, "A")
    assert expected["moves"] and expected["waves"]

    sandbox = live.as_sandbox("sbx" + uuid.uuid4().hex[:10])
    async with AsyncExitStack() as stack:
        watcher = await Bus.connect(
            sandbox.bus, Keyring.from_config(sandbox), name="watch", stack=stack
        )
        seen: list[Event] = []
        closed = asyncio.Event()

        async def collect(event: Event) -> None:
            seen.append(event)
            if isinstance(event, Incident) and event.state == "closed":
                closed.set()

        for kind in ("incident", "plan", "readmit"):
            await watcher.subscribe(
                f"{sandbox.bus.prefix}.{kind}.*",
                collect,
                types=(Incident, FailoverPlan, ReadmitWave),
            )
        leaked: list[str] = []

        async def on_live(msg: Msg) -> None:
            leaked.append(msg.subject)

        live_bus = await Bus.connect(live.bus, Keyring.from_config(live), name="live", stack=stack)
        await live_bus.subscribe_raw(live_bus.subjects.all, on_live)
        await watcher.nc.flush()
        await live_bus.nc.flush()

        for run in (run_evaluator, run_targeter, run_readmitter):
            await stack.enter_async_context(running(run, sandbox))
        out = io.StringIO()
        await replay(live, window, out=out, sandbox=sandbox.bus.prefix, speed=1.0)
        await asyncio.wait_for(closed.wait(), 30)
        assert "replayed" in out.getvalue() and "0 failed verification" in out.getvalue()

    got = _decisions(sorted(seen, key=lambda e: e.time), "A")
    assert got == expected
    assert leaked == [], "the replay published on live subjects"


async def test_live_services_reject_what_a_replay_carries(
    recorded_demo: RecordedDemo, stored_bus: str
) -> None:
    """Recorded events keep their signatures and times: they verify, but only a
    sandbox accepts their age."""
    live = recorded_demo.config.on_bus(stored_bus)
    loaded = await load(live, WindowSpec(incident=recorded_demo.incident_id))
    seen = [s for s in loaded.seen if isinstance(s.event, MetricsSample)]
    assert seen and all(s.verified for s in seen)
    sample = loaded.events[0]
    now = loaded.end + 120.0
    live_guard, sandbox_guard = ReplayGuard(30.0), ReplayGuard(30.0, check_time=False)
    with pytest.raises(Exception, match="stale"):
        live_guard.check(sample.id, sample.time, now)
    sandbox_guard.check(sample.id, sample.time, now)
    with pytest.raises(Exception, match="replayed"):
        sandbox_guard.check(sample.id, sample.time, now)


async def test_an_unknown_incident_names_the_recorded_ones(
    recorded_demo: RecordedDemo, stored_bus: str
) -> None:
    live = recorded_demo.config.on_bus(stored_bus)
    with pytest.raises(RecordingError, match=recorded_demo.incident_id):
        await load(live, WindowSpec(incident="0" * 32))


def test_a_sandbox_never_shares_the_live_prefix(recorded_demo: RecordedDemo) -> None:
    config: Config = recorded_demo.config
    for bad in (config.bus.prefix, f"{config.bus.prefix}.sandbox"):
        with pytest.raises(ConfigError, match="overlaps"):
            config.as_sandbox(bad)
    sandbox = config.as_sandbox("replay1")
    assert sandbox.bus.sandbox and sandbox.bus.prefix == "replay1"
    assert {c.transport for c in sandbox.clients} == {"nats"}


def test_only_decision_services_run_in_a_sandbox(recorded_demo: RecordedDemo) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "services.launch.cli", "run", "collector",
            "-c", str(recorded_demo.config_path), "--sandbox", "replay1",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "only evaluator, targeter, notifier, readmitter run in a sandbox" in result.stderr
