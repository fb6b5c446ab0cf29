"""Credentials and TLS for the bus, from files only; URLs with a password refused."""

from __future__ import annotations

import ssl
from pathlib import Path

import msgspec
import pytest

from services.launch.devca import expires_within, make_dev_ca
from services.runtime import busauth
from services.runtime.config import BusConfig, ConfigError, parse_config


def bus(text: str, base_dir: Path) -> BusConfig:
    return parse_config(f"[bus]\n{text}\n", base_dir).bus


def test_a_url_with_a_user_or_password_is_refused(tmp_path: Path) -> None:
    for url in ("nats://collector:s3cret@127.0.0.1:4222", "tls://token@host:4222"):
        with pytest.raises(ConfigError, match="must not hold a user or password"):
            bus(f'url = "{url}"', tmp_path)
    with pytest.raises(ConfigError, match="does not go in the URL") as refused:
        busauth.check_url("nats://collector:s3cret@127.0.0.1:4222")
    assert "s3cret" not in str(refused.value)
    assert busauth.check_url("tls://127.0.0.1:4222") == "tls://127.0.0.1:4222"
    assert busauth.redact("nats://u:p@h:1/x") == "nats://h:1/x"


def test_passwords_come_from_the_users_files(tmp_path: Path) -> None:
    made = busauth.write_passwords(tmp_path / "nats", ["collector", "agent-1"])
    assert made == ["collector", "agent-1"]
    assert busauth.write_passwords(tmp_path / "nats", ["collector"]) == []  # kept
    assert (tmp_path / "nats").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "nats" / "collector").stat().st_mode & 0o777 == 0o600
    config = bus('auth = { dir = "nats" }', tmp_path)
    login = busauth.credentials(config, "collector")
    assert login is not None and login.user == "collector"
    assert login.password == (tmp_path / "nats" / "collector").read_text().strip()
    with pytest.raises(ConfigError, match="password of user 'evaluator'"):
        busauth.credentials(config, "evaluator")
    override = bus('auth = { dir = "nats", user = "agent-1" }', tmp_path)
    assert busauth.credentials(override, "agent") == (
        "agent-1",
        (tmp_path / "nats" / "agent-1").read_text().strip(),
        False,
    )


def test_the_embedded_bus_has_its_credentials_beside_the_config(tmp_path: Path) -> None:
    config = bus("", tmp_path)
    assert busauth.credentials(config, "collector") is None  # no `up` made any yet
    assert busauth.ssl_context(config) is None
    busauth.write_passwords(tmp_path / ".nats" / "auth", ["collector"])
    make_dev_ca(tmp_path / ".nats" / "tls")
    login = busauth.credentials(config, "collector")
    assert login is not None and login.user == "collector" and login.embedded
    assert isinstance(busauth.ssl_context(config), ssl.SSLContext)
    # a bus of its own (bus.url) never gets the embedded bus's passwords
    elsewhere = msgspec.structs.replace(config, url="tls://10.0.0.1:4222")
    assert busauth.credentials(elsewhere, "collector") is None
    assert busauth.ssl_context(elsewhere) is None


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both `cert` and `key`"):
        bus('tls = { ca = "ca.pem", cert = "c.pem" }', tmp_path)
    with pytest.raises(ConfigError, match=r"bus\.tls"):
        busauth.ssl_context(bus('tls = { ca = "missing.pem" }', tmp_path))
    with pytest.raises(ConfigError, match="must be 1-64"):
        bus('auth = { dir = "nats", user = "a b" }', tmp_path)


def test_dev_ca_makes_a_chain_that_verifies(tmp_path: Path) -> None:
    paths = make_dev_ca(tmp_path / "tls", names=["nats.example"], days=30)
    assert [p.name for p in paths] == [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ]
    for key in ("server-key.pem", "client-key.pem"):
        assert (tmp_path / "tls" / key).stat().st_mode & 0o777 == 0o600
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(paths[0]))
    server.load_cert_chain(str(paths[1]), str(paths[2]))
    client = ssl.create_default_context(cafile=str(paths[0]))
    client.load_cert_chain(str(paths[3]), str(paths[4]))
    assert not expires_within(paths[1], days=7)
    assert expires_within(paths[1], days=31)
    with pytest.raises(FileExistsError):
        make_dev_ca(tmp_path / "tls")
