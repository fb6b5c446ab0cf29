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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyrad import packet

from schemas.events import ClientStatus
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import ACCESS_ACCEPT, access_request, dictionary
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import status
from tests.support.proxying import NAS, auth_target, proxying, reference, with_proxy

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


async def login(client: RadiusClient, on_challenge: Callable[[], None] = lambda: None) -> str:
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
            on_challenge()
            await asyncio.sleep(PAUSE_S)  # the device working out its next answer
            continue
        return "accept" if reply.code == ACCESS_ACCEPT else "reject"
    return "too-many-rounds"


class Logins:
    """``PARALLEL`` logins at a time, one after another, until ``stop`` is set."""

    def __init__(self, target: str) -> None:
        ip, port = target.split(":")
        self.address = (ip, int(port))
        self.outcomes: list[str] = []
        self.challenges = 0
        self.stop = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self) -> list[str]:
        async def lane() -> None:
            client = await RadiusClient.open(self.address, NAS)
            try:
                while not self.stop.is_set():
                    self.outcomes.append(await login(client, self._challenged))
                    self._changed.set()
            finally:
                client.close()

        await asyncio.gather(*(lane() for _ in range(PARALLEL)))
        return self.outcomes

    def _challenged(self) -> None:
        self.challenges += 1
        self._changed.set()

    async def more(self, count: int, outcome: str | None = None) -> None:
        """Wait until ``count`` more logins have ended (with ``outcome``, if given)."""

        def done() -> int:
            return sum(1 for o in self.outcomes if outcome is None or o == outcome)

        await self._until(done, done() + count)

    async def midway(self, count: int) -> None:
        """Wait until ``count`` more challenges have come: that many logins are midway,
        each holding a State its server issued."""
        await self._until(lambda: self.challenges, self.challenges + count)

    async def _until(self, value: Callable[[], int], target: int) -> None:
        async with asyncio.timeout(10):
            while value() < target:
                self._changed.clear()
                await self._changed.wait()


async def rejects(config: Config, server: str) -> int:
    return int((await status(config, server))["FreeRADIUS-Total-Access-Rejects"])


async def test_moves_there_and_back_fail_no_conversation(farm: FarmFactory, tmp_path: Path) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_challenges(with_proxy(config, tmp_path, alternates=("B",)))
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        logins = Logins(auth_target(config))
        load = asyncio.create_task(logins.run())
        await logins.more(PARALLEL)
        await logins.midway(PARALLEL)  # logins midway on A
        away = await watcher.acked(await watcher.failover("A", to="B"))
        await watcher.on("B")
        await logins.more(PARALLEL)
        await logins.midway(PARALLEL)  # and on B
        back = await watcher.acked(await watcher.readmit("A"))
        await watcher.on("A")
        await logins.more(PARALLEL)
        logins.stop.set()
        outcomes = await asyncio.wait_for(load, 10)
        assert len(outcomes) > 2 * PARALLEL
        assert set(outcomes) == {"accept"}, {o: outcomes.count(o) for o in set(outcomes)}
        assert await rejects(config, "A") == 0 and await rejects(config, "B") == 0
        # both servers carried conversations: the moves happened in the middle of them
        for server in ("A", "B"):
            assert (await status(config, server))["FreeRADIUS-Total-Access-Challenges"] > 0
        # each move said how many conversations were left to finish where they began
        assert (away.now_on, back.now_on) == ("B", "A"), (away, back)
        assert away.draining > 0 and back.draining > 0, (away, back)


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
    async with reference(config, "B"), proxying(config):
        logins = Logins(auth_target(config))
        async with reference(config, "A"):
            load = asyncio.create_task(logins.run())
            await logins.more(PARALLEL)
            await logins.midway(PARALLEL)  # logins midway on A
        # A is gone, with the sessions it held; new logins go to B
        await logins.more(2 * PARALLEL, "accept")
        logins.stop.set()
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
