"""The notifier sending notices as RADIUS CoA-Requests to a CoaListener, on a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet

from schemas.events import FailoverNotice
from services.agent.coa import CoaListener
from services.radius.notice import (
    MAX_VSA_OCTETS,
)
from tests.conftest import FarmFactory
from tests.support.datagrams import Collect
from tests.support.notifying import Harness, harness, notifier, transport_farm, verifying

TIMEOUT = 5.0

# --- the notifier's radius-coa transport, end to end ------------------------


async def outcomes(h: Harness, client: str) -> list[tuple[str, int]]:
    """The Delivery outcomes of one notice to ``client``, from sent to acked or failed."""
    found: list[tuple[str, int]] = []
    while not found or found[-1][0] not in ("acked", "failed"):
        delivery = await h.delivery(client)
        found.append((delivery.outcome, delivery.attempts))
    return found


async def test_coa_notice_is_verified_by_the_client_and_its_ack_settles_it(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config = transport_farm(farm, tmp_path, {"nas-01": "radius-coa"}, {"coa_timeout_s": 1.0})
    client = config.client("nas-01")
    secret = config.read_secret(client.secret)
    seen: asyncio.Queue[Any] = asyncio.Queue()
    on_notice = verifying(config, "nas-01", seen)
    async with (
        harness(config) as h,
        CoaListener(client.ip, client.coa_port, secret, on_notice) as listener,
        notifier(config),
    ):
        await h.until_ready("nas-03")
        # an incident id long enough that the notice needs two attributes
        await h.plan("A", ("nas-01", ["B", "C"]), incident_id="incident-" + "7" * 64)
        notice, payload = await asyncio.wait_for(seen.get(), TIMEOUT)
        assert isinstance(notice, FailoverNotice)
        assert (notice.server, notice.client) == ("A", "nas-01")
        assert notice.alternates == ["B", "C"]
        assert len(payload) > MAX_VSA_OCTETS  # it came in several attributes

        sent = await h.delivery("nas-01")
        acked = await h.delivery("nas-01")
        assert (sent.outcome, sent.notice_id) == ("sent", notice.id)
        assert (acked.outcome, acked.notice_id, acked.attempts) == ("acked", notice.id, 1)
        assert acked.latency_s is not None and 0 <= acked.latency_s < TIMEOUT
        assert listener.counters["accepted"] == 1
    # only by CoA: nothing on the bus subject of the client
    assert h.notices["nas-01"].empty()


async def test_coa_under_a_wrong_secret_is_discarded_silently_counted_and_fails(
    farm: FarmFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = transport_farm(
        farm,
        tmp_path,
        {"nas-01": "radius-coa"},
        {"coa_timeout_s": 0.1, "coa_retries": 2, "coa_max_timeout_s": 0.4, "retries": 0},
    )
    client = config.client("nas-01")
    seen: asyncio.Queue[Any] = asyncio.Queue()
    on_notice = verifying(config, "nas-01", seen)
    caplog.set_level(logging.WARNING)
    async with (
        harness(config) as h,
        CoaListener(client.ip, client.coa_port, b"not-the-secret", on_notice) as listener,
        notifier(config),
    ):
        await h.until_ready("nas-03")
        await h.plan("A", ("nas-01", ["B"]))
        # RFC 5176 section 3.5: no NAK for what does not authenticate, so the notifier
        # sees silence, retransmits, and fails the try as unanswered
        assert await outcomes(h, "nas-01") == [
            ("sent", 1),
            ("retried", 2),
            ("retried", 3),
            ("failed", 3),
        ]
    assert seen.empty()
    # every copy judged and discarded (or dropped as a copy while the first was judged)
    assert listener.counters["bad-authenticator"] + listener.counters["duplicate"] == 3
    assert listener.counters["bad-authenticator"] >= 1
    assert listener.counters["nak-sent"] == listener.counters["ack-sent"] == 0
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("services.notifier")]
    assert any("no answer after 3 transmissions" in m for m in failures)
    assert not any("CoA-NAK" in m for m in failures)


async def test_coa_nak_of_a_refused_notice_fails_it(farm: FarmFactory, tmp_path: Path) -> None:
    config = transport_farm(farm, tmp_path, {"nas-01": "radius-coa"}, {"retries": 0})
    client = config.client("nas-01")
    seen: asyncio.Queue[Any] = asyncio.Queue()
    # the listener holds the right RADIUS secret, but the agent checks the notice under
    # another one: the notice does not verify and is refused
    on_notice = verifying(config, "nas-01", seen, secret=b"other")
    secret = config.read_secret(client.secret)
    async with (
        harness(config) as h,
        CoaListener(client.ip, client.coa_port, secret, on_notice) as listener,
        notifier(config),
    ):
        await h.until_ready("nas-03")
        await h.plan("A", ("nas-01", ["B"]))
        assert await outcomes(h, "nas-01") == [("sent", 1), ("failed", 1)]
    assert await asyncio.wait_for(seen.get(), TIMEOUT) == "bad-authenticator"
    assert listener.counters["refused"] == 1


async def test_unanswered_coa_is_retransmitted_with_growing_waits_then_fails(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config = transport_farm(
        farm,
        tmp_path,
        {"nas-01": "radius-coa"},
        {"coa_timeout_s": 0.2, "coa_retries": 3, "coa_max_timeout_s": 0.8, "retries": 0},
    )
    client = config.client("nas-01")
    arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # a socket that takes the requests and never answers
    silent, _ = await loop.create_datagram_endpoint(
        lambda: Collect(arrivals, stamp=True), local_addr=(client.ip, client.coa_port)
    )
    try:
        async with harness(config) as h, notifier(config):
            await h.until_ready("nas-03")
            await h.plan("A", ("nas-01", ["B"]))
            assert await outcomes(h, "nas-01") == [
                ("sent", 1),
                ("retried", 2),
                ("retried", 3),
                ("retried", 4),
                ("failed", 4),
            ]
    finally:
        silent.close()
    got = [arrivals.get_nowait() for _ in range(arrivals.qsize())]
    assert len(got) == 4
    # the very same packet: same identifier, same Request Authenticator
    assert len({data for _, data in got}) == 1
    assert got[0][1][0] == packet.CoARequest
    first, second, third = (b[0] - a[0] for a, b in itertools.pairwise(got))
    assert first < second < third
    assert third > 2.5 * first


async def test_a_restarted_notifier_tries_a_coa_notice_in_flight_again(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config = transport_farm(
        farm,
        tmp_path,
        {"nas-01": "radius-coa"},
        {"coa_timeout_s": 0.2, "coa_retries": 0, "ack_timeout_s": 0.2, "retries": 20},
    )
    client = config.client("nas-01")
    secret = config.read_secret(client.secret)
    seen: asyncio.Queue[Any] = asyncio.Queue()
    async with harness(config) as h:
        async with notifier(config):
            await h.until_ready("nas-03")
            await h.plan("A", ("nas-01", ["B"]))
            sent = await h.delivery("nas-01")
            assert sent.outcome == "sent"
        # nobody listened; now the client is up and the notifier comes back
        on_notice = verifying(config, "nas-01", seen)
        async with (
            CoaListener(client.ip, client.coa_port, secret, on_notice),
            notifier(config),
        ):
            while (delivery := await h.delivery("nas-01")).outcome != "acked":
                assert delivery.outcome == "retried"
            assert delivery.notice_id == sent.notice_id
            notice, _ = await asyncio.wait_for(seen.get(), TIMEOUT)
            assert notice.id == sent.notice_id
