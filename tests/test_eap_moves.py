"""Real EAP conversations (eapol_test, PEAP-MSCHAPv2) through the agent's proxy while notices
move the client between two FreeRADIUS home servers: every round goes to the server that
began the conversation, so no move fails one (without it, FreeRADIUS answers "No EAP
session matching state" and the supplicant sees an Access-Reject)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from services.runtime.config import Config, ServerConfig
from tests.conftest import FarmFactory
from tests.eap import Running, Supplicant, start_many, station_mac
from tests.freeradius import FreeRadius, StartFreeRadius
from tests.helpers import status
from tests.test_proxy import NAS, PROXY_IP, proxying, with_proxy

PARALLEL = 16
ROUND_DELAY_S = 0.05


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


async def batch(config: Config, first: FreeRadius, tmp_path: Path, offset: int) -> list[Running]:
    proxy = config.clients[0].proxy
    assert proxy is not None
    supplicants = [
        Supplicant("PEAP", ca_cert=first.ca_file, mac=station_mac(offset + i))
        for i in range(PARALLEL)
    ]
    return await start_many(
        (PROXY_IP, proxy.auth_port), NAS.decode(), supplicants, tmp_path / f"eap-{offset}"
    )


async def test_moves_by_notice_there_and_back_fail_no_conversation(
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
        await watcher.failover("F1", to="F2")
        await watcher.on("F2")
        on_second = await batch(config, first, tmp_path, PARALLEL)
        await on_second[-1].until_round(2)  # and sixteen more on F2
        await watcher.failover("F2", to="F1")
        await watcher.on("F1")
        results = [await r.result() for r in [*on_first, *on_second]]
    failed = [r.tail() for r in results if not (r.success and r.keys_match)]
    assert not failed, failed[0]
    # FreeRADIUS counts a reply when it forgets the request (cleanup_delay later)
    for home, config_id in ((first, "F1"), (second, "F2")):
        values = await until_counted(config, config_id)
        assert int(values["FreeRADIUS-Total-Access-Rejects"]) == 0, (home.log_file, values)


async def until_counted(config: Config, server: str) -> dict[str, Any]:
    """The server's statistics once every conversation it finished is counted."""
    async with asyncio.timeout(10):
        while True:
            values = await status(config, server)
            if int(values["FreeRADIUS-Total-Access-Accepts"]) >= PARALLEL:
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
