"""A replicated bus: three real nats-servers as one cluster, the stream and every bucket
at three replicas (``bus.replicas = 3``), one node killed with SIGKILL and started again.

The first test writes to the stream and to a bucket with acknowledgements before and
while the node that leads the stream is dead; once that node is back and current, it
holds every acknowledged write, and the two other nodes' loss of one more node loses
none of them. The second runs every service of a farm as its own process against all
three nodes, overloads server A, and kills the node that leads the stream in the middle
of the incident: the clients still move, come back in waves, the incident closes, no
service dies, and the stream and every bucket still hold what they held before the kill.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from schemas.events import (
    Ack,
    ClientStatus,
    FailoverPlan,
    HealthReport,
    Incident,
    ReadmitWave,
    ServerControl,
)
from services.launch.bususers import farm_users
from services.launch.farm import STREAM_MAX_BYTES, write_farm
from services.launch.supervisor import Supervisor
from services.runtime.bus import Bus
from services.runtime.busauth import write_passwords
from services.runtime.config import Config
from services.runtime.natscluster import (
    ClusterNode,
    NatsCluster,
    NodePorts,
    free_tcp_ports,
    monitoring,
)
from services.runtime.permissions import USES
from services.tools.recording import read_window
from tests.support.bussecurity import BusSecurity
from tests.support.helpers import Recorder, operator_bus

CLI = [sys.executable, "-m", "services.launch.cli"]
REPLICAS = 3
DOWN_S = 2.0
"""How long a killed node stays dead before it is started again."""
WAIT_S = 60.0
"""The longest any one step may take: generous, never asserted as a speed."""

SETTINGS: dict[str, Any] = {
    "bus": {"replicas": REPLICAS},
    "collector": {"interval_s": 0.3, "status_timeout_s": 0.2},
    "evaluator": {"failover_samples": 2, "recovery_samples": 2},
    "targeter": {"max_share": 1.0, "gain": 10.0},
    "notifier": {"ack_timeout_s": 1.0, "retries": 5},
    "readmitter": {"first_wave_size": 1, "wave_interval_s": 1.0},
}


@pytest.fixture
def cluster(bus_security: BusSecurity, tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nodes with every user and TLS, as the session's server; all stopped at the end."""
    nodes = bus_security.cluster(tmp_path / "cluster", size=3).start()
    try:
        yield nodes
    finally:
        nodes.stop()
    assert not any(node.running for node in nodes.nodes)


def farm_on(
    cluster: NatsCluster, bus_security: BusSecurity, tmp_path: Path, prefix: str, **kwargs: Any
) -> tuple[Config, Path]:
    """A farm whose bus.url names every node of ``cluster``, at ``REPLICAS`` replicas."""
    return write_farm(
        tmp_path / "farm",
        SETTINGS,
        bus_url=cluster.urls,
        prefix=prefix,
        bus_auth=bus_security.auth,
        bus_tls=bus_security.tls,
        **kwargs,
    )


async def stream_leader(bus: Bus, stream: str, cluster: NatsCluster) -> ClusterNode:
    """The node that leads ``stream`` now (waiting while it has none)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            info = await bus.js.stream_info(stream)
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            info = None
        leader = info.cluster.leader if info is not None and info.cluster else None
        if leader and cluster.node(leader).running:
            return cluster.node(leader)
        assert time.monotonic() < deadline, f"{stream} has no leader after {WAIT_S:.0f}s"
        await asyncio.sleep(0.2)


async def acked_publish(js: JetStreamContext, subject: str, payload: bytes, msg_id: str) -> int:
    """Publish until the stream acknowledges; the sequence it was stored at. A retry
    carries the same ``Nats-Msg-Id``, so a write stored but not acknowledged is kept once."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            ack = await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": msg_id})
            return int(ack.seq)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error):
            assert time.monotonic() < deadline, f"{subject} not acknowledged in {WAIT_S:.0f}s"
            await asyncio.sleep(0.2)


async def acked_put(kv: KeyValue, key: str, value: bytes) -> int:
    """Put until the bucket acknowledges; the revision it was stored at."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return int(await kv.put(key, value))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error):
            assert time.monotonic() < deadline, f"{key} not acknowledged in {WAIT_S:.0f}s"
            await asyncio.sleep(0.2)


def other_than(cluster: NatsCluster, *nodes: ClusterNode) -> ClusterNode:
    return next(node for node in cluster.nodes if node not in nodes)


async def test_acknowledged_writes_survive_a_killed_node_and_a_second_loss_after_it_returns(
    cluster: NatsCluster, bus_security: BusSecurity, tmp_path: Path, prefix: str
) -> None:
    config, _ = farm_on(cluster, bus_security, tmp_path, prefix, clients=1)
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack)
        stream = bus.subjects.stream_name()
        await bus.ensure_stream(max_age_s=3600.0, max_bytes=STREAM_MAX_BYTES)
        kv = await bus.kv("targeter")
        info = await bus.js.stream_info(stream)
        assert info.config.num_replicas == REPLICAS
        bucket = await bus.js.stream_info(f"KV_{stream}_targeter")
        assert bucket.config.num_replicas == REPLICAS

        written: dict[int, bytes] = {}
        values: dict[str, bytes] = {}

        async def write(batch: str, count: int) -> None:
            for i in range(count):
                payload = f"{batch}-{i}".encode()
                seq = await acked_publish(bus.js, f"{prefix}.test.{batch}", payload, f"{batch}-{i}")
                written[seq] = payload
                key, value = f"{batch}-{i}", f"value of {batch}-{i}".encode()
                await acked_put(kv, key, value)
                values[key] = value

        await write("before", 20)
        killed = await stream_leader(bus, stream, cluster)
        killed.kill()
        down_at = time.monotonic()
        await write("while-down", 1)
        first_ack_s = time.monotonic() - down_at
        await write("while-down-more", 19)  # acknowledged by the two nodes left
        await asyncio.sleep(max(0.0, down_at + DOWN_S - time.monotonic()))
        await asyncio.to_thread(killed.restart)
        await asyncio.to_thread(cluster.wait_caught_up, killed, WAIT_S)

        # the node that was dead holds every acknowledged write, as it has them itself
        held = await asyncio.to_thread(killed.streams)
        assert held[stream]["state"]["messages"] == len(written) == 40
        assert held[stream]["state"]["last_seq"] == max(written)
        assert held[f"KV_{stream}_targeter"]["state"]["messages"] == len(values) == 40

        # and with it and one other node alone (a second node lost), nothing is missing
        second = await stream_leader(bus, stream, cluster)
        if second is killed:
            second = other_than(cluster, killed)
        second.kill()
        for seq, payload in written.items():
            msg = await _with_retry(lambda seq=seq: bus.js.get_msg(stream, seq))
            assert msg.data == payload, seq
        for key, value in values.items():
            entry = await _with_retry(lambda key=key: kv.get(key))
            assert entry.value == value, key
        await asyncio.to_thread(second.restart)
    print(f"\nfirst write acknowledged {first_ack_s:.1f}s after the stream leader's kill")


async def _with_retry(call: Any) -> Any:
    """``await call()``, again while the stream elects a leader."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await call()
        except nats.js.errors.NotFoundError:
            raise  # missing, not merely unanswered
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def bucket_heads(
    bus: Bus, buckets: list[str] | None = None
) -> dict[str, dict[str, tuple[int, bytes]]]:
    """Every bucket of the prefix (or those named), and in it each key's last write (a
    delete too): its sequence in the bucket's stream and its bytes."""
    stream = bus.subjects.stream_name()
    if buckets is not None:
        # named: a listing of the streams just after a node's loss may leave one out
        names = [f"KV_{bucket}" for bucket in buckets]
    else:
        names = [
            info.config.name
            for info in await bus.js.streams_info()
            if info.config.name and info.config.name.startswith(f"KV_{stream}_")
        ]
    heads: dict[str, dict[str, tuple[int, bytes]]] = {}
    for name in names:
        bucket = name.removeprefix("KV_")
        info = await bus.js.stream_info(name, subjects_filter=">")
        keys: dict[str, tuple[int, bytes]] = {}
        for subject in info.state.subjects or {}:
            msg = await bus.js.get_last_msg(name, subject)
            assert msg.seq is not None
            keys[subject.removeprefix(f"$KV.{bucket}.")] = (msg.seq, msg.data or b"")
        heads[bucket] = keys
    return heads


async def test_an_incident_carries_on_when_the_node_leading_the_stream_is_killed(
    cluster: NatsCluster, bus_security: BusSecurity, tmp_path: Path, prefix: str
) -> None:
    config, path = farm_on(cluster, bus_security, tmp_path, prefix, clients=6, client_rate=5.0)
    home_a = sorted(c.id for c in config.clients if c.home == "A")
    logs: list[str] = []
    supervisor = Supervisor(
        config, path, grace_s=10.0, sink=lambda name, line: logs.append(f"{name}: {line}")
    )
    recorder = Recorder()
    started = time.time()
    try:
        await asyncio.to_thread(supervisor.start)
        async with AsyncExitStack() as stack:
            bus = await operator_bus(config, stack)
            await bus.subscribe(
                bus.subjects.all,
                recorder.on_event,
                types=(Incident, FailoverPlan, Ack, ReadmitWave, ClientStatus, HealthReport),
                accept_clients=True,
            )
            stream = bus.subjects.stream_name()
            await recorder.until(
                lambda: len(recorder.latest_status()) == len(config.clients), WAIT_S, "clients"
            )
            workers = config.server("A").reference.workers  # type: ignore[union-attr]
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", stalled_workers=workers - 1)
            )
            await recorder.until(
                lambda: any(i.server == "A" for i in recorder.of(Incident)),
                WAIT_S,
                "A's incident to open",
            )

            # mid-incident: what the stream and every bucket hold, then the kill
            before = await bus.js.stream_info(stream)
            snapshot = time.time()
            recorded = await read_window(bus, started - 1, snapshot)
            heads = await bucket_heads(bus)
            kept = {f"{stream}_{b}" for use in USES.values() for b in use.buckets}
            kept.add(f"{stream}_leases")  # the leased services' (services/runtime/lease.py)
            assert set(heads) == kept, sorted(heads)
            killed = await stream_leader(bus, stream, cluster)
            on_killed = await asyncio.to_thread(killed.connections)
            reports_before = len(recorder.of(HealthReport))
            killed.kill()
            killed_at, kill_time = time.monotonic(), time.time()
            # the farm measures and decides on the two nodes left
            reported = await recorder.until(
                lambda: len(recorder.of(HealthReport)) > reports_before + 3,
                WAIT_S,
                "health reports after the kill",
            )
            await asyncio.sleep(max(0.0, killed_at + DOWN_S - time.monotonic()))
            await asyncio.to_thread(killed.restart)

            def moved() -> bool:
                latest = recorder.latest_status()
                return all(latest[c].current not in ("A", "") for c in home_a)

            await recorder.until(moved, WAIT_S, "A's clients to move")
            moved_s = time.monotonic() - killed_at
            await bus.publish(
                bus.subjects.control("A"), ServerControl(server="A", stalled_workers=0)
            )

            def closed_and_home() -> bool:
                closed = any(i.state == "closed" for i in recorder.of(Incident) if i.server == "A")
                latest = recorder.latest_status()
                return closed and all(s.current == s.home for s in latest.values())

            await recorder.until(closed_and_home, WAIT_S, "the incident closed, every client home")
            closed_s = time.monotonic() - killed_at
            await asyncio.to_thread(cluster.wait_caught_up, killed, WAIT_S)

            # nothing the stream or a bucket held before the kill is gone
            after = await bus.js.stream_info(stream)
            assert after.state.first_seq == before.state.first_seq
            assert after.state.last_seq > before.state.last_seq
            assert after.state.messages == after.state.last_seq - after.state.first_seq + 1
            again = await read_window(bus, started - 1, snapshot)
            assert [s.event.id for s in again if s.event] == [
                s.event.id for s in recorded if s.event
            ]
            assert len(recorded) > 0 and all(s.verified for s in again)
            heads_after = await bucket_heads(bus, list(heads))
            # what the services published while a node was down: heard, and recorded?
            heard = {e.id for e in recorder.events if e.time >= kill_time}
            stored = {
                x.event.id for x in await read_window(bus, kill_time - 1, time.time()) if x.event
            }
            unrecorded = len(heard - stored)
            for bucket, keys in heads.items():
                for key, (seq, data) in keys.items():
                    later_seq, later_data = heads_after[bucket][key]
                    assert later_seq >= seq, (bucket, key)
                    assert later_seq > seq or later_data == data, (bucket, key)
            # the restarted node holds its copy of every one of them again
            held = await asyncio.to_thread(killed.streams)
            assert held[stream]["state"]["last_seq"] >= before.state.last_seq
            for bucket, keys in heads.items():
                copy = held[f"KV_{bucket}"]
                assert copy["state"]["last_seq"] >= max((s for s, _ in keys.values()), default=0)
            for name in [stream, *(f"KV_{b}" for b in heads)]:
                assert held[name]["config"]["num_replicas"] == REPLICAS, name
            # no service died or was restarted: each carried on over the loss
            assert all(p.exited is None and p.restarts == 0 for p in supervisor.processes)
    except BaseException:
        print("\n".join(logs[-60:]))
        raise
    finally:
        statuses = await asyncio.to_thread(supervisor.stop)
    assert all(status == 0 for status in statuses.values()), statuses

    states = [i.state for i in recorder.of(Incident) if i.server == "A"]
    assert states[0] == "opened" and states[-1] == "closed" and "recovering" in states, states
    assert len({i.incident_id for i in recorder.of(Incident) if i.server == "A"}) == 1
    acks = {a.client for a in recorder.of(Ack) if a.server == "A" and a.accepted}
    assert sorted(acks) == home_a
    waves = [w for w in recorder.of(ReadmitWave) if w.server == "A" and w.wave > 0]
    assert sorted({c for w in waves for c in w.clients}) == home_a
    print(
        f"\nkilled {killed.name} (stream leader, {len(on_killed)} connections on it); "
        f"health reports flowing {reported:.1f}s after the kill "
        f"(restarted at {DOWN_S:.0f}s), A's clients moved by {moved_s:.1f}s, "
        f"incident closed by {closed_s:.1f}s; "
        f"stream {before.state.messages} -> {after.state.messages} messages; "
        f"{unrecorded} of {len(heard)} events heard since the kill not in the stream"
    )


def test_three_bus_servers_of_a_farm_make_one_cluster_that_its_services_replicate_on(
    bus_security: BusSecurity, tmp_path: Path, prefix: str
) -> None:
    """As compose/docker-compose.cluster.yml runs it: `aaa-failover bus-server` three times,
    each with its node's name, ports and routes, and a service told `--bus-replicas 3`."""
    host = "127.0.0.1"
    free = free_tcp_ports(host, 9)
    nodes = [NodePorts(*free[3 * i : 3 * i + 3]) for i in range(3)]
    tls = bus_security.tls | {
        "server_cert": str(bus_security.tls_dir / "server.pem"),
        "server_key": str(bus_security.tls_dir / "server-key.pem"),
    }
    urls = ",".join(f"tls://{host}:{node.client}" for node in nodes)
    config, path = write_farm(
        tmp_path / "farm",
        bus_url=urls,
        prefix=prefix,
        bus_auth={"dir": str(tmp_path / "auth")},
        bus_tls=tls,
        clients=1,
    )
    write_passwords(tmp_path / "auth", farm_users(config))
    assert config.bus.replicas == 1  # the command line says 3
    started: list[subprocess.Popen[str]] = []
    try:
        for i, node in enumerate(nodes):
            routes = [f"--route=nats-route://{host}:{n.cluster}" for n in nodes if n is not node]
            argv = [
                *CLI, "bus-server", "-c", str(path), "--store", str(tmp_path / f"n{i}"),
                "--port", str(node.client), "--http-port", str(node.http),
                "--cluster-port", str(node.cluster), f"--name=n{i}", *routes,
                "--conf", str(tmp_path / f"n{i}.conf"),
            ]  # fmt: skip
            started.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL, text=True))

        def leaders() -> set[str]:
            found = set()
            for node in nodes:
                _, body = monitoring(host, node.http, "/jsz")
                found.add(((body or {}).get("meta_cluster") or {}).get("leader") or "")
            return found

        def elected() -> bool:
            assert all(proc.poll() is None for proc in started), "a bus-server exited"
            return len(leaders()) == 1 and "" not in leaders()

        assert wait_until(elected, WAIT_S), "the nodes elected no JetStream meta leader"
        collector = subprocess.Popen(
            [*CLI, "run", "collector", "-c", str(path), "--bus-replicas", "3"],
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(collector)

        def replicated() -> bool:
            for node in nodes:
                _, body = monitoring(host, node.http, "/jsz?accounts=true&streams=true&config=true")
                details = [
                    s
                    for account in (body or {}).get("account_details") or []
                    for s in account.get("stream_detail") or []
                ]
                if not any(
                    s["name"] == prefix.upper() and s["config"]["num_replicas"] == REPLICAS
                    for s in details
                ):
                    return False
            return True

        assert wait_until(replicated, WAIT_S), "the stream is not on every node at R3"
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(30) == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(condition: Any, timeout_s: float) -> bool:
    """Whether ``condition()`` held within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())
