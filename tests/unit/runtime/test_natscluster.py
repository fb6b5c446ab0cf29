"""The cluster's configuration, checked without starting a server: each node's name, route
listener, routes to every other node and monitoring endpoint; and the sizes refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.natscluster import NatsCluster, NodePorts, free_tcp_ports, node_settings
from services.runtime.natsserver import NatsServerError


def test_a_node_routes_to_every_other_node_and_serves_monitoring() -> None:
    own = NodePorts(client=4222, cluster=6222, http=8222)
    peers = [NodePorts(4223, 6223, 8223), NodePorts(4224, 6224, 8224)]
    settings = node_settings("aaa-1", "aaa", "127.0.0.1", own, peers)
    assert settings == {
        "server_name": "aaa-1",
        "http": "127.0.0.1:8222",
        "cluster": {
            "name": "aaa",
            "listen": "127.0.0.1:6222",
            "routes": ["nats-route://127.0.0.1:6223", "nats-route://127.0.0.1:6224"],
        },
    }


def test_each_node_has_its_own_name_ports_and_store(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path, size=3)
    names = [node.name for node in cluster.nodes]
    assert names == ["aaa-1", "aaa-2", "aaa-3"]
    ports = [p for node in cluster.nodes for p in (node.ports.client, node.ports.cluster)]
    assert len(set(ports)) == 6
    assert len({node.data_dir for node in cluster.nodes}) == 3
    assert cluster.urls.split(",") == [f"nats://127.0.0.1:{n.ports.client}" for n in cluster.nodes]
    for node in cluster.nodes:
        routes = node.settings["cluster"]["routes"]  # type: ignore[index]
        others = [n.ports.cluster for n in cluster.nodes if n is not node]
        assert routes == [f"nats-route://127.0.0.1:{port}" for port in others]


@pytest.mark.parametrize("size", [0, 1, 6])
def test_a_cluster_of_too_few_or_too_many_nodes_is_refused(tmp_path: Path, size: int) -> None:
    with pytest.raises(NatsServerError, match="2 to 5 nodes"):
        NatsCluster(tmp_path, size=size)


def test_free_ports_are_distinct() -> None:
    ports = free_tcp_ports("127.0.0.1", 9)
    assert len(set(ports)) == 9
