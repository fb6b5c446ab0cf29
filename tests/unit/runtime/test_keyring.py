"""Which keys each process holds and what each key may sign (real config files, no bus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from schemas.subjects import kind_of
from services.runtime.config import Config, ConfigError, load_config
from services.runtime.keyring import Keyring

SIGNING = ("collector", "evaluator", "targeter", "notifier", "readmitter")


def _config(
    tmp_path: Path,
    *,
    keyed: tuple[str, ...] = SIGNING,
    present: tuple[str, ...] = (),
    service_keys: dict[str, Any] | None = None,
) -> Config:
    """A farm whose ``keyed`` services have keys of their own. Only the secret files of
    ``present`` (and the clients' and the shared key's) exist: reading any other fails."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in ("bus", "nas-01", *present):
        (secrets / name).write_text(f"secret-of-{name}\n")
    if service_keys is None:
        service_keys = {s: [{"id": f"{s}-2", "secret": {"file": f"secrets/{s}"}}] for s in keyed}
    data = {
        "bus": {
            "prefix": "t",
            "key": {"id": "shared", "secret": {"file": "secrets/bus"}},
            "service_keys": service_keys,
        },
        "servers": [{"id": "A", "ip": "127.0.0.11", "status_secret": {"file": "secrets/bus"}}],
        "clients": [
            {"id": "nas-01", "ip": "127.0.1.1", "secret": {"file": "secrets/nas-01"}, "home": "A"}
        ],
    }
    path = tmp_path / "farm.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return load_config(path)


def test_a_service_reads_only_the_secrets_it_uses(tmp_path: Path) -> None:
    # the collector subscribes to nothing: its own key is all it reads
    config = _config(tmp_path, present=("collector",))
    collector = Keyring.from_config(config, service="collector")
    assert collector.signer is not None and collector.signer.key_id == "collector-2"
    assert collector.bus_keys == {} and collector.client_keys == {}
    # the targeter, its own key and the evaluator's (incidents, health) and the clients'
    with pytest.raises(ConfigError):
        Keyring.from_config(config, service="targeter")


def test_the_targeter_holds_its_key_the_evaluators_and_the_clients(tmp_path: Path) -> None:
    config = _config(tmp_path, present=("targeter", "evaluator"))
    targeter = Keyring.from_config(config, service="targeter")
    assert targeter.signer is not None and targeter.signer.key_id == "targeter-2"
    assert set(targeter.bus_keys) == {"evaluator-2"}
    assert set(targeter.client_keys) == {"nas-01"}


def test_a_key_signs_only_the_kinds_its_service_publishes(tmp_path: Path) -> None:
    config = _config(tmp_path, present=SIGNING)
    ring = Keyring.from_config(config)
    assert ring.may_sign("collector-2", "t.metrics.A")
    assert not ring.may_sign("collector-2", "t.plan.A")
    assert ring.may_sign("targeter-2", "t.plan.A")
    assert not ring.may_sign("targeter-2", "t.notice.nas-01")
    # the shared key: only what no keyed service publishes
    assert ring.may_sign("shared", "t.control.A")
    assert not ring.may_sign("shared", "t.plan.A")
    # a client: its acks, status and requests, nothing else
    assert ring.may_sign("client:nas-01", "t.ack.nas-01")
    assert not ring.may_sign("client:nas-01", "t.plan.A")


def test_the_operator_signs_each_kind_with_its_publishers_key(tmp_path: Path) -> None:
    config = _config(tmp_path, present=SIGNING)
    ring = Keyring.from_config(config)
    signed_by = {
        subject: getattr(ring.signer_for(subject), "key_id", None)
        for subject in ("t.plan.A", "t.health.A", "t.readmit.A", "t.control.A")
    }
    assert signed_by == {
        "t.plan.A": "targeter-2",
        "t.health.A": "evaluator-2",
        "t.readmit.A": "readmitter-2",
        "t.control.A": "shared",
    }


def test_with_one_shared_key_it_signs_everything(tmp_path: Path) -> None:
    config = _config(tmp_path, keyed=())
    for service in SIGNING:
        ring = Keyring.from_config(config, service=service)
        assert ring.signer is not None and ring.signer.key_id == "shared"
        assert ring.may_sign("shared", "t.plan.A")


def test_bad_service_keys_are_refused(tmp_path: Path) -> None:
    key = {"id": "a-1", "secret": {"file": "secrets/bus"}}
    agent = _config(tmp_path, service_keys={"agent": [key]})
    with pytest.raises(ConfigError, match="not a service that signs"):
        Keyring.from_config(agent)
    for bad, why in (
        ({"collector": []}, "lists no key"),
        ({"collector": [key], "targeter": [key]}, "must be unique: a-1"),
        ({"collector": [key | {"id": "shared"}]}, "must be unique: shared"),
        ({"collector": [key | {"id": "client:x"}]}, "reserved"),
    ):
        with pytest.raises(ConfigError, match=why):
            _config(tmp_path, service_keys=bad)


def test_kind_of_a_subject() -> None:
    assert kind_of("aaa.plan.A") == "plan"
    assert kind_of("a.b.status.nas-01") == "status"
    assert kind_of("nothing") == ""


def test_a_rotation_accepts_the_new_key_before_it_signs_and_retires_the_old_after(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets").mkdir()
    for name in ("evaluator-old", "evaluator-new"):
        (tmp_path / "secrets" / name).write_text(f"{name}\n")
    old = {"id": "ev-old", "secret": {"file": "secrets/evaluator-old"}}
    new = {"id": "ev-new", "secret": {"file": "secrets/evaluator-new"}}
    steps = ([old], [old, new], [new, old], [new])
    seen = []
    for keys in steps:
        config = _config(tmp_path, service_keys={"evaluator": keys})
        signer = Keyring.from_config(config, service="evaluator").signer
        verifier = Keyring.from_config(config, service="targeter")
        assert signer is not None
        seen.append((signer.key_id, sorted(verifier.bus_keys)))
    # the targeter verifies the new key one step before the evaluator signs with it,
    # and the old one for one step after
    assert seen == [
        ("ev-old", ["ev-old", "shared"]),
        ("ev-old", ["ev-new", "ev-old", "shared"]),
        ("ev-new", ["ev-new", "ev-old", "shared"]),
        ("ev-new", ["ev-new", "shared"]),
    ]
