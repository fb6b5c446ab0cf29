"""A small farm on loopback: the config and secrets of reference servers and clients.

Used by `aaa-failover demo`, the tests and the benchmarks. Each server gets
its own loopback address and a free UDP port; each client its own loopback
address, so every client's shared secret is told apart by source address as
on a real farm.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from services.runtime.config import Config, load_config
from services.runtime.permissions import AGENT, USES

STREAM_MAX_BYTES = 64 << 20


def free_udp_port(ip: str) -> int:
    """A UDP port free on ``ip`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


PROBE_IP = "127.0.2.11"

THREADS_ONLY: dict[str, Any] = {
    "rule": "weighted",
    "weights": {
        **dict.fromkeys(("queue", "memory", "cpu", "processes"), 0.0),
        **dict.fromkeys(("latency", "outstanding", "clients"), 0.0),
        "threads": 1.0,
    },
}
"""Evaluator settings whose health is the worker pool alone: for farms of reference
servers that share the machine (or one process) with everything else, where the CPU
part would follow the machine's load rather than the stalls a test or benchmark makes."""
"""Where the collector's probes come from on a loopback farm."""


def server_ip(index: int) -> str:
    return f"127.0.0.{11 + index}"


def client_ip(index: int) -> str:
    return f"127.0.1.{1 + index}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def farm_dict(
    directory: Path,
    *,
    bus_url: str | None,
    prefix: str = "aaa",
    servers: tuple[str, ...] = ("A", "B", "C"),
    clients: int = 6,
    client_rate: float = 2.0,
    workers: int = 8,
    service_time_ms: float = 5.0,
    capacity_rps: float | None = None,
    probes: bool = False,
    bus_auth: Mapping[str, Any] | None = None,
    bus_tls: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of a farm as a dict; writes the secret files it names.

    Every service that publishes signs with a key of its own
    (``bus.service_keys``); the shared ``bus.key`` signs the rest.

    With ``probes``, the collector sends every server synthetic Access-Requests
    as user ``probe`` from ``PROBE_IP`` (the ``latency`` part of health).
    ``bus_auth`` and ``bus_tls`` are the bus's ``auth`` and ``tls`` tables (the
    NATS users' password files, and TLS); without them a farm with no
    ``bus_url`` is on the embedded bus of `up`, which makes its own.
    """
    directory.mkdir(parents=True, exist_ok=True)
    secret_dir = directory / "secrets"
    secret_dir.mkdir(exist_ok=True)

    def secret(name: str) -> dict[str, str]:
        path = secret_dir / name
        if not path.exists():
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
        return {"file": f"secrets/{name}"}

    bus: dict[str, Any] = {
        "prefix": prefix,
        "key": {"id": "k1", "secret": secret("bus.key")},
        # a key per service, each allowed to sign only what its service publishes
        "service_keys": {
            name: [{"id": f"{name}-1", "secret": secret(f"key-{name}")}]
            for name, use in USES.items()
            if use.publishes and name != AGENT
        },
        # JetStream reserves a stream's max_bytes up front: a loopback farm
        # (and every test prefix) needs little, so many can share one server.
        "stream_max_bytes": STREAM_MAX_BYTES,
    }
    if bus_url:
        bus["url"] = bus_url
    if bus_auth is not None:
        bus["auth"] = dict(bus_auth)
    if bus_tls is not None:
        bus["tls"] = dict(bus_tls)
    probe_password = secret("probe-password")
    probe_secret = secret("probe")
    users = {"alice": "wonderland"}
    if probes:
        users["probe"] = (directory / probe_password["file"]).read_text().strip()
    server_list = []
    for i, sid in enumerate(servers):
        ip = server_ip(i)
        probe = {
            "secret": probe_secret,
            "users": [{"name": "probe", "password": probe_password}],
            "source_ip": PROBE_IP,
        }
        server_list.append(
            ({"probe": probe} if probes else {})
            | ({"capacity_rps": capacity_rps} if capacity_rps is not None else {})
            | {
                "id": sid,
                "ip": ip,
                "auth_port": free_udp_port(ip),
                "status_secret": secret(f"status-{sid}"),
                "threads_max": workers,
                "process": {"pid_file": f"run/{sid}.pid"},
                "reference": {
                    "workers": workers,
                    "service_time_ms": service_time_ms,
                    "pid_file": f"run/{sid}.pid",
                    "users": users,
                },
            }
        )
    client_list = []
    for i in range(clients):
        home = servers[i % len(servers)]
        client_list.append(
            {
                "id": f"nas-{i + 1:02d}",
                "ip": client_ip(i),
                "secret": secret(f"client-nas-{i + 1:02d}"),
                "home": home,
                "alternates": [s for s in servers if s != home],
                "rate": client_rate,
            }
        )
    (directory / "run").mkdir(exist_ok=True)
    return {"bus": bus, "servers": server_list, "clients": client_list}


def write_config(directory: Path, data: Mapping[str, Any], name: str = "config.toml") -> Path:
    """Write ``data`` as the TOML config file ``directory/name``."""
    path = directory / name
    path.write_text(tomli_w.dumps(dict(data)))
    return path


def write_farm(
    directory: Path, overrides: Mapping[str, Any] | None = None, **kwargs: Any
) -> tuple[Config, Path]:
    """Write a farm's config (with ``overrides`` merged in) and load it back."""
    data = _merge(farm_dict(directory, **kwargs), overrides or {})
    path = write_config(directory, data)
    return load_config(path), path
