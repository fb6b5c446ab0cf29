"""The notifier on a real nats-server: plans and waves become authenticated notices."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.js.kv import KeyValue

from schemas import codec
from schemas.events import (
    FailoverNotice,
    ReadmitNotice,
    ReadmitWave,
)
from services.notifier.deliveries import Pending
from services.runtime.config import ConfigError
from tests.conftest import FarmFactory
from tests.support.notifying import TIMEOUT, harness, notifier, transport_farm
from tests.support.scraping import metrics_urls, scrape, value


async def test_plan_becomes_authenticated_notice_and_ack_settles_it(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm({"notifier": {"ack_timeout_s": 5.0}}, clients=3)
    caplog.set_level(logging.WARNING, logger="services.notifier.service")
    async with harness(config) as h, notifier(config):
        await h.until_ready("nas-03")
        before = time.time()
        await h.plan("A", ("ghost", ["B"]), ("nas-01", ["B", "C"]))

        msg = await h.notice("nas-01")
        notice = h.check_notice(msg, "nas-01", "A")
        assert isinstance(notice, FailoverNotice)
        # the bus signature is there too, for observers that hold the bus key
        assert h.bus.check(msg) == notice
        assert notice.alternates == ["B", "C"]
        assert (notice.server, notice.client, notice.incident_id) == ("A", "nas-01", "inc-1")
        assert notice.seq >= int(before * 1_000_000)
        validity = config.notifier.notice_validity_s
        assert before + validity <= notice.valid_until <= time.time() + validity

        sent = await h.delivery("nas-01")
        assert (sent.outcome, sent.notice_id, sent.notice_type) == (
            "sent",
            notice.id,
            "notice.failover.v2",
        )
        assert sent.server == "A"
        await h.ack("nas-01", notice.id, "A")
        acked = await h.delivery("nas-01")
        assert (acked.outcome, acked.notice_id, acked.attempts) == ("acked", notice.id, 1)
        assert acked.latency_s is not None and 0 <= acked.latency_s < TIMEOUT

        # a second plan for the same client carries a higher sequence number
        await h.plan("A", ("nas-01", ["C"]))
        again = h.check_notice(await h.notice("nas-01"), "nas-01", "A")
        assert again.seq > notice.seq
        assert again.alternates == ["C"]

    assert h.notices["ghost"].empty()
    assert any("unknown-client" in r.getMessage() for r in caplog.records)


async def test_unacked_notice_is_resent_verbatim_then_failed(farm: FarmFactory) -> None:
    config, _ = farm({"notifier": {"ack_timeout_s": 0.2, "retries": 2}}, clients=3)
    async with harness(config) as h, notifier(config):
        await h.until_ready("nas-03")
        await h.plan("A", ("nas-01", ["B"]))
        first = await h.notice("nas-01")
        outcomes = [await h.delivery("nas-01") for _ in range(4)]
        assert [(d.outcome, d.attempts) for d in outcomes] == [
            ("sent", 1),
            ("retried", 2),
            ("retried", 3),
            ("failed", 3),
        ]
        assert {d.notice_id for d in outcomes} == {codec.decode(first.data).id}
        for _ in range(2):
            resent = await h.notice("nas-01")
            assert resent.data == first.data
            assert resent.headers == first.headers
        # nothing more after the failure
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(h.notices["nas-01"].get(), 0.5)


async def test_wave_grants_and_defers_readmission(farm: FarmFactory) -> None:
    config, _ = farm(clients=4)  # nas-01 and nas-04 live on A, nas-02 on B
    async with harness(config) as h, notifier(config):
        await h.until_ready("nas-03")
        wave = ReadmitWave(
            incident_id="inc-1",
            server="A",
            wave=2,
            clients=["nas-01", "nas-02"],
            deferred=["nas-04"],
            retry_after_s=7.0,
        )
        await h.bus.publish(h.bus.subjects.readmit("A"), wave)

        granted = h.check_notice(await h.notice("nas-01"), "nas-01", "A")
        assert isinstance(granted, ReadmitNotice)
        assert (granted.granted, granted.server, granted.wave) == (True, "A", 2)
        deferred = h.check_notice(await h.notice("nas-04"), "nas-04", "A")
        assert isinstance(deferred, ReadmitNotice)
        assert (deferred.granted, deferred.retry_after_s, deferred.server) == (False, 7.0, "A")
        for client, notice in (("nas-01", granted), ("nas-04", deferred)):
            sent = await h.delivery(client)
            assert (sent.outcome, sent.notice_id, sent.notice_type) == (
                "sent",
                notice.id,
                "notice.readmit.v2",
            )
        # nas-02's home is B: a wave of A does not call it home
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(h.notices["nas-02"].get(), 0.5)


async def test_restarted_notifier_resumes_notices_in_flight(farm: FarmFactory) -> None:
    config, _ = farm({"notifier": {"ack_timeout_s": 1.0, "retries": 5}}, clients=3)
    async with harness(config) as h:
        async with notifier(config):
            await h.until_ready("nas-03")
            await h.plan("A", ("nas-01", ["B"]))
            first = await h.notice("nas-01")
            sent = await h.delivery("nas-01")
            assert sent.outcome == "sent"
        stopped = time.time()
        async with notifier(config):
            while True:
                delivery = await h.delivery("nas-01")
                if delivery.time > stopped:
                    break
            assert (delivery.outcome, delivery.notice_id) == ("retried", sent.notice_id)
            while (resent := await h.notice("nas-01")).data != first.data:
                pass
            await h.ack("nas-01", sent.notice_id, "A")
            while (delivery := await h.delivery("nas-01")).outcome != "acked":
                pass
            assert delivery.notice_id == sent.notice_id
            assert delivery.latency_s is not None and delivery.latency_s >= 1.0
            assert resent.headers == first.headers

            await h.plan("A", ("nas-01", ["C"]))
            while (msg := await h.notice("nas-01")).data == first.data:
                pass
            later = codec.decode(msg.data)
            assert isinstance(later, FailoverNotice)
            assert later.seq > codec.decode(first.data).seq  # type: ignore[union-attr]


async def test_notices_in_flight_are_stored_together_and_values_stored_one_a_notice_are_resumed(
    farm: FarmFactory,
) -> None:
    config, _ = farm({"notifier": {"ack_timeout_s": 1.0, "retries": 5}}, clients=3)
    decode = msgspec.json.Decoder(list[Pending])
    async with harness(config) as h:
        kv = await h.bus.kv("notifier")
        async with notifier(config):
            await h.until_ready("nas-02")
            await h.plan("A", ("nas-01", ["B"]), ("nas-03", ["B"]))
            first = {c: await h.notice(c) for c in ("nas-01", "nas-03")}
            for client in first:
                assert (await h.delivery(client)).outcome == "sent"
            # the plan's two notices are one value
            chunks = await _chunks(kv, decode)
            while not (ours := [k for k, c in chunks.items() if c[0].client != "nas-02"]):
                chunks = await _chunks(kv, decode)
        (key,) = ours
        chunk = chunks[key]
        assert sorted(p.client for p in chunk) == ["nas-01", "nas-03"]
        # as a notifier from before chunks stored them: a value each, under its id
        for pending in chunk:
            await kv.put(pending.notice_id, msgspec.json.encode(pending))
        if key not in {p.notice_id for p in chunk}:
            await kv.purge(key)
        stopped = time.time()
        async with notifier(config):
            for client, msg in first.items():
                while (delivery := await h.delivery(client)).time <= stopped:
                    pass
                assert delivery.outcome == "retried"
                while (await h.notice(client)).data != msg.data:
                    pass
                await h.ack(client, codec.decode(msg.data).id, "A")
                while (await h.delivery(client)).outcome != "acked":
                    pass
            # answered, they are no longer stored
            left = await _chunks(kv, decode)
            while any(p.client != "nas-02" for c in left.values() for p in c):
                left = await _chunks(kv, decode)


async def _chunks(
    kv: KeyValue, decode: msgspec.json.Decoder[list[Pending]]
) -> dict[str, list[Pending]]:
    """The notifier's stored chunks, by key, a little while from now (nas-02's probes too)."""
    await asyncio.sleep(0.05)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    chunks = {}
    for key in keys:
        value = (await kv.get(key)).value or b""
        chunks[key] = decode.decode(value if value.startswith(b"[") else b"[" + value + b"]")
    return chunks


# --- delivery tracking of transports that answer by themselves (CoA) -------


async def test_the_notifiers_drops_show_on_metrics(farm: FarmFactory) -> None:
    """A plan naming an unknown client and an ack that matches nothing are counted on the
    bus's drop path, so /metrics shows them under aaa_failover_events_dropped."""
    config, _ = farm({"notifier": {"ack_timeout_s": 5.0}}, clients=3)
    config = config.with_metrics_port("notifier", 0)
    labels = {"service": "notifier"}
    with metrics_urls() as urls:
        async with harness(config) as h, notifier(config):
            await h.until_ready("nas-03")
            (url,) = urls
            await h.plan("A", ("ghost", ["B"]), ("nas-01", ["B"]))
            notice = h.check_notice(await h.notice("nas-01"), "nas-01", "A")
            await h.ack("nas-01", "no-such-notice", "A")
            await h.ack("nas-01", notice.id, "A")
            assert (await h.delivery("nas-01")).outcome == "sent"
            assert (await h.delivery("nas-01")).outcome == "acked"
            samples = await scrape(url)
    dropped = "aaa_failover_events_dropped_total"
    assert value(samples, dropped, reason="unknown-client", **labels) == 1
    assert value(samples, dropped, reason="unmatched-ack", **labels) == 1


async def test_notices_go_by_each_clients_transport_only(farm: FarmFactory, tmp_path: Path) -> None:
    """A radius-coa client gets nothing on the bus; its Delivery events still go there."""
    config = transport_farm(
        farm,
        tmp_path,
        {"nas-01": "radius-coa"},
        {"coa_timeout_s": 0.1, "coa_retries": 0, "retries": 0},
    )
    async with harness(config) as h, notifier(config):
        await h.until_ready("nas-03")
        await h.plan("A", ("nas-01", ["B"]))
        await h.plan("C", ("nas-03", ["A"]))
        assert (await h.delivery("nas-01")).outcome == "sent"
        assert (await h.delivery("nas-01")).outcome == "failed"  # nobody answers the CoA
        h.check_notice(await h.notice("nas-03"), "nas-03", "C")
        assert h.notices["nas-01"].empty()


@pytest.mark.parametrize(
    "settings",
    [{"coa_timeout_s": 0.0}, {"coa_retries": -1}, {"coa_timeout_s": 4.0, "coa_max_timeout_s": 2.0}],
)
def test_coa_settings_without_a_backoff_fail_when_the_config_is_read(
    farm: FarmFactory, settings: dict[str, float]
) -> None:
    name = next(iter(settings)) if len(settings) == 1 else "coa_max_timeout_s"
    with pytest.raises(ConfigError, match=name):
        farm({"notifier": settings})
