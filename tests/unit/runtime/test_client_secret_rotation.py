"""A client's secret rotating: ``verify_secrets`` verify everywhere the secret does, never sign.

The pure parts: the bus signature of what a client signs, the notice
authenticator, a CoA-Request's authenticators (and the answer's), the keyring
each service holds and what each service reads (services/launch/reads.py,
checked against each service's own run as tests/unit/launch/test_reads.py
does). The rotation end to end, on a real bus: tests/bus/test_client_secret_rotation.py.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import codec
from schemas.events import ClientStatus, FailoverNotice
from schemas.signing import (
    Rejected,
    client_authenticator,
    client_key_id,
    sign_headers,
    verify,
    verify_client_authenticator,
)
from services.agent.coa import CoaListener
from services.agent.receive import verify_notice
from services.launch import reads
from services.launch.farm import write_farm
from services.radius.notice import NoticeMessage, coa_request
from services.radius.packet import dictionary, verified_reply
from services.runtime.bus import verify_event
from services.runtime.config import Config, ConfigError, Secret, load_config
from services.runtime.keyring import Keyring
from tests.unit.launch.test_reads import _files, _what_run_reads

OLD, NEW, STRANGER = b"old-secret-0123456789", b"new-secret-0123456789", b"not-one-of-them"
SUBJECT = "aaa.status.nas-01"


def _rotating(tmp_path: Path, secret: str, verify: list[str]) -> Config:
    """A farm whose nas-01 signs with ``secret`` and also verifies under ``verify``
    (each a file holding that text, under the farm's secrets/)."""
    config, _ = write_farm(tmp_path / "farm", bus_url="tls://127.0.0.1:1")
    for name in {secret, *verify}:
        (tmp_path / "farm" / "secrets" / name).write_text(name + "\n")
    clients = [
        msgspec.structs.replace(
            c,
            secret=Secret(file=f"secrets/{secret}"),
            verify_secrets=[Secret(file=f"secrets/{v}") for v in verify],
        )
        if c.id == "nas-01"
        else c
        for c in config.clients
    ]
    return msgspec.structs.replace(config, clients=clients)


# --- the bus signature of a client's events ---------------------------------


def test_a_key_id_with_several_keys_verifies_under_each_and_under_no_other() -> None:
    payload = b'{"type":"client.status"}'
    keys = {client_key_id("nas-01"): (NEW, OLD), "k1": b"bus-key"}
    for secret in (NEW, OLD):
        headers = sign_headers(client_key_id("nas-01"), secret, SUBJECT, payload)
        assert verify(keys, headers, SUBJECT, payload) == "client:nas-01"
    forged = sign_headers(client_key_id("nas-01"), STRANGER, SUBJECT, payload)
    with pytest.raises(Rejected) as refused:
        verify(keys, forged, SUBJECT, payload)
    assert refused.value.reason == "bad-signature"
    # under either secret, the signature still binds the subject and every byte
    good = sign_headers(client_key_id("nas-01"), OLD, SUBJECT, payload)
    for subject, body in (("aaa.status.nas-02", payload), (SUBJECT, payload + b" ")):
        with pytest.raises(Rejected):
            verify(keys, good, subject, body)
    # a single key as it always was
    bus = sign_headers("k1", b"bus-key", SUBJECT, payload)
    assert verify(keys, bus, SUBJECT, payload) == "k1"
    with pytest.raises(Rejected):
        verify(keys, sign_headers("k1", OLD, SUBJECT, payload), SUBJECT, payload)


def test_the_keyring_verifies_a_rotating_clients_events_under_each_secret(
    tmp_path: Path,
) -> None:
    config = _rotating(tmp_path, "new", ["old"])
    for service in ("evaluator", "targeter", "readmitter", "notifier", None):
        keyring = Keyring.from_config(config, service=service)
        keys = keyring.verification_keys(True)
        assert keys[client_key_id("nas-01")] == (b"new", b"old"), service
        # a client with one secret keeps one key, checked as a bus key is
        assert isinstance(keys[client_key_id("nas-02")], bytes), service
        assert keyring.client_keys["nas-01"] == b"new"
        status = ClientStatus(client="nas-01", current="A", home="A")
        for secret in (b"new", b"old"):
            payload = codec.encode(status)
            headers = sign_headers(client_key_id("nas-01"), secret, SUBJECT, payload)
            assert verify_event(keys, headers, SUBJECT, payload, keyring.may_sign) == status
        payload = codec.encode(status)
        headers = sign_headers(client_key_id("nas-01"), STRANGER, SUBJECT, payload)
        with pytest.raises(Rejected) as refused:
            verify_event(keys, headers, SUBJECT, payload, keyring.may_sign)
        assert refused.value.reason == "bad-signature"
    # a service that takes nothing clients sign holds none of their secrets
    collector = Keyring.from_config(config, service="collector")
    assert collector.client_keys == {} and collector.client_verify_keys == {}


def test_a_sandbox_keyring_keeps_the_clients_verify_secrets(tmp_path: Path) -> None:
    config = _rotating(tmp_path, "new", ["old"])
    sandbox = Keyring.from_config(config).for_sandbox("sbx")
    assert sandbox.verification_keys(True)[client_key_id("nas-01")] == (b"new", b"old")


# --- the notice authenticator -----------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_a_notice_authenticator_verifies_under_any_of_the_clients_secrets(legacy: bool) -> None:
    body = b'{"type":"notice.failover"}'
    for secret in (NEW, OLD):
        auth = client_authenticator(secret, "10.0.0.1", "10.0.1.1", body, legacy=legacy)
        assert (
            verify_client_authenticator(
                (NEW, OLD), "10.0.0.1", "10.0.1.1", body, auth, legacy=legacy
            )
            == secret
        )
    forged = client_authenticator(STRANGER, "10.0.0.1", "10.0.1.1", body, legacy=legacy)
    with pytest.raises(Rejected) as refused:
        verify_client_authenticator((NEW, OLD), "10.0.0.1", "10.0.1.1", body, forged)
    assert refused.value.reason == "bad-authenticator"
    with pytest.raises(Rejected) as refused:
        verify_client_authenticator((NEW, OLD), "10.0.0.1", "10.0.1.1", body, None)
    assert refused.value.reason == "unsigned"


def test_verify_notice_takes_the_clients_secrets(tmp_path: Path) -> None:
    config = _rotating(tmp_path, "new", ["old"])
    client = config.client("nas-01")
    servers = {s.id: s for s in config.servers}
    notice = FailoverNotice(
        incident_id="i",
        server="A",
        client="nas-01",
        alternates=["B"],
        seq=1,
        valid_until=time.time() + 60,
    )
    payload = codec.encode(notice)
    for secret in (b"new", b"old"):
        auth = client_authenticator(secret, servers["A"].ip, client.ip, payload)
        got = verify_notice(client, (b"new", b"old"), servers, "A", payload, auth, None)
        assert got == notice
    auth = client_authenticator(STRANGER, servers["A"].ip, client.ip, payload)
    with pytest.raises(Rejected):
        verify_notice(client, (b"new", b"old"), servers, "A", payload, auth, None)


# --- a CoA-Request's authenticators -----------------------------------------


async def _nothing(*_: Any) -> bool:
    return True


def _request(secret: bytes) -> Any:
    message = NoticeMessage(server="A", payload=b"{}", authenticator="ab" * 32)
    return coa_request(message, secret, dictionary(), now=time.time())


@pytest.mark.parametrize("signed_with", [NEW, OLD])
def test_the_coa_listener_authenticates_under_any_secret_and_answers_under_that_one(
    signed_with: bytes,
) -> None:
    listener = CoaListener("127.0.0.1", 0, (NEW, OLD), _nothing)
    request = _request(signed_with)
    raw = request.RequestPacket()
    authentic = listener._authentic(raw, ("127.0.0.1", 1))
    assert authentic is not None and authentic.secret == signed_with
    answer = listener._reply(authentic, None)
    # the sender, which holds only the secret it signed with, verifies the answer
    assert verified_reply(request, answer) is not None
    assert listener.counters["bad-authenticator"] == 0


def test_the_coa_listener_discards_a_request_under_neither_secret() -> None:
    listener = CoaListener("127.0.0.1", 0, (NEW, OLD), _nothing)
    raw = _request(STRANGER).RequestPacket()
    assert listener._authentic(raw, ("127.0.0.1", 1)) is None
    assert listener.counters["bad-authenticator"] == 1


def test_the_coa_listener_checks_the_message_authenticator_under_the_secret_that_verified() -> None:
    listener = CoaListener("127.0.0.1", 0, (NEW, OLD), _nothing)
    # a request whose Message-Authenticator is NEW's and whose Request Authenticator is
    # made again under OLD: each secret verifies one of the two, neither both
    mixed = _request(NEW).RequestPacket()
    body = mixed[:4] + b"\x00" * 16 + mixed[20:]
    mixed = mixed[:4] + hashlib.md5(body + OLD).digest() + mixed[20:]
    assert listener._authentic(mixed, ("127.0.0.1", 1)) is None
    assert listener.counters["bad-authenticator"] == 1


# --- the config and what each service reads ---------------------------------


def test_verify_secrets_load_from_the_config_and_default_to_none(tmp_path: Path) -> None:
    config, path = write_farm(tmp_path / "farm", bus_url="tls://127.0.0.1:1")
    assert all(c.verify_secrets == [] for c in config.clients)
    text = path.read_text()
    assert 'id = "nas-01"' in text
    text = text.replace(
        'id = "nas-01"\n', 'id = "nas-01"\nverify_secrets = [{ file = "secrets/old" }]\n', 1
    )
    path.write_text(text)
    assert load_config(path).client("nas-01").verify_secrets == [Secret(file="secrets/old")]
    path.write_text(text.replace("verify_secrets = [{", "verify_secret = [{"))
    with pytest.raises(ConfigError, match="verify_secret"):
        load_config(path)


@pytest.mark.parametrize(
    ("service", "only", "reads_it"),
    [
        ("agent", ["nas-01"], True),
        ("agent", ["nas-02"], False),
        ("evaluator", [], True),
        ("targeter", [], True),
        ("readmitter", [], True),
        ("notifier", [], True),
        ("collector", [], False),
        ("aaa", ["A"], False),
    ],
)
def test_the_services_that_verify_a_clients_secret_read_its_verify_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, service: str, only: list[str], reads_it: bool
) -> None:
    config = _rotating(tmp_path, "new", ["old"])
    expected = reads.secrets_read(config, service, only)
    assert _files(_what_run_reads(monkeypatch, config, service, only)) == _files(expected)
    assert ("secrets/old" in _files(expected)) == reads_it
