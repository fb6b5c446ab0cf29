"""The RADIUS availability check against the reference server and a free port."""

from __future__ import annotations

import time

import msgspec

from services.aaa import service as aaa
from services.collector.checks import run_check
from services.launch.farm import free_udp_port
from services.runtime.config import (
    RadiusCheck,
    Secret,
)
from tests.conftest import FarmFactory
from tests.support.helpers import running, wait_ready


async def test_radius_ok_against_the_reference_server(farm: FarmFactory) -> None:
    config, _ = farm(clients=1)
    a = config.server("A")
    spec = RadiusCheck(name="radius", host=a.ip, port=a.probe_port, secret=a.status_secret)
    async with running(aaa.run, config, only=["A"]):
        await wait_ready(config, "A")
        result = await run_check(spec, config)
        assert result.ok, result.detail
        assert result.check == "radius"

        wrong = RadiusCheck(
            name="radius", host=a.ip, port=a.probe_port, secret=Secret(file="secrets/bus.key")
        )
        unanswered = await run_check(msgspec.structs.replace(wrong, timeout_s=0.2), config)
        assert not unanswered.ok


async def test_radius_fails_against_a_free_port(farm: FarmFactory) -> None:
    config, _ = farm(clients=1)
    a = config.server("A")
    port = free_udp_port(a.ip)
    spec = RadiusCheck(name="radius", host=a.ip, port=port, secret=a.status_secret, timeout_s=0.2)
    start = time.monotonic()
    result = await run_check(spec, config)
    assert not result.ok
    assert time.monotonic() - start < 0.8
    assert result.detail in (
        f"no answer to Status-Server from {a.ip}:{port} within 0.2s",
        "timed out after 0.2s",
    )
