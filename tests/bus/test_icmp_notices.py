"""The notifier sending notices in ICMP Echo Requests to an IcmpListener, on a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from schemas.events import FailoverNotice
from services.agent.icmp import IcmpListener
from services.notifier.transports import icmp as notifier_icmp
from tests.conftest import FarmFactory
from tests.support.notifying import harness, notifier, transport_farm, verifying

TIMEOUT = 5.0

# --- listener and notifier on loopback --------------------------------------


@pytest.mark.raw_sockets
async def test_icmp_notice_is_verified_by_the_client_and_settled_by_its_bus_ack(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config = transport_farm(farm, tmp_path, {"nas-01": "icmp-echo"}, {"ack_timeout_s": 5.0})
    client = config.client("nas-01")
    seen: asyncio.Queue[Any] = asyncio.Queue()
    async with (
        harness(config) as h,
        IcmpListener(client.ip, verifying(config, "nas-01", seen)) as listener,
        notifier(config),
    ):
        await h.until_ready("nas-03")
        await h.plan("A", ("nas-01", ["B", "C"]))
        notice, _ = await asyncio.wait_for(seen.get(), TIMEOUT)
        assert isinstance(notice, FailoverNotice)
        assert (notice.server, notice.client) == ("A", "nas-01")
        assert notice.alternates == ["B", "C"]
        sent = await h.delivery("nas-01")
        assert (sent.outcome, sent.notice_id) == ("sent", notice.id)
        # the agent answers over the bus, as for the nats transport
        await h.ack("nas-01", notice.id, "A")
        acked = await h.delivery("nas-01")
        assert (acked.outcome, acked.notice_id, acked.attempts) == ("acked", notice.id, 1)
        assert listener.counters["accepted"] == 1
    assert h.notices["nas-01"].empty()


async def test_without_raw_sockets_icmp_notices_fail_and_it_is_said_once(
    farm: FarmFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(notifier_icmp, "open_raw_icmp", refused)
    config = transport_farm(farm, tmp_path, {"nas-01": "icmp-echo"})
    caplog.set_level(logging.WARNING)
    async with harness(config) as h, notifier(config):
        await h.until_ready("nas-03")
        for _ in range(2):
            await h.plan("A", ("nas-01", ["B"]))
            sent = await h.delivery("nas-01")
            failed = await h.delivery("nas-01")
            assert (sent.outcome, failed.outcome) == ("sent", "failed")
            assert failed.notice_id == sent.notice_id
    said = [
        r for r in caplog.records if r.levelno == logging.ERROR and "CAP_NET_RAW" in r.getMessage()
    ]
    assert len(said) == 1
