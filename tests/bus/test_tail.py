"""`aaa-failover tail` on a real nats-server: every event shown, and whether it verified."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from schemas.events import (
    Ack,
    FailoverNotice,
    HealthReport,
    MetricsSample,
)
from schemas.signing import AUTH_HEADER, SERVER_HEADER, sign_headers
from services.runtime.bus import Bus, Keyring, Signer
from services.runtime.config import Config
from services.tools.tail import tail
from tests.conftest import FarmFactory


class Lines(io.StringIO):
    """A StringIO that also hands each complete line to a queue."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self.queue.put_nowait(line)
        return super().write(text)

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), 5)


@asynccontextmanager
async def running_tail(config: Config, **kwargs: Any) -> AsyncIterator[Lines]:
    out = Lines()
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        tail(config, out=out, shutdown_trigger=stop.wait, ready=ready, **kwargs)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield out
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _health(server: str = "A", **kwargs: Any) -> HealthReport:
    return HealthReport(
        server=server,
        sample_id="s",
        health=0.15,
        limiting="threads",
        state="overloaded",
        failover_threshold=0.2,
        connection_threshold=0.6,
        **kwargs,
    )


def _client_signer(config: Config, index: int) -> Signer:
    nas = config.clients[index]
    return Signer("client:" + nas.id, config.read_secret(nas.secret))


async def _publish_cases(config: Config, bus: Bus) -> None:
    """A genuine event, a forged one, an unsigned one, a client-signed ack, then more."""
    subject = bus.subjects.health("A")
    await bus.publish(subject, _health())
    forged, _ = bus.encode(subject, _health())
    await bus.nc.publish(subject, forged, headers=sign_headers("k1", b"wrong", subject, forged))
    unsigned, _ = bus.encode(subject, _health())
    await bus.nc.publish(subject, unsigned)
    nas = config.clients[0]
    ack = Ack(notice_id="n1", client=nas.id, server="A", accepted=True, now_on="B")
    await bus.publish(bus.subjects.ack(nas.id), ack, signer=_client_signer(config, 0))
    await bus.nc.publish(subject, forged, headers={})
    repeat_payload, repeat_headers = bus.encode(bus.subjects.health("C"), _health(server="C"))
    await bus.nc.publish(bus.subjects.health("C"), repeat_payload, headers=repeat_headers)
    await bus.nc.publish(bus.subjects.health("C"), repeat_payload, headers=repeat_headers)
    garbage = b"\xff\x00 not an event"
    signer = bus.keyring.signer_for(bus.subjects.metrics("A"))
    assert signer is not None
    await bus.nc.publish(
        bus.subjects.metrics("A"),
        garbage,
        headers=sign_headers(signer.key_id, signer.key, bus.subjects.metrics("A"), garbage),
    )
    notice = FailoverNotice(
        incident_id="i",
        server="A",
        client=nas.id,
        alternates=["B"],
        seq=1,
        valid_until=0.0,
    )
    await bus.publish(
        bus.subjects.notice(nas.id),
        notice,
        authenticate=lambda payload: {AUTH_HEADER: "ab" * 32, SERVER_HEADER: "A"},
    )
    await bus.nc.flush()


async def _bus(config: Config, stack: AsyncExitStack) -> Bus:
    return await Bus.connect(config.bus, Keyring.from_config(config), name="test", stack=stack)


async def test_tail_marks_genuine_forged_unsigned_and_client_signed(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    nas = config.clients[0].id
    async with AsyncExitStack() as stack, running_tail(config) as out:
        bus = await _bus(config, stack)
        await _publish_cases(config, bus)
        lines = [await out.next() for _ in range(9)]
    genuine, forged, unsigned, ack, no_headers, first, repeat, garbage, notice = lines
    assert "health.A" in genuine and "health.report" in genuine
    assert "health=0.150 limiting=threads state=overloaded" in genuine
    assert genuine.endswith("[ok]")
    assert forged.endswith("[REJECTED bad-signature]") and "health=0.150" in forged
    assert unsigned.endswith("[REJECTED unsigned]")
    assert f"ack.{nas}" in ack and "accepted=True now_on=B" in ack and ack.endswith("[ok]")
    assert no_headers.endswith("[REJECTED unsigned]")
    assert first.endswith("[ok]") and "health.C" in first
    assert repeat.endswith("[REJECTED replayed]") and "health.C" in repeat
    assert "undecodable" in garbage and garbage.endswith("[REJECTED undecodable]")
    assert "auth=present auth_server=A" in notice and notice.endswith("[ok]")
    assert genuine[:4].isdigit() and genuine[23] == "Z"  # 2025-01-31T12:00:00.123Z


async def test_tail_json_lines_parse_with_the_verdict(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    async with AsyncExitStack() as stack, running_tail(config, as_json=True) as out:
        bus = await _bus(config, stack)
        await _publish_cases(config, bus)
        rows = [json.loads(await out.next()) for _ in range(9)]
    genuine, forged, unsigned, ack, _, _, repeat, garbage, notice = rows
    assert genuine["subject"] == bus.subjects.health("A")
    assert genuine["verified"] is True and genuine["reason"] is None
    assert genuine["event"]["type"] == "health.report" and genuine["event"]["health"] == 0.15
    assert genuine["key"] == "evaluator-1"  # a health report: the evaluator's own key
    assert (forged["verified"], forged["reason"]) == (False, "bad-signature")
    assert forged["event"]["server"] == "A"
    assert (unsigned["verified"], unsigned["reason"]) == (False, "unsigned")
    assert ack["verified"] is True and ack["key"] == "client:" + config.clients[0].id
    assert ack["event"]["type"] == "ack" and ack["event"]["accepted"] is True
    assert repeat["reason"] == "replayed"
    assert garbage["reason"] == "undecodable" and "event" not in garbage
    assert garbage["raw_base64"]
    assert notice["auth"] is True and notice["auth_server"] == "A"


async def test_tail_filters_by_server_and_client(farm: FarmFactory) -> None:
    config, _ = farm(clients=2)
    nas1, nas2 = (c.id for c in config.clients)
    async with (
        AsyncExitStack() as stack,
        running_tail(config, server="B") as by_server,
        running_tail(config, client=nas2) as by_client,
    ):
        bus = await _bus(config, stack)
        await bus.publish(bus.subjects.health("A"), _health("A"))
        await bus.publish(
            bus.subjects.metrics("B"), MetricsSample(server="B", seq=7, status_ok=True)
        )
        for index, nas in enumerate((nas1, nas2)):
            ack = Ack(notice_id="n", client=nas, server="C", accepted=False, reason="busy")
            await bus.publish(bus.subjects.ack(nas), ack, signer=_client_signer(config, index))
        await bus.publish(bus.subjects.health("B"), _health("B"))
        await bus.nc.flush()
        metrics = await by_server.next()
        health_b = await by_server.next()
        ack_line = await by_client.next()
        assert by_server.queue.empty() and by_client.queue.empty()
    assert "metrics.B" in metrics and "seq=7" in metrics and metrics.endswith("[ok]")
    assert "health.B" in health_b
    assert f"ack.{nas2}" in ack_line and "reason=busy" in ack_line and ack_line.endswith("[ok]")


def test_tail_command_runs_until_sigterm_and_exits_0(farm: FarmFactory) -> None:
    config, path = farm(clients=1)
    argv = [sys.executable, "-m", "services.launch.cli", "tail", "-c", str(path), "--server", "A"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    started = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if "tail of" in line and "started" in line:
                started.set()
        started.set()

    threading.Thread(target=read_err, daemon=True).start()
    try:
        assert started.wait(20) and proc.poll() is None, "".join(err)

        async def publish() -> None:
            async with AsyncExitStack() as stack:
                bus = await _bus(config, stack)
                await bus.publish(bus.subjects.health("A"), _health("A"))
                await bus.nc.flush()

        asyncio.run(publish())
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "health.A" in line and line.rstrip().endswith("[ok]"), line + "".join(err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
