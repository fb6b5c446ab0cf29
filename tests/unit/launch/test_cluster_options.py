"""The command line's options for a NATS cluster, refused with one line when wrong:
`run --bus-replicas` (1 to 5) and `bus-server`'s --name, --cluster-port and --route."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.launch.bususers import farm_users
from services.launch.cli import main
from services.launch.farm import write_farm
from services.runtime.busauth import write_passwords
from services.runtime.config import load_config


@pytest.fixture
def farm_path(tmp_path: Path) -> Path:
    _, path = write_farm(
        tmp_path / "farm", bus_url="nats://127.0.0.1:1", clients=1, bus_auth={"dir": "auth"}
    )
    return path


@pytest.mark.parametrize("replicas", ["0", "6"])
def test_run_refuses_replicas_jetstream_cannot_hold(
    farm_path: Path, replicas: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "collector", "-c", str(farm_path), "--bus-replicas", replicas]) == 2
    assert "--bus-replicas must be from 1 to 5" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--route", "nats-route://127.0.0.1:16223"], "--name and --route need --cluster-port"),
        (["--cluster-port", "16222"], "a node of a cluster needs --name"),
        (
            ["--cluster-port", "16222", "--name", "n1", "--route", "127.0.0.1:16223"],
            "expected nats-route://HOST:PORT",
        ),
    ],
)
def test_bus_server_refuses_a_half_given_cluster(
    farm_path: Path,
    tmp_path: Path,
    args: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    auth = farm_path.parent / "auth"
    auth.mkdir()
    write_passwords(auth, farm_users(load_config(farm_path)))
    argv = ["bus-server", "-c", str(farm_path), "--store", str(tmp_path / "store"), *args]
    assert main(argv) == 2
    assert says in capsys.readouterr().err
