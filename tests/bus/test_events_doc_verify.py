"""docs/events.md: its worked verify example run against events signed on a real nats-server."""

from __future__ import annotations

import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from schemas.events import HealthReport
from schemas.signing import KEY_HEADER, SIG_HEADER
from services.runtime.bus import Bus, Keyring
from tests.conftest import FarmFactory
from tests.support.events_doc import code_block


def _run(
    script: Path, secret: Path, subject: str, sig: str, payload: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(script), str(secret), subject, sig, str(payload)],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_verify_example_accepts_a_signed_event_and_refuses_a_tampered_one(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm()
    # a health report is signed with the evaluator's own key
    (key,) = config.bus.service_keys["evaluator"]
    assert key.secret.file is not None
    secret_file = config.path(key.secret.file)
    event = HealthReport(
        server="A",
        sample_id="s",
        health=0.5,
        failover_threshold=0.2,
        connection_threshold=0.6,
        source="evaluator",
    )
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(config.bus, Keyring.from_config(config), name="doc", stack=stack)
        subject, elsewhere = bus.subjects.health("A"), bus.subjects.health("B")
        payload, headers = bus.encode(subject, event)
        assert headers[KEY_HEADER] == key.id

    script = tmp_path / "verify_event.py"
    script.write_text(code_block("verify_event.py"))
    genuine = tmp_path / "payload.json"
    genuine.write_bytes(payload)
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(payload.replace(b'"health":0.5', b'"health":0.9'))
    assert tampered.read_bytes() != payload

    ok = _run(script, secret_file, subject, headers[SIG_HEADER], genuine)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"signature verifies: health.report {event.id} from evaluator"

    bad = _run(script, secret_file, subject, headers[SIG_HEADER], tampered)
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.strip() == "signature does NOT verify"
    # the genuine bytes, said to come from another subject
    moved = _run(script, secret_file, elsewhere, headers[SIG_HEADER], genuine)
    assert moved.returncode == 1, moved.stderr

    wrong_key = tmp_path / "other.key"
    wrong_key.write_text("not-the-bus-key\n")
    assert _run(script, wrong_key, subject, headers[SIG_HEADER], genuine).returncode == 1
