"""The stack on a 3-node NATS cluster as podman-compose reads it: docker-compose.yml with
docker-compose.cluster.yml over it, merged by podman-compose itself (``config``), not run.

Skipped, as test_stack.py is, where podman is not prepared (``make containers``)."""

from __future__ import annotations

import pytest

from tests.containers.test_stack import COMPOSE_DIR, COMPOSE_FILE, _run, _tools

CLUSTER_FILE = COMPOSE_DIR / "docker-compose.cluster.yml"
URLS = "tls://127.0.0.1:14222,tls://127.0.0.1:14223,tls://127.0.0.1:14224"


def test_podman_compose_merges_the_cluster_over_the_stack() -> None:
    yaml = pytest.importorskip("yaml")
    tools = _tools()
    _run(["sh", str(COMPOSE_DIR / "make-secrets.sh")], 60)
    files = ["-f", str(COMPOSE_FILE), "-f", str(CLUSTER_FILE)]
    rendered = yaml.safe_load(_run([tools.compose, *files, "--profile", "demo", "config"], 120))
    services = rendered["services"]
    assert {"nats", "nats-2", "nats-3"} <= set(services)
    for name, svc in services.items():
        command = svc.get("command") or []
        if command[:1] == ["run"]:
            assert f"--bus-url={URLS}" in command and "--bus-replicas=3" in command, name
            assert {"nats", "nats-2", "nats-3"} <= set(svc["depends_on"]), name
    stores = {v.split(":")[0] for n in ("nats", "nats-2", "nats-3") for v in services[n]["volumes"]}
    assert {"nats-data", "nats-2-data", "nats-3-data"} <= stores
