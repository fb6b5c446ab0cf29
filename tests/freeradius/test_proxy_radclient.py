"""radclient and radtest through the agent's proxy to the reference server and to FreeRADIUS,
across notices and dead upstreams."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from schemas.events import UpstreamReport
from services.runtime.config import Config, ServerConfig
from tests.conftest import FarmFactory
from tests.support.datagrams import Collect
from tests.support.freeradius import StartFreeRadius, require
from tests.support.helpers import next_matching, status
from tests.support.proxying import (
    ANSWERS,
    CHECK_S,
    NAS,
    PROXY_IP,
    WINDOW_S,
    auth_target,
    nas_access_request,
    proxying,
    reference,
    requests_seen,
    with_proxy,
)

# the proxy takes an Access-Request only with a Message-Authenticator (radtest adds one)
CREDENTIALS = "User-Name = alice, User-Password = wonderland, Message-Authenticator = 0x00\n"


def acct_target(config: Config) -> str:
    proxy = config.clients[0].proxy
    assert proxy is not None and proxy.acct_port is not None
    return f"{proxy.ip}:{proxy.acct_port}"


@dataclass
class Outcome:
    """How a radclient or radtest run ended."""

    code: int
    output: str

    @property
    def accepted(self) -> int:
        found = re.search(r"Accepted\s*:\s*(\d+)", self.output)
        return int(found.group(1)) if found else 0

    @property
    def lost(self) -> int:
        found = re.search(r"Lost\s*:\s*(\d+)", self.output)
        return int(found.group(1)) if found else -1


async def _run(argv: list[str], stdin: str | None, timeout_s: float) -> Outcome:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout_s
        )
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Outcome(proc.returncode, out.decode(errors="replace"))


async def radclient(
    target: str,
    *,
    count: int,
    parallel: int = 1,
    rate: int | None = None,
    command: str = "auth",
    attributes: str | list[str] = CREDENTIALS,
    secret: bytes = NAS,
) -> Outcome:
    """radclient sending ``count`` requests, ``parallel`` at once (at ``rate`` per second).

    radclient runs the packets of its input in parallel, so the input holds
    ``parallel`` packets (copies of ``attributes``, or the ``parallel`` ones it
    lists), each sent ``count / parallel`` times. Each request is sent once (no
    retransmission) and waits 3 s for its answer.
    """
    assert count % parallel == 0
    packets = attributes if isinstance(attributes, list) else [attributes] * parallel
    assert len(packets) == parallel
    argv = [require("radclient"), "-q", "-s", "-c", str(count // parallel), "-p", str(parallel)]
    argv += ["-t", "3", "-r", "1"]
    if rate is not None:
        argv += ["-n", str(rate)]
    argv += [target, command, secret.decode()]
    return await _run(argv, "\n".join(packets), timeout_s=60)


async def radtest(target: str, password: str = "wonderland") -> Outcome:
    argv = [require("radtest"), "alice", password, target, "0", NAS.decode()]
    return await _run(argv, None, timeout_s=30)


async def until_seen(config: Config, server: str, count: int, timeout_s: float = 10) -> None:
    """Wait until a reference server has taken ``count`` Access-Requests."""
    async with asyncio.timeout(timeout_s):
        while await requests_seen(config, server) < count:  # noqa: ASYNC110 (polls a server)
            await asyncio.sleep(0.05)


async def test_radclient_and_radtest_through_the_proxy_to_the_reference_server(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path)
    target = auth_target(config)
    async with reference(config, "A"), proxying(config):
        first = await radtest(target)
        assert first.code == 0 and "Received Access-Accept" in first.output, first.output
        many = await radclient(target, count=60, parallel=10)
        assert (many.code, many.accepted, many.lost) == (0, 60, 0), many.output
        wrong = await radtest(target, password="not-it")
        assert "Received Access-Reject" in wrong.output and wrong.code != 0
        assert await requests_seen(config, "A") == 62

        # a request signed with another secret is not forwarded, nor answered
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Collect(replies), remote_addr=(PROXY_IP, int(target.split(":")[1]))
        )
        try:
            transport.sendto(nas_access_request(b"not-the-nas-secret").RequestPacket())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(replies.get(), 1.0)
        finally:
            transport.close()
        assert await requests_seen(config, "A") == 62


async def test_a_notice_moves_the_upstream_with_no_failed_request(
    farm: FarmFactory, tmp_path: Path
) -> None:
    # A answers slowly, so requests are in flight to it when the notice comes
    config, _ = farm(clients=1, client_rate=0, service_time_ms=40.0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        load = asyncio.create_task(radclient(auth_target(config), count=600, parallel=20, rate=200))
        await until_seen(config, "A", 100)
        await watcher.failover("A", to="B")
        await watcher.on("B")
        at_switch = await requests_seen(config, "A")
        outcome = await asyncio.wait_for(load, 30)
        assert (outcome.code, outcome.accepted, outcome.lost) == (0, 600, 0), outcome.output
        on_a = await requests_seen(config, "A")
        on_b = await requests_seen(config, "B")
        # the (at most 20) requests in flight to A when the notice came were sent on to B at
        # once; A may still have answered some of them, too late to matter
        assert on_b > 100 and 600 <= on_a + on_b <= 620
        # nothing went to A after the switch
        assert on_a - at_switch <= 20


async def test_a_notice_sends_requests_in_flight_on_at_once_but_not_an_eap_round(
    farm: FarmFactory, tmp_path: Path
) -> None:
    # A answers within the response window, but slowly: requests are in flight when the
    # notice comes
    config, _ = farm(clients=1, client_rate=0, service_time_ms=300.0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "A"), reference(config, "B"), proxying(config) as watcher:
        polls = 0
        before = int((await status(config, "A"))["FreeRADIUS-Total-Access-Requests"])
        plain = asyncio.create_task(radclient(auth_target(config), count=4, parallel=4))
        # a request carrying State is a round of an EAP conversation only A can go on with
        in_eap = CREDENTIALS.strip() + ", State = 0x0102\n"
        bound = asyncio.create_task(
            radclient(auth_target(config), count=2, parallel=2, attributes=in_eap)
        )
        async with asyncio.timeout(5):
            while True:  # every Status-Server counts among A's Access-Requests, too
                polls += 1
                seen = int((await status(config, "A"))["FreeRADIUS-Total-Access-Requests"])
                if seen - before - polls >= 6:
                    break
        await watcher.failover("A", to="B")
        outcomes = await asyncio.gather(plain, bound)
        assert [(o.code, o.accepted) for o in outcomes] == [(0, 4), (0, 2)], outcomes
        # the four were sent on to B without waiting out their window; the two stayed on A
        assert await requests_seen(config, "B") == 4
        reports: list[UpstreamReport] = []
        while sum(r.answers for r in reports if r.server == "A") < 2:
            status_ = await next_matching(watcher.statuses, lambda s: bool(s.upstreams), 5)
            reports += status_.upstreams
        of_a = [r for r in reports if r.server == "A"]
        assert sum(r.resent for r in of_a) == 4 and sum(r.timeouts for r in of_a) == 0


async def test_a_dead_upstream_is_left_by_itself_and_taken_back(
    farm: FarmFactory, tmp_path: Path
) -> None:
    config, _ = farm(clients=1, client_rate=0)
    config = with_proxy(config, tmp_path)
    async with reference(config, "B"), proxying(config) as watcher:
        async with reference(config, "A"):
            load = asyncio.create_task(
                radclient(auth_target(config), count=1000, parallel=20, rate=200)
            )
            await until_seen(config, "A", 100)
        killed = time.monotonic()  # A is gone, with whatever it had queued
        left = await watcher.on("B")
        assert time.monotonic() - killed < WINDOW_S + 0.3
        assert not load.done()
        # the agent's own failover reaches the bus at once, with what it saw of A
        assert [(c.server, c.before, c.after) for c in left.changes] == [("A", "alive", "zombie")]
        assert left.changes[0].reason == f"no answer in {WINDOW_S:g}s"
        of_a = next(u for u in left.upstreams if u.server == "A")
        assert of_a.state == "zombie" and of_a.timeouts >= 1 and of_a.resent >= 1
        assert left.relayed >= 100 and left.response_window_s == WINDOW_S

        back = time.monotonic()
        async with reference(config, "A"):
            await watcher.on("A")
            # answers_to_alive probes, one per check interval, the first up to one interval in
            assert time.monotonic() - back >= (ANSWERS - 1) * CHECK_S
            assert not load.done()
            outcome = await asyncio.wait_for(load, 30)
            assert (outcome.code, outcome.accepted, outcome.lost) == (0, 1000, 0), outcome.output
            assert await requests_seen(config, "A") > 0
        assert await requests_seen(config, "B") > 0


async def test_freeradius_through_the_proxy_auth_accounting_and_failover(
    farm: FarmFactory, tmp_path: Path, freeradius: StartFreeRadius
) -> None:
    # accounting on a port of its own, not auth_port + 1; replies signed, which the proxy
    # requires of an upstream's answers to Access-Requests
    fr = await freeradius(sign_replies=True)
    config, _ = farm(clients=1, client_rate=0, servers=("B",))
    # the client's own secret is the upstream secret FreeRADIUS knows it by
    secret_file = config.path(config.clients[0].secret.file or "")
    secret_file.write_text(fr.client_secret + "\n")
    entry = fr.entry("F", acct_port=fr.acct_port)
    servers = [msgspec.convert(entry, ServerConfig), *config.servers]
    config = with_proxy(config, tmp_path, acct=True, servers=servers, home="F", alternates=("B",))
    async with reference(config, "B"), proxying(config) as watcher:
        first = await radtest(auth_target(config))
        assert first.code == 0 and "Received Access-Accept" in first.output, first.output
        auth = await radclient(auth_target(config), count=50, parallel=10)
        assert (auth.code, auth.accepted) == (0, 50), auth.output
        # three sessions: one packet sent three times could reuse its identifier, and then
        # it is a retransmission, answered from the proxy's cache (as FreeRADIUS would)
        sessions = [f"px-{i}" for i in range(3)]
        acct = await radclient(
            acct_target(config),
            count=3,
            parallel=3,
            command="acct",
            attributes=[
                f'Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = "{session}"\n'
                for session in sessions
            ],
        )
        assert (acct.code, acct.accepted) == (0, 3), acct.output
        detail = (fr.directory / "radacct" / "detail").read_text()
        assert [detail.count(f'Acct-Session-Id = "{s}"') for s in sessions] == [1, 1, 1]
        assert await requests_seen(config, "B") == 0

        load = asyncio.create_task(radclient(auth_target(config), count=800, parallel=10, rate=200))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fr.stop)
        await watcher.on("B")
        fr.start()
        await fr.wait_ready()
        await watcher.on("F")
        outcome = await asyncio.wait_for(load, 30)
        assert (outcome.code, outcome.accepted, outcome.lost) == (0, 800, 0), outcome.output
        assert await requests_seen(config, "B") > 0
