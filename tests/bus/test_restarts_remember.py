"""Restarts forget nothing an attacker could use, on a real nats-server and real UDP: a
captured CoA sent again to a restarted agent, a captured sample sent again to a restarted
evaluator. Both were taken as new before; both are refused now."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

from nats.aio.msg import Msg

from schemas import codec
from schemas.events import (
    ClientStatus,
    FailoverNotice,
    HealthReport,
    MetricsSample,
    ReadmitNotice,
)
from schemas.signing import client_authenticator
from services.agent import service as agent
from services.evaluator import service as evaluator
from services.radius import packet as radius
from services.radius.notice import COA_ACK, COA_NAK, NoticeMessage, coa_request
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import next_matching, operator_bus, running
from tests.support.notices import Notices
from tests.support.notifying import transport_farm
from tests.support.scraping import metrics_urls, scrape, value

TIMEOUT = 5.0


def _coa(config: Config, notice: FailoverNotice | ReadmitNotice) -> bytes:
    """The CoA-Request that carries ``notice`` to its client, as the notifier sends it."""
    client = config.client(notice.client)
    secret = config.read_secret(client.secret)
    payload = codec.encode(notice)
    auth = client_authenticator(secret, config.server(notice.server).ip, client.ip, payload)
    request = coa_request(
        NoticeMessage(server=notice.server, payload=payload, authenticator=auth),
        secret,
        radius.dictionary(),
        now=time.time(),
    )
    request.id = notice.seq % 256
    raw: bytes = request.RequestPacket()
    return raw


def _exchange(datagram: bytes, ip: str, port: int) -> int:
    """Send ``datagram`` and return the code of the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(datagram, (ip, port))
        return sock.recv(4096)[0]


async def test_a_captured_coa_sent_again_to_a_restarted_agent_is_refused(
    farm: FarmFactory, tmp_path: Path
) -> None:
    """Finding: a restarted agent forgot its last sequence number, and a captured CoA
    replayed after the restart was ACKed and moved the client. The agent now writes down
    what it accepted before it answers, and starts from it."""
    config = transport_farm(farm, tmp_path, {"nas-01": "radius-coa"})
    config = config.with_metrics_port("agent", 0)
    client = config.client("nas-01")
    statuses: asyncio.Queue[ClientStatus] = asyncio.Queue()

    async def on_status(status: ClientStatus) -> None:
        await statuses.put(status)

    def of_nas1(status: ClientStatus) -> bool:
        return status.client == "nas-01"

    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        await bus.subscribe(
            bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
        )
        seq = int(time.time() * 1_000_000)
        valid_until = time.time() + 300
        leave = FailoverNotice(
            incident_id="inc-1",
            server="A",
            client="nas-01",
            alternates=["B"],
            seq=seq,
            valid_until=valid_until,
        )
        home = ReadmitNotice(
            incident_id="inc-1", server="A", client="nas-01", seq=seq + 1, valid_until=valid_until
        )
        captured = _coa(config, leave)
        async with running(agent.run, config, only=["nas-01"]):
            code = await asyncio.to_thread(_exchange, captured, client.ip, client.coa_port)
            assert code == COA_ACK
            await next_matching(statuses, lambda s: of_nas1(s) and s.current == "B")
            # a later notice brings it home
            code = await asyncio.to_thread(
                _exchange, _coa(config, home), client.ip, client.coa_port
            )
            assert code == COA_ACK
            await next_matching(statuses, lambda s: of_nas1(s) and s.current == "A")
        remembered = config.path(config.agent.state_dir) / "nas-01.json"
        assert remembered.exists()

        restarted = time.time()
        with metrics_urls() as urls:
            async with running(agent.run, config, only=["nas-01"]):
                ready = await next_matching(statuses, lambda s: of_nas1(s) and s.time >= restarted)
                assert ready.current == "A"
                # the same bytes again, to an agent that never saw them in this life
                code = await asyncio.to_thread(_exchange, captured, client.ip, client.coa_port)
                assert code == COA_NAK
                later = await next_matching(
                    statuses, lambda s: of_nas1(s) and s.notices_rejected == 1
                )
                assert later.current == "A"
                samples = await scrape(urls[0])
        dropped = value(
            samples, "aaa_failover_events_dropped_total", reason="old-seq", service="agent"
        )
        assert dropped == 1


async def test_a_restarted_agent_stays_where_the_notices_sent_it(
    farm: FarmFactory, tmp_path: Path
) -> None:
    """Finding: an agent killed mid-overload sent its moved clients back to the overloaded
    server. It now comes back where it was, with its timers."""
    config = transport_farm(farm, tmp_path, {})
    statuses: asyncio.Queue[ClientStatus] = asyncio.Queue()

    async def on_status(status: ClientStatus) -> None:
        await statuses.put(status)

    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        await bus.subscribe(
            bus.subjects.status("nas-01"), on_status, types=(ClientStatus,), accept_clients=True
        )
        notices = Notices(config, bus)
        async with running(agent.run, config, only=["nas-01"]):
            await next_matching(statuses, lambda s: s.current == "A")
            await notices.failover("nas-01", "A", to="C")
            await next_matching(statuses, lambda s: s.current == "C")
        restarted = time.time()
        async with running(agent.run, config, only=["nas-01"]):
            back = await next_matching(statuses, lambda s: s.time >= restarted)
            assert (back.home, back.current) == ("A", "C")


async def test_a_captured_sample_sent_again_to_a_restarted_evaluator_is_refused(
    farm: FarmFactory,
) -> None:
    """Finding: a restarted service forgot the event ids it had seen within the replay
    window, so a captured event sent again after a restart was taken as new."""
    config, _ = farm(clients=0)
    config = config.with_metrics_port("evaluator", 0)
    reports: asyncio.Queue[HealthReport] = asyncio.Queue()
    captured: list[Msg] = []

    async def on_report(report: HealthReport) -> None:
        await reports.put(report)

    async def capture(msg: Msg) -> None:
        captured.append(msg)

    with metrics_urls() as urls:
        async with AsyncExitStack() as stack:
            bus = await operator_bus(config, stack)
            await bus.subscribe(bus.subjects.health("A"), on_report, types=(HealthReport,))
            await bus.nc.subscribe(bus.subjects.metrics("A"), cb=capture)
            subject = bus.subjects.metrics("A")
            async with running(evaluator.run, config):
                sample = MetricsSample(server="A", seq=1, status_ok=True)
                await bus.publish(subject, sample)
                first = await asyncio.wait_for(reports.get(), TIMEOUT)
                assert first.sample_id == sample.id
            async with running(evaluator.run, config):
                msg = captured[0]
                await bus.nc.publish(msg.subject, msg.data, headers=msg.headers)
                fresh = MetricsSample(server="A", seq=2, status_ok=True)
                await bus.publish(subject, fresh)
                # in order on one subscription: once the fresh one is answered, both were seen
                answered = await asyncio.wait_for(reports.get(), TIMEOUT)
                assert answered.sample_id == fresh.id
                samples = await scrape(urls[-1])
    assert reports.empty()
    stale = value(samples, "aaa_failover_events_dropped_total", reason="stale", service="evaluator")
    assert stale == 1
