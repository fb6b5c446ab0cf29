"""compose/docker-compose.cluster.yml, checked offline against docker-compose.yml, which it
goes over: three bus-server nodes routed to each other on ports of their own, each with
the NATS container's secrets and a store of its own; every service the same command as
in the base file, on all three nodes and at three replicas, started once all are healthy.
The Compose Specification check of every compose file is test_compose.py's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.launch.test_compose import COMPOSE_DIR, COMPOSE_FILE, _option, load_compose

CLUSTER_FILE = COMPOSE_DIR / "docker-compose.cluster.yml"
NODES = ("nats", "nats-2", "nats-3")


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load_compose(CLUSTER_FILE)


def _command(cluster: dict[str, Any], base: dict[str, Any], name: str) -> list[str]:
    return list(
        cluster["services"].get(name, {}).get("command") or base["services"][name]["command"]
    )


def test_three_nodes_route_to_each_other_on_ports_of_their_own(
    base: dict[str, Any], cluster: dict[str, Any]
) -> None:
    commands = {name: _command(cluster, base, name) for name in NODES}
    cluster_ports = {name: int(_option(cmd, "--cluster-port")[0]) for name, cmd in commands.items()}
    ports: list[int] = []
    for name, cmd in commands.items():
        assert cmd[:3] == ["bus-server", "-c", "/etc/aaa-failover/farm.toml"], name
        others = sorted(port for other, port in cluster_ports.items() if other != name)
        routes = sorted(int(r.rsplit(":", 1)[1]) for r in _option(cmd, "--route"))
        assert routes == others, name
        assert _option(cmd, "--name") == [f"nats-{NODES.index(name) + 1}"], name
        ports += [
            int(_option(cmd, flag)[0]) for flag in ("--port", "--http-port", "--cluster-port")
        ]
    assert len(set(ports)) == len(ports) == 9, ports


def test_each_node_has_the_nats_secrets_and_a_store_of_its_own(
    base: dict[str, Any], cluster: dict[str, Any]
) -> None:
    secrets = base["services"]["nats"]["secrets"]
    stores = set()
    for name in NODES[1:]:
        node = cluster["services"][name]
        assert node["secrets"] == secrets, name
        assert node["network_mode"] == "host" and node["restart"] == "unless-stopped", name
        store = next(v for v in node["volumes"] if v.endswith(":/data"))
        stores.add(store.split(":")[0])
        port = _option(node["command"], "--http-port")[0]
        assert f"127.0.0.1:{port}/healthz" in node["healthcheck"]["test"][-1], name
    assert stores == {"nats-2-data", "nats-3-data"} <= set(cluster["volumes"])


def test_every_service_runs_its_own_command_on_every_node_at_three_replicas(
    base: dict[str, Any], cluster: dict[str, Any]
) -> None:
    ports = [_option(_command(cluster, base, name), "--port")[0] for name in NODES]
    urls = ",".join(f"tls://127.0.0.1:{port}" for port in ports)
    services = [n for n, s in base["services"].items() if (s.get("command") or [""])[0] == "run"]
    assert sorted(n for n in cluster["services"] if n not in NODES) == sorted(services)
    for name in services:
        theirs = base["services"][name]["command"]
        ours = cluster["services"][name]["command"]
        assert _option(ours, "--bus-url") == [urls], name
        assert _option(ours, "--bus-replicas") == ["3"], name
        rest = [a for a in ours if not a.startswith(("--bus-url", "--bus-replicas"))]
        assert rest == [a for a in theirs if not a.startswith("--bus-url")], name
        assert sorted(cluster["services"][name]["depends_on"]) == sorted(NODES), name
