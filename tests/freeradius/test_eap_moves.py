"""Real EAP conversations (eapol_test, PEAP-MSCHAPv2) through the agent's proxy while notices
move the client between two FreeRADIUS home servers: every round goes to the server that
began the conversation, so no move fails one (without it, FreeRADIUS answers "No EAP
session matching state" and the supplicant sees an Access-Reject)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import ClientStatus
from services.runtime.config import Config, ServerConfig
from tests.conftest import FarmFactory
from tests.support.eap import TIMEOUT_S, Running, Supplicant, start_many, station_mac
from tests.support.freeradius import FreeRadius, StartFreeRadius
from tests.support.helpers import next_matching, status
from tests.support.proxying import NAS, PROXY_IP, proxying, with_proxy

PARALLEL = 16
ROUND_DELAY_S = 0.05
HELD_TIMEOUT_S = 6.0
"""eapol_test's limit for conversations whose server stops: it retransmits once, at 3 s."""


def two_homes(farm: FarmFactory, tmp_path: Path, first: FreeRadius, second: FreeRadius) -> Config:
    """nas-01 as a proxy whose home is F1 and alternate F2 (both FreeRADIUS with EAP)."""
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    # the client's own secret is the upstream secret both home servers know it by
    secret_file = config.path(config.clients[0].secret.file or "")
    secret_file.write_text(first.client_secret + "\n")
    servers = [
        msgspec.convert(first.entry("F1"), ServerConfig),
        msgspec.convert(second.entry("F2"), ServerConfig),
        *config.servers,
    ]
    return with_proxy(config, tmp_path, servers=servers, home="F1", alternates=("F2",))


async def batch(
    config: Config, first: FreeRadius, tmp_path: Path, offset: int, timeout_s: float = TIMEOUT_S
) -> list[Running]:
    proxy = config.clients[0].proxy
    assert proxy is not None
    supplicants = [
        Supplicant("PEAP", ca_cert=first.ca_file, mac=station_mac(offset + i))
        for i in range(PARALLEL)
    ]
    return await start_many(
        (PROXY_IP, proxy.auth_port),
        NAS.decode(),
        supplicants,
        tmp_path / f"eap-{offset}",
        timeout_s=timeout_s,
    )


async def test_a_move_by_notice_and_back_by_readmission_fail_no_conversation(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    first = await freeradius(eap=True, backend=True)
    second = await freeradius(eap=True, backend=True, client_secret=first.client_secret)
    for home in (first, second):
        home.slow_backend(1.0, ROUND_DELAY_S)  # every round trip takes a while
    config = two_homes(farm, tmp_path, first, second)
    async with proxying(config) as watcher:
        on_first = await batch(config, first, tmp_path, 0)
        await on_first[-1].until_round(2)  # all sixteen are under way on F1
        away = await watcher.acked(await watcher.failover("F1", to="F2"))
        await watcher.on("F2")
        on_second = await batch(config, first, tmp_path, PARALLEL)
        await on_second[-1].until_round(2)  # and sixteen more on F2
        back = await watcher.acked(await watcher.readmit("F1"))
        await watcher.on("F1")
        results = [await r.result() for r in [*on_first, *on_second]]
        # each move said how many conversations it left to finish where they began,
        # and the statuses show them finished: the moves are complete
        assert (away.now_on, back.now_on) == ("F2", "F1")
        assert 0 < away.draining <= PARALLEL and 0 < back.draining <= PARALLEL, (away, back)
        await next_matching(watcher.statuses, drained, timeout_s=5)
    failed = [r.tail() for r in results if not (r.success and r.keys_match)]
    assert not failed, failed[0]
    # FreeRADIUS counts a reply when it forgets the request (cleanup_delay later)
    for home, config_id in ((first, "F1"), (second, "F2")):
        values = await until_counted(config, config_id, PARALLEL)
        assert int(values["FreeRADIUS-Total-Access-Rejects"]) == 0, (home.log_file, values)


def drained(status: ClientStatus) -> bool:
    return bool(status.upstreams) and all(u.conversations == 0 for u in status.upstreams)


async def test_a_stopped_home_server_fails_only_the_conversations_it_held(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    first = await freeradius(eap=True, backend=True)
    second = await freeradius(eap=True, backend=True, client_secret=first.client_secret)
    for home in (first, second):
        home.slow_backend(1.0, ROUND_DELAY_S)
    config = two_homes(farm, tmp_path, first, second)
    async with proxying(config) as watcher:
        held = await batch(config, first, tmp_path, 0, timeout_s=HELD_TIMEOUT_S)
        for conversation in held:
            await conversation.until_round(2)
        first.pause()  # F1 answers nothing more: the agent leaves it by its own failover
        await watcher.on("F2")
        on_second = await batch(config, first, tmp_path, PARALLEL)
        await on_second[-1].until_round(2)
        first.resume()  # the agent goes home by itself; F2's conversations stay on F2
        await watcher.on("F1")
        after = await batch(config, first, tmp_path, 2 * PARALLEL)
        results = {
            name: [await r.result() for r in runs]
            for name, runs in (("held", held), ("second", on_second), ("after", after))
        }
    # what F1 held was lost with it (or finished if a retransmission reached it again),
    # never answered by a server that could only reject it
    for result in results["held"]:
        assert "Access-Reject" not in result.replies, result.tail()
        assert result.success or result.outcome == "Access-Challenge", result.tail()
    failed = [r.tail() for r in results["second"] + results["after"] if not r.keys_match]
    assert not failed, failed[0]
    await until_counted(config, "F2", PARALLEL)
    for home, config_id in ((first, "F1"), (second, "F2")):
        values = await status(config, config_id)
        assert int(values["FreeRADIUS-Total-Access-Rejects"]) == 0, (home.log_file, values)


async def until_counted(config: Config, server: str, accepts: int) -> dict[str, Any]:
    """The server's statistics once it has counted ``accepts`` Access-Accepts."""
    async with asyncio.timeout(10):
        while True:
            values = await status(config, server)
            if int(values["FreeRADIUS-Total-Access-Accepts"]) >= accepts:
                return values
            await asyncio.sleep(0.2)


async def test_a_slow_holder_keeps_its_conversations(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    first = await freeradius(eap=True, backend=True)
    second = await freeradius(eap=True, backend=True, client_secret=first.client_secret)
    config = two_homes(farm, tmp_path, first, second)
    proxy = config.clients[0].proxy
    assert proxy is not None
    async with proxying(config):
        running = await batch(config, first, tmp_path, 0)
        for conversation in running:
            await conversation.until_round(2)
        # every further round now takes longer than the proxy's response window
        first.slow_backend(1.0, 2 * proxy.response_window_s)
        results = [await r.result() for r in running]
    failed = [r.tail() for r in results if not (r.success and r.keys_match)]
    assert not failed, failed[0]
