"""services/launch/reads.py against the services' own code.

Each service's real ``run`` is called with ``Config.read_secret`` recording
what it is asked for and ``run_service`` stopped where the process would join
the bus (after its keyring is made, as lifecycle.run_service makes it); the
notifier, whose reads are in its set-up, is run into its set-up until it first
touches its state. What is recorded must be what :func:`reads.secrets_read`
says, for every service and every split of the farm, so what a container of a
service holds (compose/, tests/unit/launch/test_compose.py) follows the code.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import prometheus_client
import pytest

from services.launch import reads, registry
from services.launch.farm import write_farm
from services.runtime.config import Config, RadiusCheck, Secret, load_config
from services.runtime.keyring import Keyring

ROOT = Path(__file__).resolve().parents[3]


class _Joined(Exception):
    """The service got as far as joining the bus."""


@pytest.fixture
def farm(tmp_path: Path) -> Config:
    config, _ = write_farm(
        tmp_path,
        bus_url="tls://127.0.0.1:1",
        probes=True,
        bus_auth={
            "dir": "nats",
            "agents": {
                "agent-1": ["nas-01", "nas-02"],
                "agent-2": ["nas-03", "nas-04", "nas-05", "nas-06"],
            },
        },
        bus_tls={"ca": "tls/ca.pem"},
        overrides={"agent": {"state_dir": str(tmp_path / "agent-state")}},
    )
    return config


def _files(secrets: list[Secret]) -> Counter[str | None]:
    return Counter(s.file or s.env for s in secrets)


def _what_run_reads(
    monkeypatch: pytest.MonkeyPatch, config: Config, service: str, only: list[str]
) -> list[Secret]:
    """What the service's own ``run`` reads until it would join the bus (the notifier:
    until its set-up first touches its state)."""
    asked: list[Secret] = []

    def read_secret(self: Config, secret: Secret) -> bytes:
        asked.append(secret)
        return reads.PLACEHOLDER

    monkeypatch.setattr(Config, "read_secret", read_secret)
    module = importlib.import_module(registry.service(service).module)

    async def run_service(
        name: str, cfg: Config, setup: Any, *, keyring: Keyring | None = None, **_: Any
    ) -> None:
        assert name == service
        keyring = keyring or Keyring.from_config(cfg, service=name)
        if name == "notifier":
            await setup(_runtime(cfg))
        raise _Joined

    monkeypatch.setattr(module, "run_service", run_service)
    if service == "notifier":

        class _Store:
            async def load_all(self) -> Any:
                raise _Joined

        async def open_store(*args: Any, **kwargs: Any) -> _Store:
            return _Store()

        monkeypatch.setattr(module.StateStore, "open", open_store)
    with pytest.raises(_Joined):
        asyncio.run(module.run(config, bus_url=None, only=only or None))
    monkeypatch.undo()
    return asked


def _runtime(config: Config) -> Any:
    bus = SimpleNamespace(
        name="notifier", counters=SimpleNamespace(drop=lambda *a: None), drop=lambda *a: None
    )
    return SimpleNamespace(
        config=config,
        bus=bus,
        stopping=asyncio.Event(),
        metrics=SimpleNamespace(registry=prometheus_client.CollectorRegistry()),
    )


SPLITS: dict[str, list[list[str]]] = {
    "aaa": [[], ["A"], ["B", "C"]],
    "collector": [[], ["A"]],
    "evaluator": [[], ["B"]],
    "targeter": [[]],
    "notifier": [[]],
    "readmitter": [[], ["C"]],
    "agent": [["nas-01", "nas-02"], ["nas-03"]],
}


def test_every_service_is_covered() -> None:
    assert sorted(SPLITS) == sorted(registry.NAMES)


@pytest.mark.parametrize("service", sorted(SPLITS))
def test_what_a_service_reads_is_what_its_code_reads(
    monkeypatch: pytest.MonkeyPatch, farm: Config, service: str
) -> None:
    for only in SPLITS[service]:
        expected = reads.secrets_read(farm, service, only)
        assert _files(_what_run_reads(monkeypatch, farm, service, only)) == _files(expected), (
            service,
            only,
        )


def test_with_the_compose_farm_too(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_config(ROOT / "compose" / "farm.toml")
    for service in ("evaluator", "targeter", "notifier", "readmitter", "collector"):
        expected = reads.secrets_read(compose, service)
        assert _files(_what_run_reads(monkeypatch, compose, service, [])) == _files(expected)
    expected = reads.secrets_read(compose, "aaa", ["A"])
    assert _files(_what_run_reads(monkeypatch, compose, "aaa", ["A"])) == _files(expected)


def test_each_service_reads_its_key_the_keys_it_verifies_and_the_shared_key_only_if_needed(
    farm: Config,
) -> None:
    def files(service: str, only: list[str] | None = None) -> set[str]:
        return {s.file for s in reads.secrets_read(farm, service, only) if s.file}

    keys = {s: k[0].secret.file for s, k in farm.bus.service_keys.items()}
    clients = {c.secret.file for c in farm.clients}
    status = {s.id: s.status_secret.file for s in farm.servers}
    assert farm.bus.key is not None
    shared = farm.bus.key.secret.file
    probe = {s.probe.secret.file for s in farm.servers if s.probe} | {
        u.password.file for s in farm.servers if s.probe for u in s.probe.users
    }
    assert files("collector") == {keys["collector"], *status.values(), *probe}
    assert (
        files("evaluator") == {keys["evaluator"], keys["collector"], keys["readmitter"]} | clients
    )
    assert files("targeter") == {keys["targeter"], keys["evaluator"]} | clients
    assert (
        files("readmitter")
        == {
            keys["readmitter"],
            keys["evaluator"],
            keys["targeter"],
            keys["notifier"],  # its deliveries: a readmission notice that failed
        }
        | clients
    )
    assert files("notifier") == {keys["notifier"], keys["targeter"], keys["readmitter"]} | clients
    # a reference server: its clients, its own status secret, the secret its prober uses,
    # and the shared key to verify `control`
    probes = {s.probe.secret.file for s in farm.servers if s.probe}
    assert files("aaa", ["A"]) == {shared, status["A"], *clients, *probes}
    assert files("agent", ["nas-03"]) == {farm.client("nas-03").secret.file}


def test_a_service_with_no_key_of_its_own_reads_the_shared_key(farm: Config) -> None:
    config = msgspec.structs.replace(farm, bus=msgspec.structs.replace(farm.bus, service_keys={}))
    assert config.bus.key is not None
    for service in ("collector", "evaluator", "targeter", "notifier", "readmitter"):
        files = {s.file for s in reads.secrets_read(config, service)}
        assert config.bus.key.secret.file in files, service


def test_the_bus_files_are_its_users_password_and_the_ca(farm: Config) -> None:
    assert reads.bus_files(farm, "evaluator") == ["nats/evaluator", "tls/ca.pem"]
    assert reads.bus_files(farm, "agent", ["nas-01"]) == ["nats/agent-1", "tls/ca.pem"]
    assert reads.files_read(farm, "agent", ["nas-02"]) == {
        "nats/agent-1",
        "tls/ca.pem",
        str(farm.client("nas-02").secret.file),
    }


def test_the_collector_reads_the_secret_of_a_radius_check_of_its_servers(farm: Config) -> None:
    check = RadiusCheck(name="r", port=1812, secret=Secret(file="secrets/check"))
    servers = [
        msgspec.structs.replace(s, services=[check]) if s.id == "A" else s for s in farm.servers
    ]
    config = msgspec.structs.replace(farm, servers=servers)
    assert "secrets/check" in {s.file for s in reads.secrets_read(config, "collector", ["A"])}
    assert "secrets/check" not in {s.file for s in reads.secrets_read(config, "collector", ["B"])}


def test_every_place_the_services_read_a_secret_is_known() -> None:
    """A new ``read_secret`` in a service must be added to services/launch/reads.py."""
    found = set()
    for path in (ROOT / "services").rglob("*.py"):
        if re.search(r"\.read_secret\(", path.read_text()):
            found.add(str(path.relative_to(ROOT)))
    assert found == {
        "services/runtime/keyring.py",
        "services/launch/reads.py",
        "services/aaa/service.py",
        "services/collector/service.py",
        "services/collector/checks.py",
        "services/notifier/service.py",
        "services/agent/service.py",
    }
