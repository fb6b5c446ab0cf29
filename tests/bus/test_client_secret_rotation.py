"""A client's RADIUS secret rotated with no pause, on a real nats-server and real UDP.

Every client's secret goes through the three steps of a rotation
(``verify_secrets``, docs/security.md "Rotation") while an agent, a notifier
and an evaluator run, each restarted in turn onto each step's config, so that
at every point some run the step before: after each restart notices move the
clients (nas-01 by RADIUS CoA, nas-02 on the bus), the notifier takes their
acks or CoA-ACKs, the evaluator takes their statuses, and no service counts a
refusal. Once the old secret is dropped, what is signed under it is refused
by each of them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec

from schemas import codec
from schemas.events import Ack, ClientStatus, FailoverNotice
from schemas.signing import AUTH_HEADER, SERVER_HEADER, client_authenticator, client_key_id
from services.agent.service import run as run_agent
from services.evaluator.service import run as run_evaluator
from services.launch.registry import Entry
from services.notifier.service import run as run_notifier
from services.notifier.transports.coa import CoaClient
from services.radius.notice import NoticeMessage, coa_request
from services.radius.packet import dictionary
from services.runtime.bus import Signer
from services.runtime.config import Config, Secret
from tests.conftest import FarmFactory
from tests.support.helpers import running
from tests.support.notifying import Harness, harness, transport_farm
from tests.support.scraping import Samples, metrics_urls, scrape, value

TIMEOUT = 5.0
SERVICES: dict[str, Entry] = {
    "agent": run_agent,
    "notifier": run_notifier,
    "evaluator": run_evaluator,
}
MOVED = ("nas-01", "nas-02")  # by CoA, and on the bus
AUTHENTIC = {"unmatched-ack"}
"""Drops of what verified: the agent acks a CoA notice on the bus too, and the ack that
comes second (after the CoA-ACK, or before it) finds the notice settled."""


def _with_secrets(
    config: Config, secret: dict[str, Secret], verify: dict[str, list[Secret]]
) -> Config:
    clients = [
        msgspec.structs.replace(c, secret=secret[c.id], verify_secrets=verify[c.id])
        for c in config.clients
    ]
    config = msgspec.structs.replace(config, clients=clients)
    for service in SERVICES:
        config = config.with_metrics_port(service, 0)
    return config


class Farm:
    """The three services, each restarted alone onto a config, and what they show."""

    def __init__(self, stack: AsyncExitStack, urls: list[str]) -> None:
        self.stack = stack
        self.urls = urls
        self.running: dict[str, AsyncExitStack] = {}
        self.metrics: dict[str, str] = {}

    async def start(self, service: str, config: Config) -> None:
        old = self.running.pop(service, None)
        if old is not None:
            await old.aclose()
        before = len(self.urls)
        stack = AsyncExitStack()
        await stack.enter_async_context(running(SERVICES[service], config))
        self.running[service] = stack
        self.stack.push_async_callback(stack.aclose)
        (self.metrics[service],) = self.urls[before:]

    async def samples(self, service: str) -> Samples:
        return await scrape(self.metrics[service])

    async def refusals(self) -> dict[str, dict[str, float]]:
        """What each service counts as dropped or refused, by reason (empty: nothing)."""
        found: dict[str, dict[str, float]] = {}
        for service in SERVICES:
            for (name, labels), count in (await self.samples(service)).items():
                labelled = dict(labels)
                if (
                    name == "aaa_failover_events_dropped_total"
                    and count
                    and labelled["reason"] not in AUTHENTIC
                ):
                    found.setdefault(service, {})[labelled["reason"]] = count
                if (
                    name == "aaa_failover_agent_packets_total"
                    and count
                    and labelled["outcome"] not in ("accepted", "ack-sent")
                ):
                    key = f"{labelled['client']} {labelled['outcome']}"
                    found.setdefault(service, {})[key] = count
        return found

    async def statuses_taken(self) -> float:
        """The statuses the running evaluator has taken (since it started)."""
        samples = await self.samples("evaluator")
        taken = value(
            samples,
            "aaa_failover_handler_seconds_count",
            service="evaluator",
            event="ClientStatus",
        )
        return taken or 0.0


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_clients_secret_rotates_in_three_steps_with_no_refusal(
    farm: FarmFactory, tmp_path: Path
) -> None:
    base = transport_farm(farm, tmp_path, {"nas-01": "radius-coa"})
    # no load of their own (no home server runs here) and no return home during the test
    base = msgspec.structs.replace(
        base,
        clients=[msgspec.structs.replace(c, rate=0.0, return_after_s=600.0) for c in base.clients],
    )
    old = {c.id: c.secret for c in base.clients}
    new: dict[str, Secret] = {}
    for c in base.clients:
        path = tmp_path / f"new-{c.id}"
        path.write_text(secrets.token_hex(16) + "\n")
        new[c.id] = Secret(file=str(path))
    none: dict[str, list[Secret]] = {c: [] for c in old}
    steps = [
        ("1: the new secret verifies", _with_secrets(base, old, {c: [new[c]] for c in old})),
        ("2: the new secret signs", _with_secrets(base, new, {c: [old[c]] for c in old})),
        ("3: the old secret is dropped", _with_secrets(base, new, none)),
    ]
    before = _with_secrets(base, old, none)
    # the harness (the targeter, and an observer of statuses) holds both secrets throughout
    observer = steps[0][1]
    where = {c.id: c.home for c in base.clients}
    statuses: defaultdict[str, asyncio.Queue[ClientStatus]] = defaultdict(asyncio.Queue)

    async def move_each(h: Harness, services: Farm, when: str) -> None:
        """Move each client of MOVED by a notice; see it acked, its status taken."""
        taken = await services.statuses_taken()
        for client in MOVED:
            config = observer.client(client)
            target = config.home if where[client] != config.home else config.alternates[0]
            await h.plan(where[client], (client, [target]))
            outcomes = [(await h.delivery(client)).outcome for _ in range(2)]
            assert outcomes == ["sent", "acked"], (when, client)
            async with asyncio.timeout(TIMEOUT):
                while (await statuses[client].get()).current != target:
                    pass
            where[client] = target

        async def more_taken() -> bool:
            return await services.statuses_taken() >= taken + len(where)

        await _until(more_taken, f"{when}: the evaluator takes the agents' statuses")
        assert await services.refusals() == {}, when

    with metrics_urls() as urls:
        async with AsyncExitStack() as stack:
            h = await stack.enter_async_context(harness(observer))

            async def on_status(event: ClientStatus) -> None:
                await statuses[event.client].put(event)

            await h.bus.subscribe(
                h.bus.subjects.status("*"), on_status, types=(ClientStatus,), accept_clients=True
            )
            services = Farm(stack, urls)
            for service in SERVICES:
                await services.start(service, before)
            await move_each(h, services, "before")
            for step, config in steps:
                # each service onto the step alone: the others still run the step before
                for service in SERVICES:
                    await services.start(service, config)
                    await move_each(h, services, f"step {step}, {service} restarted")

            # the old secret, in neither list now, is refused by each verifier
            final = steps[-1][1]
            retired = {c: final.read_secret(old[c]) for c in old}
            await _refused_everywhere(h, services, final, retired)


async def _refused_everywhere(
    h: Harness, services: Farm, config: Config, retired: dict[str, bytes]
) -> None:
    bus = h.bus
    # a status signed with the retired secret: the evaluator refuses it
    status = ClientStatus(client="nas-02", home="B", current="B")
    signer = Signer(client_key_id("nas-02"), retired["nas-02"])
    await bus.publish(bus.subjects.status("nas-02"), status, signer=signer)
    # an ack under it: the notifier refuses it
    ack = Ack(notice_id="n-1", client="nas-02", server="B", accepted=True, now_on="B")
    await bus.publish(bus.subjects.ack("nas-02"), ack, signer=signer)
    # a notice on the bus authenticated under it: the agent refuses it
    client = config.client("nas-02")
    server = config.server(client.home)
    notice = FailoverNotice(
        incident_id="forged",
        server=server.id,
        client=client.id,
        alternates=["C"],
        seq=int(time.time() * 1_000_000) + 10_000_000,
        valid_until=time.time() + 60,
    )

    def authenticate(payload: bytes) -> dict[str, str]:
        auth = client_authenticator(retired["nas-02"], server.ip, client.ip, payload)
        return {AUTH_HEADER: auth, SERVER_HEADER: server.id}

    await bus.publish(bus.subjects.notice("nas-02"), notice, authenticate=authenticate)
    # a CoA-Request under it: the agent's listener discards it, unanswered
    coa_client = config.client("nas-01")
    coa_server = config.server("A")
    body = codec.encode(
        FailoverNotice(
            incident_id="forged",
            server="A",
            client="nas-01",
            alternates=["C"],
            seq=notice.seq,
            valid_until=notice.valid_until,
        )
    )
    auth = client_authenticator(retired["nas-01"], coa_server.ip, coa_client.ip, body)
    request = coa_request(
        NoticeMessage(server="A", payload=body, authenticator=auth),
        retired["nas-01"],
        dictionary(),
        now=time.time(),
    )
    sender = CoaClient()
    try:
        result = await sender.exchange(request, (coa_client.ip, coa_client.coa_port), [0.5])
    finally:
        sender.close()
    assert not result.acked and result.code is None

    expected = {
        "evaluator": {"bad-signature": 1.0},
        "notifier": {"bad-signature": 1.0},
        "agent": {"bad-authenticator": 1.0, "nas-01 bad-authenticator": 1.0},
    }

    async def all_refused() -> bool:
        return await services.refusals() == expected

    try:
        await _until(all_refused, "the retired secret is refused by each verifier")
    except AssertionError:
        assert await services.refusals() == expected
        raise
