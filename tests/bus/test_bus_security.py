"""The bus's security on a real nats-server: users, their permissions, TLS, credentials.

Each test starts its own server with the permissions of one farm (prefix
``aaa``, three clients), as `up` does: the agent may only touch its own
clients' subjects, the collector only publish samples, no one joins without
a password, and no one joins over anything but TLS with the CA.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import psutil
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.launch import bususers
from services.launch.farm import write_farm
from services.runtime import busauth, busfile
from services.runtime.bus import Bus, BusAuthError, Keyring, abandon
from services.runtime.config import Config, ConfigError, load_config
from services.runtime.natsserver import EmbeddedNats, ServerTls
from services.runtime.permissions import HARNESS
from tests.support.bussecurity import BusSecurity
from tests.support.helpers import watch_stderr

pytestmark = pytest.mark.nats


@dataclass
class Secured:
    config: Config
    server: EmbeddedNats
    security: BusSecurity

    def password(self, user: str) -> str:
        return self.security.password(user)

    def tls(self) -> ssl.SSLContext:
        context = busauth.ssl_context(self.config.bus)
        assert context is not None
        return context


AGENTS = {"agent-1": ["nas-01"], "agent-2": ["nas-02", "nas-03"]}
"""Two agents: the first serves nas-01 (home A), the second the others."""


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    """A farm (prefix ``aaa``, two agent users) on a nats-server of its own with that
    farm's users and TLS."""
    security = BusSecurity.make(tmp_path / "security")
    config, _ = write_farm(
        tmp_path / "farm",
        bus_url="tls://127.0.0.1:1",
        prefix="aaa",
        clients=3,
        bus_auth=security.auth | {"agents": AGENTS},
        bus_tls=security.tls,
    )
    server = EmbeddedNats(
        tmp_path / "nats",
        users=bususers.server_users(bususers.farm_users(config), security.auth_dir),
        tls=ServerTls(
            cert=security.tls_dir / "server.pem",
            key=security.tls_dir / "server-key.pem",
            ca=security.tls_dir / "ca.pem",
        ),
    )
    server.start()
    try:
        yield Secured(config.on_bus(server.url), server, security)
    finally:
        server.stop()


@asynccontextmanager
async def joined(s: Secured, user: str) -> AsyncIterator[tuple[NatsClient, asyncio.Queue[str]]]:
    """A raw connection as ``user`` (its own password, the CA) and the errors the server
    sends it (permission violations) as they come."""
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await errors.put(str(exc))

    nc = await nats.connect(
        s.server.url,
        user=user,
        password=s.password(user),
        tls=s.tls(),
        inbox_prefix=f"_INBOX.{user}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        yield nc, errors
    finally:
        await nc.close()


async def violation(errors: asyncio.Queue[str], subject: str) -> str:
    """The server's next refusal that names ``subject``."""
    while True:
        message = await asyncio.wait_for(errors.get(), 10)
        if "permissions violation" in message.lower() and subject.lower() in message.lower():
            return message


async def refused_publish(s: Secured, user: str, subject: str, marker: str) -> None:
    """``user`` publishes on ``subject``, then on ``marker``, which it may: the server
    refuses the first, and a harness subscribed to both sees the marker alone (one
    connection's messages arrive in order, so the first would have come before it)."""
    async with joined(s, HARNESS) as (watcher, _), joined(s, user) as (nc, errors):
        sub = await watcher.subscribe(">")
        await watcher.flush()
        await nc.publish(subject, b"forged")
        await nc.publish(marker, b"marker")
        await nc.flush()
        assert "publish" in (await violation(errors, subject)).lower()
        first = await sub.next_msg(timeout=10)
        assert (first.subject, first.data) == (marker, b"marker")


async def connect_refused(url: str, **options: Any) -> None:
    """A raw connection that must fail; its socket closed whatever happens."""
    nc = NatsClient()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=5, **options)
    finally:
        abandon(nc)


async def test_a_wrong_or_missing_password_is_refused(secured: Secured, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "collector").write_text("not-the-password\n")
    assert secured.config.bus.auth is not None
    bus = msgspec.structs.replace(
        secured.config.bus, auth=msgspec.structs.replace(secured.config.bus.auth, dir=str(wrong))
    )
    async with AsyncExitStack() as stack:
        with pytest.raises(BusAuthError, match="refused user 'collector'"):
            await Bus.connect(bus, Keyring(None), name="collector", stack=stack)
        with pytest.raises(ConfigError, match="password of user 'evaluator'"):
            await Bus.connect(bus, Keyring(None), name="evaluator", stack=stack)
    for options in ({}, {"user": "collector"}, {"user": "collector", "password": ""}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect_refused(secured.server.url, tls=secured.tls(), **options)


async def test_each_service_joins_as_its_own_user(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        for name in ("collector", "evaluator", "targeter", "notifier", "readmitter", "aaa"):
            keyring = Keyring.from_config(secured.config)
            bus = await Bus.connect(secured.config.bus, keyring, name=name, stack=stack)
            assert bus.nc.is_connected
        for user in AGENTS:
            agent = await Bus.connect(
                secured.config.bus, Keyring(None), name="agent", stack=stack, user=user
            )
            assert agent.nc.is_connected


async def test_the_agent_cannot_publish_a_plan_or_a_health_report(secured: Secured) -> None:
    await refused_publish(secured, "agent-1", "aaa.plan.A", "aaa.ack.nas-01")
    await refused_publish(secured, "agent-1", "aaa.health.A", "aaa.status.nas-01")
    await refused_publish(secured, "agent-1", "aaa.notice.nas-02", "aaa.request.A")
    # nor speak for another client, nor ask to return to a server not its clients' home
    await refused_publish(secured, "agent-1", "aaa.ack.nas-02", "aaa.ack.nas-01")
    await refused_publish(secured, "agent-1", "aaa.request.B", "aaa.status.nas-01")


async def test_the_collector_cannot_publish_an_incident(secured: Secured) -> None:
    await refused_publish(secured, "collector", "aaa.incident.A", "aaa.metrics.A")


async def test_tools_read_but_cannot_publish(secured: Secured) -> None:
    await refused_publish(secured, "tools", "aaa.control.A", "$JS.API.STREAM.INFO.AAA")


async def test_the_sandbox_cannot_publish_on_the_live_prefix(secured: Secured) -> None:
    await refused_publish(secured, "sandbox", "aaa.plan.A", "replay1.plan.A")


async def test_the_agent_cannot_listen_to_another_clients_notices_or_to_everything(
    secured: Secured,
) -> None:
    async with joined(secured, HARNESS) as (harness, _), joined(secured, "agent-1") as (nc, errors):
        own = await nc.subscribe("aaa.notice.nas-01")
        other = await nc.subscribe("aaa.notice.nas-02")
        everything = await nc.subscribe("aaa.>")
        await nc.flush()
        await violation(errors, "aaa.notice.nas-02")
        await violation(errors, "aaa.>")
        await harness.publish("aaa.notice.nas-02", b"for nas-02")
        await harness.publish("aaa.notice.nas-01", b"for nas-01")
        await harness.flush()
        msg = await own.next_msg(timeout=10)
        assert msg.data == b"for nas-01"
        # what the server delivered before the marker would be queued by now: nothing is
        assert other.pending_msgs == 0 and everything.pending_msgs == 0


async def test_the_agent_cannot_touch_the_jetstream_api(secured: Secured) -> None:
    async with joined(secured, "agent-1") as (nc, errors):
        js = nc.jetstream(timeout=2.0)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.stream_info("AAA")
        await violation(errors, "$JS.API.STREAM.INFO.AAA")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.key_value("AAA_targeter")
        await violation(errors, "$JS.API.STREAM.INFO.KV_AAA_targeter")
        await nc.subscribe("$JS.API.>")
        await violation(errors, "$JS.API.>")


async def test_a_client_without_the_ca_cannot_join_and_one_with_it_can(
    secured: Secured,
) -> None:
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await connect_refused(secured.server.url, user=HARNESS, password=secured.password(HARNESS))
    other_ca = secured.security.directory / "other"
    BusSecurity.make(other_ca)
    wrong = ssl.create_default_context(cafile=str(other_ca / "tls" / "ca.pem"))
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await connect_refused(
            secured.server.url, user=HARNESS, password=secured.password(HARNESS), tls=wrong
        )
    async with joined(secured, HARNESS) as (nc, _):
        assert nc.is_connected
    # a service given another CA stops at once, saying why
    assert secured.config.bus.tls is not None
    tls = msgspec.structs.replace(secured.config.bus.tls, ca=str(other_ca / "tls" / "ca.pem"))
    bus = msgspec.structs.replace(secured.config.bus, tls=tls)
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match=r"bus\.tls: .*certificate verify failed"):
            await Bus.connect(bus, Keyring(None), name="collector", stack=stack)


def test_a_password_in_the_bus_url_is_refused(tmp_path: Path) -> None:
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    text = path.read_text().replace(
        "[bus]", '[bus]\nurl = "nats://collector:s3cret@127.0.0.1:4222"'
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match="must not hold a user or password"):
        load_config(path)
    result = subprocess.run(
        [
            sys.executable, "-m", "services.launch.cli", "run", "collector", "-c",
            str(write_farm(tmp_path / "other", bus_url=None, clients=1)[1]),
            "--bus-url", "nats://collector:s3cret@127.0.0.1:4222",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not go in the URL" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def _cmdlines(pid: int) -> dict[int, str]:
    """Every descendant's command line, read from /proc/<pid>/cmdline."""
    out = {}
    for child in psutil.Process(pid).children(recursive=True):
        raw = Path(f"/proc/{child.pid}/cmdline").read_bytes()
        out[child.pid] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def test_no_credential_reaches_a_childs_command_line_or_the_logs_of_up(tmp_path: Path) -> None:
    """`up` on an embedded bus, secured by default: users, their permissions, TLS. While it
    runs, a replay sandbox (`up --sandbox`, `replay --sandbox`) joins it too; the server
    refuses none of them anything (its log, in up's, names no violation)."""
    _, path = write_farm(tmp_path / "farm", bus_url=None, clients=2)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.launch.cli",
            "--log-level",
            "DEBUG",
            "up",
            "-c",
            str(path),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, started, reader = watch_stderr(proc, lambda line: "all services started" in line)
    cmdlines: dict[int, str] = {}
    try:
        assert started.wait(60), "".join(lines[-30:])
        cmdlines = _cmdlines(proc.pid)
        auth = path.parent / ".nats" / "auth"
        passwords = {f.name: f.read_text().strip() for f in auth.iterdir() if f.is_file()}
        assert {"collector", "agent", "harness", "tools"} <= set(passwords)
        assert all((auth / user).stat().st_mode & 0o077 == 0 for user in passwords)
        assert auth.stat().st_mode & 0o077 == 0
        conf = path.parent / ".nats" / "nats-server.conf"
        assert conf.stat().st_mode & 0o077 == 0
        # the embedded bus takes TLS only, with the development CA `up` made
        running = busfile.read(path)
        assert running is not None and running.url.startswith("tls://")
        assert (path.parent / ".nats" / "tls" / "ca.pem").is_file()
        _sandbox_on(path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(lines[-30:])
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert any("nats-server" in c for c in cmdlines.values())
    assert sum("run agent" in c for c in cmdlines.values()) == 1
    logs = "".join(lines)
    for user, password in passwords.items():
        for pid, cmdline in cmdlines.items():
            assert password not in cmdline, f"{user}'s password on the command line of {pid}"
        assert password not in logs, f"{user}'s password in the logs of up"
    assert "@127.0.0.1" not in logs
    assert not conf.exists()  # the server's config, with the passwords, goes with it
    assert "Violation" not in logs, [line for line in lines if "Violation" in line][:5]


def _sandbox_on(path: Path) -> None:
    """A replay sandbox on the bus of the `up` running ``path``: its services started and
    stopped cleanly, and the recorded inputs replayed into it."""
    cli = [sys.executable, "-m", "services.launch.cli"]
    sandbox = subprocess.Popen(
        [*cli, "up", "-c", str(path), "--sandbox", "sb1"], stderr=subprocess.PIPE, text=True
    )
    lines, started, reader = watch_stderr(sandbox, lambda line: "all services started" in line)
    try:
        assert started.wait(60) and sandbox.poll() is None, "".join(lines[-30:])
        replay = subprocess.run(
            [*cli, "replay", "-c", str(path), "--from=-60s", "--sandbox", "sb1",
             "--as-fast-as-possible"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr[-2000:]
        assert "replayed" in replay.stdout + replay.stderr
        sandbox.send_signal(signal.SIGTERM)
        assert sandbox.wait(60) == 0, "".join(lines[-30:])
        reader.join(5)
    finally:
        if sandbox.poll() is None:
            sandbox.kill()
            sandbox.wait()
        assert sandbox.stderr is not None
        sandbox.stderr.close()


async def _read_live_stream(nc: NatsClient) -> bytes:
    """The first message of the live stream, read through a consumer of its own, as the
    recording tools read it."""
    js = nc.jetstream(timeout=5.0)
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=60)
    sub = await js.pull_subscribe("aaa.>", stream="AAA", config=config)
    try:
        (msg,) = await sub.fetch(1, timeout=10)
        return msg.data
    finally:
        await sub.unsubscribe()
        await js.delete_consumer("AAA", str(config.name))


async def test_tools_and_the_sandbox_read_the_live_stream_and_cannot_change_it(
    secured: Secured,
) -> None:
    async with joined(secured, HARNESS) as (harness, _):
        js = harness.jetstream()
        await js.add_stream(StreamConfig(name="AAA", subjects=["aaa.>"]))
        await js.publish("aaa.health.A", b"recorded")
    for user in ("tools", "sandbox"):
        async with joined(secured, user) as (nc, errors):
            assert await _read_live_stream(nc) == b"recorded"
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await nc.jetstream(timeout=2.0).delete_stream("AAA")
            await violation(errors, "$JS.API.STREAM.DELETE.AAA")
    async with joined(secured, "sandbox") as (nc, _):
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(StreamConfig(name="REPLAY1", subjects=["replay1.>"]))
        kv = await js.create_key_value(bucket="REPLAY1_targeter", history=1)
        await kv.put("A", b"state")
        assert (await kv.get("A")).value == b"state"


async def test_a_tls_bus_that_takes_no_tls_never_gets_the_password(
    secured: Secured, tmp_path: Path
) -> None:
    with EmbeddedNats(tmp_path / "plain") as plain:
        assert plain.port is not None
        async with AsyncExitStack() as stack:
            with pytest.raises(ConfigError, match="does not take TLS"):
                await Bus.connect(
                    secured.config.bus,
                    Keyring(None),
                    name="collector",
                    stack=stack,
                    url=f"tls://127.0.0.1:{plain.port}",
                )


async def test_the_embedded_bus_password_goes_over_tls_only(tmp_path: Path) -> None:
    """A process of an embedded farm (no bus.url) joining a plain server (as replay's own on
    a stopped farm's store, or anyone's on 127.0.0.1:4222) sends its user, not its password:
    here the plain server is a listener that records what it is told."""
    config, _ = write_farm(tmp_path / "farm", bus_url=None, clients=1)
    busauth.write_passwords(config.path(".nats/auth"), ["collector"])
    secret = (config.path(".nats/auth") / "collector").read_text().strip()
    told: asyncio.Queue[bytes] = asyncio.Queue()

    async def plain_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"plain","version":"2.10.0","proto":1,"headers":true}\r\n')
        await writer.drain()
        while line := await reader.readline():
            await told.put(line)
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, AsyncExitStack() as stack:
        await Bus.connect(
            config.bus, Keyring(None), name="collector", stack=stack, url=f"nats://127.0.0.1:{port}"
        )
        connect = await asyncio.wait_for(told.get(), 10)
    assert connect.startswith(b"CONNECT ")
    sent = json.loads(connect.removeprefix(b"CONNECT "))
    assert sent["user"] == "collector" and sent["pass"] == ""
    assert secret.encode() not in connect
