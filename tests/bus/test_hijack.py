"""Events moved where they were not signed for, on a real nats-server: a sandbox's plan
copied onto the live prefix, one client speaking on another's subject, numbers that are not
finite. Each is dropped and counted by the service that receives it, and moves no one."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

from nats.aio.msg import Msg

from schemas import codec
from schemas.events import ClientStatus, FailoverPlan, HealthReport, Move
from schemas.signing import sign_headers
from services.runtime.bus import Keyring, Signer
from services.targeter import service as targeter
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus, running
from tests.support.notifying import harness, notifier
from tests.support.scraping import Samples, metrics_urls, scrape, value

TIMEOUT = 5.0


async def _dropped(url: str, service: str, reasons: dict[str, int]) -> Samples:
    """Scrape ``url`` until each reason in ``reasons`` was dropped at least that often."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            samples = await scrape(url)
            counts = {
                r: value(samples, "aaa_failover_events_dropped_total", reason=r, service=service)
                or 0
                for r in reasons
            }
            if all(counts[r] >= n for r, n in reasons.items()):
                return samples
            await asyncio.sleep(0.05)


async def test_a_sandbox_plan_copied_onto_the_live_prefix_moves_no_one(
    farm: FarmFactory,
) -> None:
    """Finding: signatures covered the payload, not the subject, and a sandbox signed with
    the live key, so a peer with no key at all could copy a sandbox's plan onto the live
    prefix and move a real client. Now the signature binds the subject and a sandbox signs
    with its own key, which the live notifier does not hold."""
    config, _ = farm(clients=3)
    config = config.with_metrics_port("notifier", 0)
    sandbox = config.as_sandbox("sbx" + uuid.uuid4().hex[:10])
    with metrics_urls() as urls:
        async with (
            AsyncExitStack() as stack,
            harness(config) as h,
            notifier(config),
        ):
            await h.until_ready("nas-03")
            sbx = await operator_bus(sandbox, stack, "sandbox")
            live = h.bus.subjects

            async def copy_to_live(msg: Msg) -> None:
                server = msg.subject.rsplit(".", 1)[1]
                await h.bus.nc.publish(live.plan(server), msg.data, headers=msg.headers)

            await sbx.nc.subscribe(sbx.subjects.plan("*"), cb=copy_to_live)
            await sbx.nc.flush()
            moving = FailoverPlan(
                incident_id="sbx-1", server="A", moves=[Move(client="nas-01", alternates=["B"])]
            )
            # 1. published in the sandbox, copied as it is onto the live subject
            await sbx.publish(sbx.subjects.plan("A"), moving)
            # 2. signed by the sandbox's key for the live subject itself
            again = FailoverPlan(
                incident_id="sbx-2", server="A", moves=[Move(client="nas-01", alternates=["B"])]
            )
            payload, headers = sbx.encode(live.plan("A"), again)
            await h.bus.nc.publish(live.plan("A"), payload, headers=headers)
            # 3. a live plan for A, its bytes and signature moved onto B's subject
            live_plan = FailoverPlan(
                incident_id="live-1", server="A", moves=[Move(client="nas-01", alternates=["C"])]
            )
            payload, headers = h.bus.encode(live.plan("A"), live_plan)
            await h.bus.nc.publish(live.plan("B"), payload, headers=headers)
            samples = await _dropped(urls[0], "notifier", {"unknown-key": 2, "bad-signature": 1})
            # a genuine plan on the same subscription still goes through, after them all
            await h.plan("A", ("nas-02", ["B"]))
            sent = await h.delivery("nas-02")
            assert sent.outcome == "sent"
    assert h.deliveries["nas-01"].empty() and h.notices["nas-01"].empty()
    assert (
        value(
            samples, "aaa_failover_events_dropped_total", reason="unknown-key", service="notifier"
        )
        == 2
    )


async def test_a_client_speaks_only_on_its_own_subjects_and_only_in_finite_numbers(
    farm: FarmFactory,
) -> None:
    """Finding: one client's status was accepted on another client's subject, and a key
    holder could make ``rate = inf`` stick in the targeter's registry (and a NaN time pass
    the replay window). Now an event must be about what its subject names, and no event
    decodes with a number that is not finite."""
    config, _ = farm(clients=3)
    config = config.with_metrics_port("targeter", 0)
    nas1 = config.client("nas-01")
    signer = Signer(f"client:{nas1.id}", config.read_secret(nas1.secret))
    with metrics_urls() as urls:
        async with AsyncExitStack() as stack, running(targeter.run, config):
            bus = await operator_bus(config, stack)
            subjects = bus.subjects
            # nas-01's own words, on nas-02's subject
            await bus.publish(
                subjects.status("nas-02"),
                ClientStatus(client="nas-01", home="A", current="A", rate=5.0),
                signer=signer,
            )
            # an infinite rate and a NaN time, which msgpack can carry
            for status in (
                ClientStatus(client="nas-01", home="A", current="A", rate=float("inf")),
                ClientStatus(client="nas-01", home="A", current="A", time=float("nan")),
            ):
                subject = subjects.status("nas-01")
                payload = codec.encode(status, "msgpack")
                headers = sign_headers(signer.key_id, signer.key, subject, payload)
                headers[codec.CONTENT_TYPE] = codec.MSGPACK_TYPE
                await bus.nc.publish(subject, payload, headers=headers)
            # and from the bus key's side, a server's health of infinity
            report = HealthReport(
                server="A",
                sample_id="x",
                health=float("inf"),
                failover_threshold=0.2,
                connection_threshold=0.6,
            )
            payload = codec.encode(report, "msgpack")
            evaluator = bus.keyring.signer_for(subjects.health("A"))
            assert evaluator is not None and evaluator.key_id == "evaluator-1"
            headers = sign_headers(evaluator.key_id, evaluator.key, subjects.health("A"), payload)
            headers[codec.CONTENT_TYPE] = codec.MSGPACK_TYPE
            await bus.nc.publish(subjects.health("A"), payload, headers=headers)
            await bus.nc.flush()
            samples = await _dropped(urls[0], "targeter", {"wrong-subject": 1, "undecodable": 3})
    assert (
        value(
            samples, "aaa_failover_events_dropped_total", reason="wrong-subject", service="targeter"
        )
        == 1
    )
    assert (
        value(
            samples, "aaa_failover_events_dropped_total", reason="undecodable", service="targeter"
        )
        == 3
    )
    assert value(samples, "aaa_failover_handler_errors_total", service="targeter") == 0


async def test_a_compromised_collectors_key_cannot_sign_a_plan(
    farm: FarmFactory, tmp_path: Path
) -> None:
    """Finding: every service held the one bus key, so any of them could sign anything. With
    a key per service, a key signs only what its service publishes: a plan under the
    collector's key is dropped by the notifier, and the collector never held the targeter's."""
    keys_dir = tmp_path / "service-keys"
    keys_dir.mkdir()
    service_keys = {}
    for service in ("collector", "evaluator", "targeter", "notifier", "readmitter"):
        (keys_dir / service).write_text(f"{uuid.uuid4().hex}\n")
        service_keys[service] = [
            {"id": f"{service}-1", "secret": {"file": str(keys_dir / service)}}
        ]
    config, _ = farm({"bus": {"service_keys": service_keys}}, clients=3)
    config = config.with_metrics_port("notifier", 0)
    collector = Keyring.from_config(config, service="collector")
    assert collector.signer is not None and collector.signer.key_id == "collector-1"
    assert collector.bus_keys == {}  # it verifies nothing, so it holds no other key
    with metrics_urls() as urls:
        async with harness(config) as h, notifier(config):
            await h.until_ready("nas-03")  # the harness signs plans with the targeter's key
            forged = FailoverPlan(
                incident_id="forged", server="A", moves=[Move(client="nas-01", alternates=["B"])]
            )
            subject = h.bus.subjects.plan("A")
            # the collector's key: the notifier does not even hold it
            await h.bus.publish(subject, forged, signer=collector.signer)
            # the readmitter's key, which the notifier holds for readmission waves
            readmitter = Keyring.from_config(config, service="readmitter").signer
            assert readmitter is not None and readmitter.key_id == "readmitter-1"
            again = FailoverPlan(
                incident_id="forged-2", server="A", moves=[Move(client="nas-01", alternates=["B"])]
            )
            await h.bus.publish(subject, again, signer=readmitter)
            samples = await _dropped(urls[0], "notifier", {"unknown-key": 1, "key-not-allowed": 1})
            await h.plan("A", ("nas-02", ["B"]))
            assert (await h.delivery("nas-02")).outcome == "sent"
    assert h.deliveries["nas-01"].empty()
    assert (
        value(
            samples,
            "aaa_failover_events_dropped_total",
            reason="key-not-allowed",
            service="notifier",
        )
        == 1
    )
