"""verify_notice alone: what a client accepts as a notice, whatever transport carried it."""

from __future__ import annotations

import pytest

from schemas import codec
from schemas.events import Ack, FailoverNotice, ReadmitNotice
from schemas.signing import Rejected, client_authenticator
from services.agent.receive import verify_notice
from services.runtime.config import ClientConfig, Secret, ServerConfig

SECRET = b"client-secret"
SERVERS = {
    "A": ServerConfig(id="A", ip="127.0.0.11", status_secret=Secret(env="UNUSED")),
    "B": ServerConfig(id="B", ip="127.0.0.12", status_secret=Secret(env="UNUSED")),
}
CLIENT = ClientConfig(id="nas-01", ip="127.0.1.1", secret=Secret(env="UNUSED"), home="A")
LEGACY = ClientConfig(
    id="nas-01",
    ip="127.0.1.1",
    secret=Secret(env="UNUSED"),
    home="A",
    legacy_authenticator=True,
)


def failover(server: str = "A", client: str = "nas-01") -> FailoverNotice:
    return FailoverNotice(
        incident_id="inc-1",
        server=server,
        client=client,
        alternates=["B"],
        seq=1,
        valid_until=2e9,
    )


def signed(
    payload: bytes, server: str = "A", *, secret: bytes = SECRET, legacy: bool = False
) -> str:
    return client_authenticator(secret, SERVERS[server].ip, CLIENT.ip, payload, legacy=legacy)


def test_an_authentic_notice_is_decoded_in_either_encoding() -> None:
    notice = failover()
    names: tuple[codec.CodecName, ...] = ("json", "msgpack")
    for name in names:
        payload = codec.encode(notice, name)
        content = codec.content_type(name)
        assert verify_notice(CLIENT, SECRET, SERVERS, "A", payload, signed(payload), content) == (
            notice
        )
    readmit = ReadmitNotice(
        incident_id="inc-1",
        server="A",
        client="nas-01",
        seq=2,
        valid_until=2e9,
    )
    payload = codec.encode(readmit)
    assert verify_notice(CLIENT, SECRET, SERVERS, "A", payload, signed(payload), None) == readmit


def test_the_legacy_authenticator_only_for_a_client_configured_for_it() -> None:
    payload = codec.encode(failover())
    legacy = signed(payload, legacy=True)
    assert verify_notice(LEGACY, SECRET, SERVERS, "A", payload, legacy, None).server == "A"
    with pytest.raises(Rejected) as rejected:
        verify_notice(CLIENT, SECRET, SERVERS, "A", payload, legacy, None)
    assert rejected.value.reason == "bad-authenticator"


@pytest.mark.parametrize(
    ("server_id", "authenticator", "reason"),
    [
        ("Z", "good", "unknown-server"),
        ("A", None, "unsigned"),
        ("A", "", "unsigned"),
        ("A", "wrong-secret", "bad-authenticator"),
        ("A", "other-server-ip", "bad-authenticator"),
        ("B", "good", "bad-authenticator"),  # signed between A and the client, not B
    ],
)
def test_what_is_not_authentic_is_rejected_before_decoding(
    server_id: str, authenticator: str | None, reason: str
) -> None:
    payload = codec.encode(failover())
    chosen = {
        "good": signed(payload),
        "wrong-secret": signed(payload, secret=b"not-the-secret"),
        "other-server-ip": signed(payload, "B"),
    }.get(authenticator or "", authenticator)
    with pytest.raises(Rejected) as rejected:
        verify_notice(CLIENT, SECRET, SERVERS, server_id, payload, chosen, None)
    assert rejected.value.reason == reason


def test_a_tampered_notice_is_rejected() -> None:
    payload = codec.encode(failover())
    auth = signed(payload)
    tampered = payload.replace(b'["B"]', b'["C"]')
    assert tampered != payload
    with pytest.raises(Rejected) as rejected:
        verify_notice(CLIENT, SECRET, SERVERS, "A", tampered, auth, None)
    assert rejected.value.reason == "bad-authenticator"


@pytest.mark.parametrize(
    ("payload", "content_type", "reason"),
    [
        (b"not json", None, "undecodable"),
        (codec.encode(failover()), "text/plain", "undecodable"),
        (
            codec.encode(Ack(notice_id="n", client="nas-01", server="A", accepted=True)),
            None,
            "unexpected-type",
        ),
        (codec.encode(failover(server="B")), None, "server-mismatch"),
        (codec.encode(failover(client="nas-02")), None, "client-mismatch"),
    ],
)
def test_an_authentic_payload_must_be_a_notice_of_that_server_for_this_client(
    payload: bytes, content_type: str | None, reason: str
) -> None:
    with pytest.raises(Rejected) as rejected:
        verify_notice(CLIENT, SECRET, SERVERS, "A", payload, signed(payload), content_type)
    assert rejected.value.reason == reason
