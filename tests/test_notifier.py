"""The notifier on a real nats-server: plans and waves become authenticated notices."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from schemas import codec
from schemas.events import (
    Ack,
    Delivery,
    Endpoint,
    FailoverNotice,
    FailoverPlan,
    Move,
    ReadmitNotice,
    ReadmitWave,
)
from schemas.signing import (
    AUTH_HEADER,
    SERVER_HEADER,
    Rejected,
    client_key_id,
    verify_client_authenticator,
)
from services.launch.farm import farm_dict, free_udp_port
from services.notifier.deliveries import DeliveryTracker, Failed, Retry
from services.notifier.service import run
from services.runtime.bus import Bus, Signer
from services.runtime.config import Config, ConfigError
from tests.conftest import FarmFactory
from tests.helpers import operator_bus, running
from tests.test_metrics import metrics_urls, scrape, value

TIMEOUT = 5.0


class Harness:
    """Plays the targeter, the readmitter and the clients around a notifier."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config = config
        self.bus = bus
        self.notices: defaultdict[str, asyncio.Queue[Msg]] = defaultdict(asyncio.Queue)
        self.deliveries: defaultdict[str, asyncio.Queue[Delivery]] = defaultdict(asyncio.Queue)

    async def listen(self) -> None:
        async def on_notice(msg: Msg) -> None:
            await self.notices[msg.subject.rsplit(".", 1)[1]].put(msg)

        async def on_delivery(event: Delivery) -> None:
            await self.deliveries[event.client].put(event)

        await self.bus.subscribe_raw(self.bus.subjects.notice("*"), on_notice)
        await self.bus.subscribe(self.bus.subjects.delivery("*"), on_delivery, types=(Delivery,))

    async def notice(self, client: str) -> Msg:
        return await asyncio.wait_for(self.notices[client].get(), TIMEOUT)

    async def delivery(self, client: str) -> Delivery:
        return await asyncio.wait_for(self.deliveries[client].get(), TIMEOUT)

    def secret(self, client: str) -> bytes:
        return self.config.read_secret(self.config.client(client).secret)

    async def plan(self, server: str, *moves: tuple[str, list[str]]) -> FailoverPlan:
        plan = FailoverPlan(
            incident_id="inc-1",
            server=server,
            moves=[Move(client=c, alternates=alts) for c, alts in moves],
        )
        await self.bus.publish(self.bus.subjects.plan(server), plan)
        return plan

    async def ack(self, client: str, notice_id: str, server: str) -> None:
        ack = Ack(notice_id=notice_id, client=client, server=server, accepted=True, now_on="B")
        signer = Signer(client_key_id(client), self.secret(client))
        await self.bus.publish(self.bus.subjects.ack(client), ack, signer=signer)

    async def until_ready(self, probe: str) -> None:
        """Send plans moving ``probe`` until the notifier reports one sent, and ack it."""
        home = self.config.client(probe).home
        for _ in range(40):
            await self.plan(home, (probe, []))
            try:
                delivery = await asyncio.wait_for(self.deliveries[probe].get(), 0.25)
            except TimeoutError:
                continue
            assert delivery.outcome == "sent"
            await self.ack(probe, delivery.notice_id, home)
            return
        raise AssertionError("the notifier never answered")

    def check_notice(self, msg: Msg, client: str, server: str) -> Any:
        """Verify ``msg`` as the client would; return the decoded notice."""
        headers = msg.headers or {}
        assert headers[SERVER_HEADER] == server
        c = self.config.client(client)
        server_ip = self.config.server(server).ip
        verify_client_authenticator(
            self.secret(client), server_ip, c.ip, msg.data, headers[AUTH_HEADER]
        )
        with pytest.raises(Rejected):
            verify_client_authenticator(
                b"not-the-secret", server_ip, c.ip, msg.data, headers[AUTH_HEADER]
            )
        with pytest.raises(Rejected):
            verify_client_authenticator(
                self.secret(client), "10.9.9.9", c.ip, msg.data, headers[AUTH_HEADER]
            )
        return codec.decode(msg.data, headers.get(codec.CONTENT_TYPE))


def transport_farm(
    farm: FarmFactory,
    tmp_path: Path,
    transports: Mapping[str, str],
    notifier: Mapping[str, Any] | None = None,
    clients: int = 3,
) -> Config:
    """A farm whose clients named in ``transports`` use that transport (and a free CoA port)."""
    shape = farm_dict(tmp_path / "shape", bus_url=None, clients=clients)
    client_list = []
    for entry in shape["clients"]:
        transport = transports.get(entry["id"])
        if transport is not None:
            entry = entry | {"transport": transport, "coa_port": free_udp_port(entry["ip"])}
        client_list.append(entry)
    config, _ = farm({"clients": client_list, "notifier": dict(notifier or {})}, clients=clients)
    return config


def notifier(config: Config) -> AbstractAsyncContextManager[object]:
    return running(run, config)


@asynccontextmanager
async def harness(config: Config) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "test")
        h = Harness(config, bus)
        await h.listen()
        yield h


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
        b, c = config.server("B"), config.server("C")
        assert notice.alternates == [
            Endpoint(server="B", ip=b.ip, auth_port=b.auth_port),
            Endpoint(server="C", ip=c.ip, auth_port=c.auth_port),
        ]
        assert (notice.server, notice.client, notice.incident_id) == ("A", "nas-01", "inc-1")
        assert notice.seq >= int(before * 1_000_000)
        validity = config.notifier.notice_validity_s
        assert before + validity <= notice.valid_until <= time.time() + validity

        sent = await h.delivery("nas-01")
        assert (sent.outcome, sent.notice_id, sent.notice_type) == (
            "sent",
            notice.id,
            "notice.failover",
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
        assert [e.server for e in again.alternates] == ["C"]

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
        a = config.server("A")
        home = Endpoint(server="A", ip=a.ip, auth_port=a.auth_port)

        granted = h.check_notice(await h.notice("nas-01"), "nas-01", "A")
        assert isinstance(granted, ReadmitNotice)
        assert (granted.granted, granted.home, granted.wave) == (True, home, 2)
        deferred = h.check_notice(await h.notice("nas-04"), "nas-04", "A")
        assert isinstance(deferred, ReadmitNotice)
        assert (deferred.granted, deferred.retry_after_s, deferred.home) == (False, 7.0, home)
        for client, notice in (("nas-01", granted), ("nas-04", deferred)):
            sent = await h.delivery(client)
            assert (sent.outcome, sent.notice_id, sent.notice_type) == (
                "sent",
                notice.id,
                "notice.readmit",
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


def _tracked(tracker: DeliveryTracker, now: float = 100.0) -> None:
    tracker.sent(
        notice_id="n1",
        notice_type="notice.failover",
        client="nas-01",
        server="A",
        subject="aaa.notice.nas-01",
        payload=b"{}",
        headers={},
        now=now,
    )


def test_an_exchange_holds_its_notice_and_each_retransmission_is_reported() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=1)
    _tracked(tracker)
    assert tracker.begin_exchange("n1", 100.0, hold_s=30.0) is not None
    assert tracker.due(200.0) == []  # never due while its exchange runs
    assert tracker.next_deadline() is None
    again = tracker.retransmitted("n1", 100.5)
    assert again is not None and (again.outcome, again.attempts) == ("retried", 2)
    # a failed exchange is due after the ack timeout: tried again as a new round
    tracker.exchange_failed("n1", 101.0)
    assert tracker.next_deadline() == 102.0
    assert tracker.due(101.9) == []
    (retry,) = tracker.due(102.0)
    assert isinstance(retry, Retry)
    assert (retry.delivery.outcome, retry.delivery.attempts, retry.pending.rounds) == (
        "retried",
        3,
        2,
    )
    # the last try fails at once
    tracker.begin_exchange("n1", 102.0, hold_s=30.0)
    failed = tracker.exchange_failed("n1", 103.0)
    assert isinstance(failed, Failed)
    assert (failed.delivery.outcome, failed.delivery.attempts) == ("failed", 3)
    assert len(tracker) == 0
    assert tracker.exchange_failed("n1", 103.0) is None


def test_an_acked_exchange_settles_and_a_restored_one_is_due_after_its_hold() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    _tracked(tracker)
    pending = tracker.begin_exchange("n1", 100.0, hold_s=30.0)
    assert pending is not None and pending.deadline == 130.0
    restarted = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    restarted.restore(pending)
    assert restarted.due(129.0) == []
    (retry,) = restarted.due(130.0)
    assert isinstance(retry, Retry)
    acked = tracker.acked("n1", "nas-01", 100.25)
    assert acked is not None and acked.latency_s == pytest.approx(0.25)
    assert tracker.exchanging == set()


def test_a_notice_that_cannot_be_sent_fails_at_once() -> None:
    tracker = DeliveryTracker(ack_timeout_s=1.0, retries=3)
    _tracked(tracker)
    failed = tracker.fail("n1", 100.1)
    assert failed is not None and (failed.outcome, failed.attempts) == ("failed", 1)
    assert tracker.fail("n1", 100.2) is None
    assert len(tracker) == 0


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
