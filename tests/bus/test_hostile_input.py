"""Hostile input on a real nats-server and real UDP: what an attacker on the bus or the
network sends is dropped and counted, never a crash, a restart loop or a failed tool.

Each test reproduces one finding: a payload nested past the recursion limit on the bus, in a
service's KV bucket and in the stream a tool reads back; a non-ASCII signature header; and
CoA-Requests without Event-Timestamp or under the wrong secret.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from contextlib import AsyncExitStack

import msgspec
import pytest

from schemas import codec
from schemas.events import Incident, MetricsSample
from schemas.signing import KEY_HEADER, SIG_HEADER, sign_headers
from services.agent.coa import CoaListener
from services.notifier.transports.coa import CoaClient
from services.radius.notice import (
    COA_NAK,
    EVENT_TIMESTAMP,
    ErrorCause,
    NoticeMessage,
    coa_request,
)
from services.radius.packet import dictionary
from services.runtime.bus import Bus
from services.runtime.config import Config
from services.runtime.keyring import Keyring
from services.tools.recording import WindowSpec, load
from services.tools.replay import replay
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus
from tests.support.observer import HIGH, LOW, evaluator, observer
from tests.support.scraping import metrics_urls, scrape, value

DEPTH = 100_000
"""Far past the interpreter's recursion limit (1,000), and still a small message (200 kB)."""
TIMEOUT = 5.0
EV = {"service": "evaluator"}


def nested_json(server: str = "A") -> bytes:
    """A metrics sample whose one unknown field holds arrays nested ``DEPTH`` deep: the
    decoder skips an unknown field by recursing into it, as it reads a known one."""
    head = b'{"type":"metrics.sample","server":"%s","seq":1,"status_ok":true,"deep":' % (
        server.encode()
    )
    return head + b"[" * DEPTH + b"]" * DEPTH + b"}"


def nested_msgpack() -> bytes:
    """The same in msgpack: a map of the sample's fields and ``deep``, arrays of one element."""
    fields = msgspec.msgpack.encode(
        {"type": "metrics.sample", "server": "A", "seq": 1, "status_ok": True}
    )
    assert fields[0] == 0x84  # a map of four: made a map of five
    return b"\x85" + fields[1:] + msgspec.msgpack.encode("deep") + b"\x91" * DEPTH + b"\x90"


def bus_signed(
    config: Config, subject: str, payload: bytes, content: str = codec.JSON_TYPE
) -> dict[str, str]:
    """Headers signing ``payload`` on ``subject`` with the key of the service that
    publishes there: only decoding can refuse it."""
    signer = Keyring.from_config(config).signer_for(subject)
    assert signer is not None
    return sign_headers(signer.key_id, signer.key, subject, payload) | {codec.CONTENT_TYPE: content}


def test_the_payloads_reach_the_recursion_limit() -> None:
    """What the tests below send is what made the decoder raise RecursionError."""
    with pytest.raises(RecursionError):
        msgspec.json.decode(nested_json())
    with pytest.raises(RecursionError):
        msgspec.msgpack.decode(nested_msgpack())
    with pytest.raises(RecursionError):
        msgspec.json.Decoder(codec.AnyEvent).decode(nested_json())
    for payload, content in (
        (nested_json(), codec.JSON_TYPE),
        (nested_msgpack(), codec.MSGPACK_TYPE),
    ):
        with pytest.raises(codec.DecodeError, match="nested too deeply"):
            codec.decode(payload, content)


async def test_nested_payloads_on_the_bus_are_counted_undecodable(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm(clients=0)
    config = config.with_metrics_port("evaluator", 0)
    caplog.set_level(logging.WARNING)
    with metrics_urls() as urls:
        async with AsyncExitStack() as stack, evaluator(config):
            obs = await stack.enter_async_context(observer(config, stack))
            await obs.wait_ready()
            subject = obs.bus.subjects.metrics("A")
            for payload, content in (
                (nested_json(), codec.JSON_TYPE),
                (nested_msgpack(), codec.MSGPACK_TYPE),
            ):
                await obs.bus.nc.publish(
                    subject, payload, headers=bus_signed(config, subject, payload, content)
                )
            # the same subscription, in order: once this one is answered, both were handled
            report = await obs.report_of(await obs.sample(HIGH))
            assert report.health == 0.875
            samples = await scrape(urls[0])
    assert value(samples, "aaa_failover_events_dropped_total", reason="undecodable", **EV) == 2
    assert value(samples, "aaa_failover_handler_errors_total", **EV) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("bus error") for m in messages)
    assert any("dropped event on" in m and "undecodable: nested too deeply" in m for m in messages)


async def test_a_non_ascii_signature_header_is_counted_as_a_drop(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm(clients=0)
    config = config.with_metrics_port("evaluator", 0)
    assert config.bus.key is not None
    caplog.set_level(logging.WARNING)
    with metrics_urls() as urls:
        async with AsyncExitStack() as stack, evaluator(config):
            obs = await stack.enter_async_context(observer(config, stack))
            await obs.wait_ready()
            subject = obs.bus.subjects.metrics("A")
            sample = MetricsSample(server="A", seq=10_000, status_ok=True, threads_active=LOW)
            payload = codec.encode(sample)
            good = bus_signed(config, subject, payload)
            # hmac.compare_digest refuses to compare non-ASCII text: it raised TypeError
            await obs.bus.nc.publish(subject, payload, headers=good | {SIG_HEADER: "é" * 64})
            await obs.bus.nc.publish(subject, payload, headers=good | {KEY_HEADER: "clé"})
            await obs.bus.nc.publish(subject, payload, headers=good | {SIG_HEADER: "AB" * 32})
            report = await obs.report_of(await obs.sample(HIGH))
            assert report.health == 0.875  # none of the forged LOW samples counted
            samples = await scrape(urls[0])
    assert value(samples, "aaa_failover_events_dropped_total", reason="bad-signature", **EV) == 2
    assert value(samples, "aaa_failover_events_dropped_total", reason="bad-key-id", **EV) == 1
    assert value(samples, "aaa_failover_handler_errors_total", **EV) == 0
    assert not any(r.getMessage().startswith("bus error") for r in caplog.records)


async def test_a_nested_value_in_a_services_bucket_is_ignored_and_the_rest_kept(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = farm(clients=0)
    caplog.set_level(logging.WARNING, logger="services.runtime.state")
    async with AsyncExitStack() as stack:
        obs = await stack.enter_async_context(observer(config, stack))
        async with evaluator(config):
            await obs.wait_ready()
            await obs.sample(LOW, server="B")
            await obs.sample(LOW, server="B")
            opened = await obs.incident()
            assert (opened.server, opened.state) == ("B", "opened")

        # the evaluator's own bucket, written with nats-py's KV as an attacker on the bus would
        kv = await obs.bus.kv("evaluator")
        await kv.put("A", b'{"server":"A","deep":' + b"[" * DEPTH + b"]" * DEPTH + b"}")
        await kv.put("C", b'"not a machine state"')

        served = config.with_metrics_port("evaluator", 0)
        with metrics_urls() as urls:
            async with evaluator(served):
                await obs.wait_ready()  # A is scored, from a fresh state
                report = await obs.report_of(await obs.sample(HIGH, server="B"))
                assert report.state == "overloaded"
                assert report.incident_id == opened.incident_id  # B's state was kept
                report = await obs.report_of(await obs.sample(HIGH, server="C"))
                assert report.state == "healthy"
                samples = await scrape(urls[0])
    assert value(samples, "aaa_failover_events_dropped_total", reason="bad-state", **EV) == 2
    ignored = [r.getMessage() for r in caplog.records if "ignoring stored" in r.getMessage()]
    assert len(ignored) == 2
    assert any("'A'" in m and "nested too deeply" in m for m in ignored)


async def _record_incident_with_a_nested_message(config: Config, bus: Bus) -> str:
    """An incident in the stream, and between its events a message no decoder takes."""
    await bus.ensure_stream(max_age_s=3600.0, max_bytes=64 * 1024 * 1024)
    now = time.time()
    incident_id = "inc-hostile"
    subject = bus.subjects.incident("A")
    opened = Incident(
        incident_id=incident_id, server="A", state="opened", health=0.0, opened_at=now
    )
    await bus.publish(subject, opened)
    hostile = nested_json()
    await bus.nc.publish(subject, hostile, headers=bus_signed(config, subject, hostile))
    await bus.publish(bus.subjects.metrics("A"), MetricsSample(server="A", seq=1, status_ok=True))
    closed = Incident(
        incident_id=incident_id, server="A", state="closed", health=0.9, opened_at=now
    )
    payload, headers = bus.encode(subject, closed)
    await bus.js.publish(subject, payload, headers=headers)  # stored once acked: all before too
    return incident_id


async def test_replay_over_a_stream_holding_a_nested_message_skips_and_counts_it(
    farm: FarmFactory,
) -> None:
    config, _ = farm(clients=0)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        incident_id = await _record_incident_with_a_nested_message(config, bus)
    window = WindowSpec(incident=incident_id, before_s=5.0, after_s=5.0)

    out = io.StringIO()
    assert await replay(config, window, out=out) == 0
    lines = out.getvalue().splitlines()
    assert sum("state=opened" in line for line in lines) == 1
    assert sum("state=closed" in line for line in lines) == 1
    assert any("undecodable" in line and "[REJECTED undecodable]" in line for line in lines)
    assert any(
        line.startswith("4 events")
        and "1 failed verification and are skipped (1 undecodable)" in line
        for line in lines
    )

    # what-if and report read the same window through load(): the message is left out
    loaded = await load(config, window)
    assert loaded.skipped == Counter({"undecodable": 1})
    assert [type(e).__name__ for e in loaded.events] == ["Incident", "MetricsSample", "Incident"]
    assert loaded.span is not None and loaded.span.closed


# --- RADIUS CoA on real UDP -----------------------------------------------------------------


async def test_coa_without_event_timestamp_is_refused_and_unauthenticated_coa_unanswered() -> None:
    secret = b"coa-secret"
    calls: list[str] = []

    async def on_notice(server: str, payload: bytes, auth: str | None, ct: str | None) -> bool:
        calls.append(server)
        return True

    message = NoticeMessage(server="A", payload=b'{"type":"x"}', authenticator="ab" * 32)
    client = CoaClient()
    try:
        async with CoaListener("127.0.1.1", 0, secret, on_notice) as listener:
            undated = coa_request(message, secret, dictionary(), now=time.time())
            del undated[EVENT_TIMESTAMP]
            refused = await client.exchange(undated, listener.address, [TIMEOUT])
            assert (refused.code, refused.error_cause) == (COA_NAK, ErrorCause.MISSING_ATTRIBUTE)

            wrong = coa_request(message, b"not-the-secret", dictionary(), now=time.time())
            silent = await client.exchange(wrong, listener.address, [0.3, 0.3])
            assert (silent.acked, silent.code, silent.unverified) == (False, None, 0)
            assert silent.transmissions == 2

            bare = coa_request(message, secret, dictionary(), now=time.time())
            bare.message_authenticator = None
            del bare[80]
            unsigned = await client.exchange(bare, listener.address, [0.3])
            assert (unsigned.acked, unsigned.code) == (False, None)
            counters = dict(listener.counters)
            recent = dict(listener._recent)
    finally:
        client.close()
    assert calls == []
    assert counters["missing-event-timestamp"] == 1
    assert counters["bad-authenticator"] + counters.get("duplicate", 0) == 2
    assert counters["missing-message-authenticator"] == 1
    assert counters["nak-sent"] == 1 and "ack-sent" not in counters
    # nothing of the discarded requests is remembered: only the NAK'd one, to repeat its answer
    assert len(recent) == 1
