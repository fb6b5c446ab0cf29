"""The real parts the set-ups are compared on: a FreeRADIUS whose backend turns slow, a
FreeRADIUS that is paused, and a FreeRADIUS proxy with a fail-over home_server_pool.

All on FreeRADIUS 3.2 (tests/support/freeradius.py), loaded by the NAS of bench/nas.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.nas import Nas, Request, Target, summarize
from services.radius.client import RadiusClient, RadiusTimeout, query_status
from services.radius.packet import access_request, status_request
from tests.support.freeradius import (
    IP,
    PASSWORD,
    USER,
    FreeRadius,
    FreeRadiusProxy,
    StartFreeRadius,
    StartFreeRadiusProxy,
    require,
)

# A pool that grows as FreeRADIUS's does under load, from few threads to many.
POOL = {"max_servers": 256, "start_servers": 4}


def target(server: FreeRadius) -> Target:
    return Target(IP, server.auth_port, server.client_secret.encode())


async def counted(
    proxy: FreeRadiusProxy, home: FreeRadius, name: str, expected: int
) -> dict[str, Any]:
    """The proxy's statistics of ``home`` once its counter ``name`` has reached ``expected``
    (FreeRADIUS counts a request when it cleans it up, ``cleanup_delay`` after its reply)."""
    deadline = time.monotonic() + proxy.cleanup_delay_s + 3
    while True:
        values = await proxy.home_server_stats(home)
        if values.get(name) == expected or time.monotonic() > deadline:
            return values
        await asyncio.sleep(0.2)


async def status_latency(server: FreeRadius, port: int | None = None) -> float:
    """Seconds a Status-Server takes: on the status port, or on ``port`` (the auth port)."""
    started = time.monotonic()
    if port is None:
        await query_status((IP, server.status_port), server.status_secret.encode(), timeout_s=1)
    else:
        secret = server.client_secret.encode()
        client = await RadiusClient.open((IP, port), secret)
        try:
            await client.send(status_request(secret), timeout_s=1)
        finally:
            client.close()
    return time.monotonic() - started


async def test_a_slow_backend_delays_its_share_of_requests_and_status_server_stays_fast(
    freeradius: StartFreeRadius,
) -> None:
    server = await freeradius(backend=True, **POOL)
    server.slow_backend(share=0.5, delay_s=1.0)
    count = 200
    async with Nas(timeout_s=3.0, retries=0) as nas:
        load = asyncio.create_task(nas.run(target(server), rate=100, count=count))
        probes: list[float] = []
        while not load.done():
            probes.append(await status_latency(server))
            probes.append(await status_latency(server, server.auth_port))
            await asyncio.sleep(0.2)
        records = await load

    assert all(r.outcome == "accepted" for r in records)
    latencies = [r.latency_s for r in records if r.latency_s is not None]
    slow = [x for x in latencies if x >= 1.0]
    fast = [x for x in latencies if x < 0.5]
    assert len(slow) + len(fast) == count, sorted(latencies)
    # Binomial(200, 0.5): mean 100, standard deviation about 7; five of them either side
    spread = 5 * math.sqrt(count * 0.25)
    assert abs(len(slow) - count / 2) <= spread, len(slow)
    # the pool grows to hold every sleeping request: none waits for a thread
    assert max(slow) < 1.5, max(slow)
    # Status-Server is answered at once on the status port and on the auth port
    assert len(probes) >= 8 and max(probes) < 0.25, probes

    server.slow_backend(0.0)
    async with Nas(timeout_s=3.0, retries=0) as nas:
        records = await nas.run(target(server), rate=100, count=50)
    assert all(r.outcome == "accepted" for r in records)
    assert max(r.latency_s or math.inf for r in records) < 0.5


async def test_requests_sleeping_in_perl_do_not_wait_for_each_other(
    freeradius: StartFreeRadius,
) -> None:
    # FreeRADIUS clones the perl interpreter per thread; with threads to spare, 20
    # requests of 1 s each take about 1 s together, not 20 s (one after another)
    server = await freeradius(backend=True, max_servers=64, start_servers=32)
    server.slow_backend(share=1.0, delay_s=1.0)
    secret = server.client_secret.encode()
    client = await RadiusClient.open(server.auth_address, secret)
    try:
        started = time.monotonic()
        replies = await asyncio.gather(
            *(client.send(access_request(secret, USER, PASSWORD), timeout_s=10) for _ in range(20))
        )
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert len(replies) == 20
    assert 1.0 <= elapsed < 2.5, elapsed


async def test_a_paused_server_answers_nothing_until_it_resumes_and_still_stops(
    freeradius: StartFreeRadius,
) -> None:
    server = await freeradius()
    secret = server.client_secret.encode()
    client = await RadiusClient.open(server.auth_address, secret)
    try:
        await client.send(access_request(secret, USER, PASSWORD), timeout_s=1)
        server.pause()
        try:
            await client.send(access_request(secret, USER, PASSWORD), timeout_s=0.5)
            raise AssertionError("a paused FreeRADIUS answered")
        except RadiusTimeout:
            pass
        try:
            await status_latency(server)
            raise AssertionError("a paused FreeRADIUS answered a Status-Server")
        except RadiusTimeout:
            pass
        server.resume()
        await client.send(access_request(secret, USER, PASSWORD), timeout_s=1)
    finally:
        client.close()

    # stopping a paused server: SIGCONT first, so SIGTERM ends it normally
    server.pause()
    started = time.monotonic()
    assert server.stop(grace_s=5) == 0, server.logs()
    assert time.monotonic() - started < 5


async def test_the_freeradius_proxy_sends_everything_to_its_first_home_server(
    freeradius: StartFreeRadius, freeradius_proxy: StartFreeRadiusProxy
) -> None:
    first, second = await freeradius(), await freeradius()
    proxy = await freeradius_proxy(homes=[first, second], cleanup_delay_s=1)

    async with Nas(timeout_s=3.0, retries=0) as nas:
        records = await nas.run(target(proxy), rate=100, count=100)
    summary = summarize(records)
    assert (summary.accepted, summary.lost) == (100, 0), summary
    assert summary.latency_s["p99"] < 0.5

    acct = await asyncio.create_subprocess_exec(
        require("radclient"),
        "-q",
        f"{IP}:{proxy.acct_port}",
        "acct",
        proxy.nas_secret,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await acct.communicate(
        b'Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = "setups-1"\n'
    )
    assert acct.returncode == 0, out.decode(errors="replace")
    assert 'Acct-Session-Id = "setups-1"' in (first.directory / "radacct" / "detail").read_text()
    assert not (second.directory / "radacct" / "detail").exists()

    on_first = await counted(proxy, first, "FreeRADIUS-Total-Proxy-Access-Accepts", 100)
    on_second = await proxy.home_server_stats(second)
    assert on_first["state"] == "alive", on_first
    assert on_first["FreeRADIUS-Total-Proxy-Access-Accepts"] == 100, on_first
    assert on_second["FreeRADIUS-Total-Proxy-Access-Requests"] == 0, on_second
    totals = await proxy.stats()
    assert totals["FreeRADIUS-Total-Proxy-Access-Requests"] == 100, totals
    assert totals["FreeRADIUS-Total-Proxy-Access-Accepts"] == 100, totals


async def test_the_freeradius_proxy_fails_over_once_the_paused_home_server_is_a_zombie(
    freeradius: StartFreeRadius, freeradius_proxy: StartFreeRadiusProxy
) -> None:
    first, second = await freeradius(), await freeradius()
    proxy = await freeradius_proxy(homes=[first, second], cleanup_delay_s=1)
    window = proxy.response_window_s
    # FreeRADIUS marks a home server zombie when a request's response window ends and the
    # server's last answer (whole seconds) is more than (zombie_period + 3) // 4 s old
    # (process.c): from 5 to 6 s after the pause with the default zombie_period of 20 s
    switch_by = (proxy.zombie_period_s + 3) // 4 + 1.2
    rate, seconds, pause_after = 50, 9.0, 1.0

    async with Nas(timeout_s=3.0, retries=2) as nas:
        load = asyncio.create_task(nas.run(target(proxy), rate=rate, duration_s=seconds))
        await asyncio.sleep(pause_after)
        paused_at = time.monotonic()
        first.pause()
        records = await load

    def sent_after(r: Request) -> float:
        return r.sent_at - paused_at

    before = [r for r in records if sent_after(r) < -0.1]
    assert before and all(r.outcome == "accepted" for r in before)
    # every request is answered: those held by the paused server are rejected by the
    # proxy once their response window has passed (FreeRADIUS's fail-safe default) ...
    assert not [r for r in records if r.outcome == "lost"]
    rejected = [r for r in records if r.outcome == "rejected"]
    assert rejected
    for r in rejected:
        assert r.latency_s is not None and window <= r.latency_s < window + 0.5, r
        assert -0.1 <= sent_after(r) < switch_by, sent_after(r)
    # ... and after the first home server turns zombie, the second answers everything
    switched = max(sent_after(r) for r in rejected)
    after = [r for r in records if sent_after(r) > switched]
    assert all(r.outcome == "accepted" for r in after)
    assert len(after) >= rate * (seconds - pause_after - switch_by)
    assert not any(r.late for r in records)

    on_first = await proxy.home_server_stats(first)
    assert on_first["state"] == "zombie", on_first
    name = "FreeRADIUS-Total-Proxy-Access-Accepts"
    on_second = await counted(proxy, second, name, len(after))
    assert on_second["state"] == "alive", on_second
    assert on_second[name] == len(after), on_second
