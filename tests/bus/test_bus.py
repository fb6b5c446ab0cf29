"""The bus on a real nats-server: signed events pass, bad ones are dropped and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from schemas import codec
from schemas.codec import CONTENT_TYPE
from schemas.events import HealthReport, MetricsSample
from schemas.signing import KEY_HEADER, SIG_HEADER, sign_headers
from services.launch.farm import write_farm
from services.runtime.bus import Bus, Keyring, Signer
from services.runtime.natsserver import EmbeddedNats
from tests.conftest import FarmFactory


def _sample(server: str = "A", seq: int = 1, **kwargs: object) -> MetricsSample:
    return MetricsSample(server=server, seq=seq, status_ok=True, **kwargs)  # type: ignore[arg-type]


async def _bus(config, stack: AsyncExitStack, name: str = "t") -> Bus:  # type: ignore[no-untyped-def]
    return await Bus.connect(config.bus, Keyring.from_config(config), name=name, stack=stack)


async def test_signed_event_arrives_and_bad_ones_are_dropped(
    farm: FarmFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.runtime.bus")
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        got: asyncio.Queue[MetricsSample] = asyncio.Queue()

        async def handler(event: MetricsSample) -> None:
            await got.put(event)

        subject = bus.subjects.metrics("A")
        await bus.subscribe(subject, handler, types=(MetricsSample,))

        good = _sample(queue_len=3)
        await bus.publish(subject, good)
        received = await asyncio.wait_for(got.get(), 5)
        assert received == good

        payload, headers = bus.encode(subject, _sample())
        nc = bus.nc
        # unsigned
        await nc.publish(subject, payload)
        # tampered payload under a valid signature
        await nc.publish(subject, payload.replace(b'"A"', b'"B"'), headers=headers)
        # signed with a key the receiver does not hold
        await nc.publish(subject, payload, headers=sign_headers("k1", b"wrong", subject, payload))
        # unknown key id
        await nc.publish(subject, payload, headers=sign_headers("k9", b"x", subject, payload))
        # the same event id twice: the first passes, the repeat is dropped
        await nc.publish(subject, payload, headers=headers)
        await nc.publish(subject, payload, headers=headers)
        # older than the replay window
        stale = _sample()
        stale = MetricsSample(
            **{
                **{f: getattr(stale, f) for f in stale.__struct_fields__},
                "time": time.time() - 3600,
            }
        )
        await bus.publish(subject, stale)
        # a valid event of a type this subscription does not take
        await bus.publish(
            subject,
            HealthReport(
                server="A",
                sample_id="x",
                health=1.0,
                failover_threshold=0.2,
                connection_threshold=0.6,
            ),
        )
        # garbage that is validly signed, by the key that signs samples
        signer = bus.keyring.signer_for(subject)
        assert signer is not None
        await nc.publish(
            subject,
            b"{not json",
            headers={
                **sign_headers(signer.key_id, signer.key, subject, b"{not json"),
                CONTENT_TYPE: codec.JSON_TYPE,
            },
        )
        await bus.nc.flush()

        once = await asyncio.wait_for(got.get(), 5)
        assert once.id == _sample_id(payload)
        # the service keeps working after all of that
        after = _sample(queue_len=9)
        await bus.publish(subject, after)
        assert (await asyncio.wait_for(got.get(), 5)) == after
        assert got.empty()
        assert dict(bus.counters.dropped) == {
            "unsigned": 1,
            "bad-signature": 2,
            "unknown-key": 1,
            "replayed": 1,
            "stale": 1,
            "unexpected-type": 1,
            "undecodable": 1,
        }
        # each drop is logged once, but a kind the subscription does not take only counted
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 7 and not any("unexpected-type" in m for m in warned), warned


def _sample_id(payload: bytes) -> str:
    event = codec.decode(payload)
    return event.id


async def test_client_key_only_speaks_for_its_own_client(farm: FarmFactory) -> None:
    from schemas.events import Ack

    config, _ = farm(clients=2)
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        got: asyncio.Queue[Ack] = asyncio.Queue()

        async def handler(event: Ack) -> None:
            await got.put(event)

        await bus.subscribe(bus.subjects.ack("*"), handler, types=(Ack,), accept_clients=True)
        nas1, nas2 = config.clients
        signer1 = Signer("client:" + nas1.id, config.read_secret(nas1.secret))
        honest = Ack(notice_id="n", client=nas1.id, server="A", accepted=True)
        lying = Ack(notice_id="n", client=nas2.id, server="A", accepted=True)
        await bus.publish(bus.subjects.ack(nas2.id), lying, signer=signer1)
        await bus.publish(bus.subjects.ack(nas1.id), honest, signer=signer1)
        assert (await asyncio.wait_for(got.get(), 5)) == honest
        assert bus.counters.dropped["impersonation"] == 1


@pytest.mark.parametrize("header", [KEY_HEADER, SIG_HEADER])
async def test_missing_header_is_unsigned(farm: FarmFactory, header: str) -> None:
    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        payload, headers = bus.encode("x", _sample())
        del headers[header]

        class Msg:
            data = payload
            subject = "x"

        Msg.headers = headers  # type: ignore[attr-defined]
        from schemas.signing import Rejected

        with pytest.raises(Rejected) as info:
            bus.check(Msg())  # type: ignore[arg-type]
        assert info.value.reason == "unsigned"


async def test_guards_and_handlers_drop_through_the_one_path(farm: FarmFactory) -> None:
    from schemas.errors import Rejected
    from services.runtime.middleware import known_server

    config, _ = farm()
    async with AsyncExitStack() as stack:
        bus = await _bus(config, stack)
        got: asyncio.Queue[MetricsSample] = asyncio.Queue()

        async def handler(event: MetricsSample) -> None:
            if event.seq == 7:
                raise Rejected("out-of-order", "seq 7")
            await got.put(event)

        subject = bus.subjects.metrics("*")
        await bus.subscribe(subject, handler, types=(MetricsSample,), guards=[known_server({"A"})])
        await bus.publish(bus.subjects.metrics("Z"), _sample("Z"))
        await bus.publish(bus.subjects.metrics("A"), _sample(seq=7))
        last = _sample(queue_len=1)
        await bus.publish(bus.subjects.metrics("A"), last)
        assert (await asyncio.wait_for(got.get(), 5)) == last
        assert dict(bus.counters.dropped) == {"unknown-server": 1, "out-of-order": 1}
        assert bus.counters.accepted == 3 and bus.counters.handler_errors == 0
        assert bus.counters.handled == {"MetricsSample": 1}
        assert bus.stats()["handled"] == {"MetricsSample": 1}


async def test_a_bus_gone_away_is_logged_once_per_kind_of_error_not_per_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py reports every failed attempt to reconnect, two a second: 932 warnings in
    50 s were seen. The first of each kind is logged, the rest counted."""
    caplog.set_level(logging.WARNING, logger="services.runtime.bus")
    with EmbeddedNats(tmp_path / "nats") as server:
        config, _ = write_farm(tmp_path / "farm", bus_url=server.url, clients=0)
        async with AsyncExitStack() as stack:
            await Bus.connect(config.bus, Keyring.from_config(config), name="test", stack=stack)
            server.stop()
            await asyncio.sleep(3.0)  # some six attempts to reconnect
            errors = [r for r in caplog.records if r.getMessage().startswith("bus error")]
    assert 1 <= len(errors) <= 2, [r.getMessage() for r in errors]
