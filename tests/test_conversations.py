"""Conversations that survive moves: each round of a multi-round login (as EAP runs over
Access-Challenge and State) goes to the server that began it.

The reference servers here answer each login with three Access-Challenges, the
session held by the server that issued the State (another one rejects it, as
FreeRADIUS answers "No EAP session matching state"). A NAS runs 16 logins at
once, with a pause per round trip, through the agent's proxy while notices
move the client from A to B and back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyrad import packet

from schemas.events import Ack, ClientStatus
from services.runtime.config import Config
from services.runtime.radius import (
    ACCESS_ACCEPT,
    RadiusClient,
    RadiusTimeout,
    access_request,
    dictionary,
)
from tests.conftest import FarmFactory
from tests.helpers import status
from tests.test_proxy import NAS, auth_target, proxying, reference, with_proxy

ROUNDS = 3
PARALLEL = 16
PAUSE_S = 0.03
CHALLENGE = 11


def with_challenges(config: Config) -> Config:
    servers = [
        msgspec.structs.replace(
            s, reference=msgspec.structs.replace(s.reference, challenge_rounds=ROUNDS)
        )
        if s.reference is not None
        else s
        for s in config.servers
    ]
    return msgspec.structs.replace(config, servers=servers)


async def login(client: RadiusClient) -> str:
    """One login through every round: "accept", "reject" or "lost"."""
    state: bytes | None = None
    for _ in range(ROUNDS + 2):
        request = access_request(NAS, "alice", "wonderland")
        if state is not None:
            request.AddAttribute("State", state)
        try:
            reply = await client.send(request, timeout_s=2.0)
        except RadiusTimeout:
            return "lost"
        if reply.code == CHALLENGE:
            state = reply["State"][0]
            await asyncio.sleep(PAUSE_S)
            continue
        return "accept" if reply.code == ACCESS_ACCEPT else "reject"
    return "too-many-rounds"


async def logins(target: str, stop: asyncio.Event) -> list[str]:
    """``PARALLEL`` logins at a time, one after another, until ``stop``."""
    ip, port = target.split(":")
    outcomes: list[str] = []

    async def lane() -> None:
        client = await RadiusClient.open((ip, int(port)), NAS)
        try:
            while not stop.is_set():
                outcomes.append(await login(client))
        finally:
            client.close()

    await asyncio.gather(*(lane() for _ in range(PARALLEL)))
    return outcomes


async def rejects(config: Config, server: str) -> int:
    return int((await status(config, server))["FreeRADIUS-Total-Access-Rejects"])


async def test_moves_there_and_back_fail_no_conversation(farm: FarmFactory, tmp_path: Path) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_challenges(with_proxy(config, tmp_path, alternates=("B",)))
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        acks: list[Ack] = []

        async def on_ack(ack: Ack) -> None:
            acks.append(ack)

        await watcher.bus.subscribe(
            watcher.bus.subjects.ack("*"), on_ack, types=(Ack,), accept_clients=True
        )
        stop = asyncio.Event()
        load = asyncio.create_task(logins(auth_target(config), stop))
        await asyncio.sleep(0.5)  # conversations in progress on A
        await watcher.failover("A", to="B")
        await watcher.on("B")
        await asyncio.sleep(0.5)  # and on B
        await watcher.failover("B", to="A")
        await watcher.on("A")
        await asyncio.sleep(0.5)
        stop.set()
        outcomes = await asyncio.wait_for(load, 10)
        assert len(outcomes) > 2 * PARALLEL
        assert set(outcomes) == {"accept"}, {o: outcomes.count(o) for o in set(outcomes)}
        assert await rejects(config, "A") == 0 and await rejects(config, "B") == 0
        # both servers carried conversations: the moves happened in the middle of them
        for server in ("A", "B"):
            assert (await status(config, server))["FreeRADIUS-Total-Access-Challenges"] > 0
        # each move said how many conversations were left to finish where they began
        assert [a.now_on for a in acks] == ["B", "A"] and all(a.draining > 0 for a in acks), acks


async def test_a_request_too_big_for_radius_is_refused_without_harming_the_upstream(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path, alternates=("B",))
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        ip, port = auth_target(config).split(":")
        client = await RadiusClient.open((ip, int(port)), NAS)
        try:
            # no Message-Authenticator from the NAS: the proxy adds one, 18 octets more
            big = packet.AuthPacket(code=packet.AccessRequest, secret=NAS, dict=dictionary())
            big["User-Name"] = "alice"
            big["User-Password"] = big.PwCrypt("wonderland")
            while len(big.RequestPacket()) + 250 + 2 <= 4090:
                big.AddAttribute("Proxy-State", b"x" * 250)
            pad = 4090 - len(big.RequestPacket()) - 2
            big.AddAttribute("Proxy-State", b"y" * pad)
            assert len(big.RequestPacket()) == 4090
            with pytest.raises(RadiusTimeout):
                await client.send(big, timeout_s=0.5)
            # A was never sent it, and is still the upstream in use: a normal request works
            answer = await client.send(access_request(NAS, "alice", "wonderland"), timeout_s=2)
            assert answer.code == ACCESS_ACCEPT
        finally:
            client.close()
        assert int((await status(config, "B"))["FreeRADIUS-Total-Auth-Responses"]) == 0
        assert not any(c.server == "A" for s in _drain(watcher.statuses) for c in s.changes)


async def test_a_stopped_server_fails_only_its_conversations_and_no_state_goes_elsewhere(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_challenges(with_proxy(config, tmp_path, alternates=("B",)))
    outcomes: list[str] = []
    async with reference(config, "B"), proxying(config):
        stop = asyncio.Event()
        async with reference(config, "A"):
            load = asyncio.create_task(logins(auth_target(config), stop))
            await asyncio.sleep(0.5)
        # A is gone, with the sessions it held; new logins go to B
        await asyncio.sleep(1.5)
        stop.set()
        outcomes = await asyncio.wait_for(load, 10)
        assert await rejects(config, "B") == 0  # no request bound to A was sent to B
    counts: dict[str, Any] = {o: outcomes.count(o) for o in set(outcomes)}
    assert set(counts) <= {"accept", "lost"} and 0 < counts.get("lost", 0) <= PARALLEL, counts
    assert counts["accept"] > PARALLEL, counts


def _drain(queue: asyncio.Queue[ClientStatus]) -> list[ClientStatus]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
