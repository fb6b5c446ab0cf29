"""A nats-server cluster on one host: N nodes with JetStream, routed to each other.

Each node is an :class:`~services.runtime.natsserver.EmbeddedNats` with a
``server_name`` of its own, its own client, cluster (route) and monitoring
ports, all chosen free before the first start and kept for its restarts, and
its own JetStream store folder, routes to every other node, and the users,
permissions and TLS of the single embedded server. :meth:`NatsCluster.start`
returns once the cluster has elected a JetStream meta leader; a node can be
killed (:meth:`ClusterNode.kill`, SIGKILL) and started again on its ports and
store (:meth:`ClusterNode.restart`). Used by the tests of a replicated bus;
on a real farm each node runs on a host of its own (docs/operations.md).

Routes listen on the loopback address alone and carry no TLS: across hosts,
the cluster block of each node's config would need TLS of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from services.runtime.natsserver import EmbeddedNats, NatsServerError, ServerTls, ServerUser

logger = logging.getLogger(__name__)

MAX_NODES = 5
"""More nodes than JetStream replicates to (R5) buys a replicated bus nothing."""
POLL_S = 0.1


@dataclass(frozen=True)
class NodePorts:
    """The ports of one node: clients, routes from the other nodes, and monitoring (HTTP)."""

    client: int
    cluster: int
    http: int


def free_tcp_ports(host: str, count: int) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def cluster_settings(
    server_name: str, cluster: str, listen: str, routes: Sequence[str]
) -> dict[str, object]:
    """The part of a node's nats-server config that makes it one of ``cluster``: its own
    name (JetStream's replicas are placed by it), where it takes the other nodes' routes
    (``host:port``), and the routes to them (``nats-route://host:port``)."""
    for route in routes:
        if not route.startswith("nats-route://"):
            raise NatsServerError(f"route {route!r}: expected nats-route://HOST:PORT")
    return {
        "server_name": server_name,
        "cluster": {"name": cluster, "listen": listen, "routes": list(routes)},
    }


def node_settings(
    name: str, cluster: str, host: str, ports: NodePorts, peers: Sequence[NodePorts]
) -> dict[str, object]:
    """The cluster part of one node's nats-server config on ``host``: its name, its route
    listener and routes to ``peers``, and its monitoring endpoint."""
    routes = [f"nats-route://{host}:{peer.cluster}" for peer in peers]
    return {
        **cluster_settings(name, cluster, f"{host}:{ports.cluster}", routes),
        "http": f"{host}:{ports.http}",
    }


def monitoring(host: str, port: int, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """GET ``path`` of a node's monitoring endpoint: its HTTP status and decoded JSON body
    (status 0 and None when nothing answers)."""
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return int(exc.code), json.loads(exc.read() or b"null")
        return int(exc.code), None
    except (OSError, ValueError):
        return 0, None


class ClusterNode(EmbeddedNats):
    """One node of a :class:`NatsCluster`: an embedded server with a name, fixed ports
    and routes to the other nodes."""

    # a node retries its routes to a peer that is down (or not started yet) every second
    expected_errors = ("Error trying to connect to route",)

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        host: str,
        ports: NodePorts,
        settings: dict[str, object],
        start_timeout_s: float,
        users: Sequence[ServerUser],
        tls: ServerTls | None,
    ) -> None:
        super().__init__(
            data_dir,
            host=host,
            port=ports.client,
            start_timeout_s=start_timeout_s,
            users=users,
            tls=tls,
            settings=settings,
        )
        self.name = name
        self.ports = ports

    @property
    def url(self) -> str:
        """Where clients connect to this node, known whether or not it runs."""
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{self.host}:{self.ports.client}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node, as a crash would: nothing is flushed, its store is kept."""
        if self.proc is None:
            raise NatsServerError(f"node {self.name} is not running")
        self.proc.kill()
        self.proc.wait()
        logger.info("node %s killed", self.name)

    def restart(self) -> ClusterNode:
        """Start the node again on its ports and store folder, with its routes."""
        self.requested_port = self.ports.client
        self._reap()
        self.start()
        return self

    def jsz(self) -> dict[str, Any] | None:
        """The node's JetStream report (``/jsz``), or None when it does not answer."""
        status, body = monitoring(self.host, self.ports.http, "/jsz")
        return body if status == 200 and isinstance(body, dict) else None

    def streams(self) -> dict[str, dict[str, Any]]:
        """Every stream this node holds a copy of, by name, as this node has it: its
        ``state`` (``messages``, ``first_seq``, ``last_seq``, ...), its ``cluster``
        (``leader``, ``replicas``) and its ``config``."""
        status, body = monitoring(
            self.host, self.ports.http, "/jsz?accounts=true&streams=true&config=true"
        )
        if status != 200 or not isinstance(body, dict):
            raise NatsServerError(f"node {self.name} does not answer /jsz (HTTP {status})")
        return {
            stream["name"]: stream
            for account in body.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }

    def connections(self) -> list[str]:
        """The names of the client connections this node holds."""
        status, body = monitoring(self.host, self.ports.http, "/connz?limit=1024")
        if status != 200 or not isinstance(body, dict):
            raise NatsServerError(f"node {self.name} does not answer /connz (HTTP {status})")
        return [str(conn.get("name", "")) for conn in body.get("connections") or []]

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the node logged, for an error's report."""
        return "\n".join(self._log[-lines:])

    def healthy(self) -> bool:
        """Whether the node says its JetStream is current: it knows the meta leader and
        every stream and consumer it holds has caught up (``/healthz``)."""
        status, _ = monitoring(self.host, self.ports.http, "/healthz")
        return status == 200


class NatsCluster:
    """``size`` nats-server nodes routed to each other on ``host``, JetStream on each,
    stopped (every node, and the folder if it made it) on exit.

    ``users`` and ``tls`` are those of :class:`EmbeddedNats`, the same on every node.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        name: str = "aaa",
        users: Sequence[ServerUser] = (),
        tls: ServerTls | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        if not 2 <= size <= MAX_NODES:
            raise NatsServerError(f"a cluster has 2 to {MAX_NODES} nodes, not {size}")
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="aaa-nats-cluster-"))
        self.host = host
        self.name = name
        self.start_timeout_s = start_timeout_s
        free = free_tcp_ports(host, 3 * size)
        ports = [NodePorts(*free[3 * i : 3 * i + 3]) for i in range(size)]
        self.nodes = [
            ClusterNode(
                f"{name}-{i + 1}",
                self.directory / f"{name}-{i + 1}",
                host=host,
                ports=own,
                settings=node_settings(
                    f"{name}-{i + 1}", name, host, own, [p for p in ports if p is not own]
                ),
                start_timeout_s=start_timeout_s,
                users=users,
                tls=tls,
            )
            for i, own in enumerate(ports)
        ]

    @property
    def urls(self) -> str:
        """Every node's URL, comma-separated: a ``bus.url`` that names the whole cluster."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def start(self) -> NatsCluster:
        """Start every node and wait until the cluster has a JetStream meta leader."""
        try:
            for node in self.nodes:
                node.start()
            self.wait_for_leader()
        except BaseException:
            self.stop()
            raise
        logger.info("nats cluster %s ready: %s", self.name, self.urls)
        return self

    def meta_leader(self) -> str | None:
        """The running node that every running node says leads JetStream's meta group,
        else None (no leader yet, or one that is gone and not yet replaced)."""
        running = [node for node in self.nodes if node.running]
        seen: set[str | None] = set()
        for node in running:
            meta = (node.jsz() or {}).get("meta_cluster") or {}
            seen.add(meta.get("leader") or None)
        leader = seen.pop() if len(seen) == 1 else None
        return leader if leader in {node.name for node in running} else None

    def wait_for_leader(self, timeout_s: float | None = None) -> str:
        """The meta leader, once the running nodes agree on one; NatsServerError after
        ``timeout_s`` (default: the start timeout)."""
        return str(self._wait(self.meta_leader, timeout_s, "a JetStream meta leader"))

    def caught_up(self, node: ClusterNode) -> bool:
        """Whether ``node`` says it is current (``/healthz``) and holds, of every stream
        it is a replica of, at least as much as the other running nodes held just before."""
        others = [other for other in self.nodes if other is not node and other.running]
        reference: dict[str, int] = {}
        for other in others:
            for name, detail in other.streams().items():
                cluster = detail.get("cluster") or {}
                members = {cluster.get("leader")} | {
                    r.get("name") for r in cluster.get("replicas") or []
                }
                if node.name in members:
                    seq = int((detail.get("state") or {}).get("last_seq", 0))
                    reference[name] = max(seq, reference.get(name, 0))
        if not node.healthy():
            return False
        held = node.streams()
        return all(
            int((held.get(name, {}).get("state") or {}).get("last_seq", -1)) >= seq
            for name, seq in reference.items()
        )

    def wait_caught_up(self, node: ClusterNode, timeout_s: float | None = None) -> None:
        """Wait until ``node`` (restarted) has caught up with what it missed
        (:meth:`caught_up`); NatsServerError after ``timeout_s``."""
        self._wait(
            lambda: True if self.caught_up(node) else None,
            timeout_s,
            f"catching up of node {node.name}",
        )

    def _wait(self, probe: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while True:
            found = probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {node.name}\n{node.log_tail()}" for node in self.nodes)
                raise NatsServerError(f"nats cluster {self.name}: no {what}:\n{logs}")
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove a folder the cluster made."""
        for node in self.nodes:
            node.stop(timeout_s)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
