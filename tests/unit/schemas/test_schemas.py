"""The wire contract: codec, signing, replay guard and the checked-in JSON Schemas."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import codec
from schemas.events import (
    FailoverNotice,
    Incident,
    MetricsSample,
    ServiceCheck,
    deficit,
)
from schemas.jsonschema import JSON_DIR, event_schemas, stale_schemas, write_schemas
from schemas.signing import (
    Rejected,
    ReplayGuard,
    client_authenticator,
    sign_headers,
    signature,
    verify,
    verify_client_authenticator,
)
from schemas.subjects import Subjects
from services.launch.cli import main


def test_checked_in_json_schemas_are_current() -> None:
    assert stale_schemas(JSON_DIR) == [], "schemas/json is stale: run `aaa-failover schema`"


def test_descriptions_are_docstrings_without_their_indentation() -> None:
    text = event_schemas()["metrics.sample.json"]
    description = json.loads(text)["$defs"]["MetricsSample"]["description"]
    assert description.startswith("What the collector read of one server in one interval.\n\n")
    assert "\n " not in description


def test_a_description_laid_out_anew_is_not_stale(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    path = tmp_path / "metrics.sample.json"
    schema = json.loads(path.read_text())
    old = schema["$defs"]["MetricsSample"]["description"]
    # as msgspec before 0.23 wrote it: the docstring's indentation kept
    schema["$defs"]["MetricsSample"]["description"] = old.replace("\n", "\n    ")
    path.write_text(json.dumps(schema))
    assert stale_schemas(tmp_path) == []


def test_a_changed_event_is_stale_until_its_schema_is_written(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    for name, change in [
        ("ack.json", lambda s: s["$defs"]["Ack"]["properties"].pop("reason")),
        ("ack.json", lambda s: s["$defs"]["Ack"]["properties"]["now_on"].update(default="A")),
        ("incident.json", lambda s: s["$defs"]["Incident"]["required"].remove("health")),
        ("incident.json", lambda s: s["$defs"]["Incident"].update(description="Other words.")),
    ]:
        path = tmp_path / name
        schema = json.loads(path.read_text())
        change(schema)
        path.write_text(json.dumps(schema))
        assert stale_schemas(tmp_path) == [name]
        write_schemas(tmp_path)
    (tmp_path / "ack.json").unlink()
    (tmp_path / "gone.event.json").write_text("{}")
    (tmp_path / "incident.json").write_text("{not json")
    assert stale_schemas(tmp_path) == ["ack.json", "gone.event.json", "incident.json"]
    write_schemas(tmp_path)
    assert stale_schemas(tmp_path) == []


def test_schema_check_names_the_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "--out", str(tmp_path), "--check"]) == 1
    assert "stale:" in capsys.readouterr().out
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert main(["schema", "--out", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_every_codec_round_trips_a_tagged_event(name: codec.CodecName) -> None:
    sample = MetricsSample(
        server="A",
        seq=4,
        status_ok=True,
        threads_active=3,
        services=[ServiceCheck(name="db", kind="mandatory", ok=False, detail="refused")],
    )
    payload = codec.encode(sample, name)
    assert codec.decode(payload, codec.content_type(name)) == sample


def test_json_payload_names_its_type_for_outside_tools() -> None:
    payload = codec.encode(
        Incident(incident_id="i", server="A", state="opened", health=0.1, opened_at=1.0)
    )
    assert b'"type":"incident"' in payload


def test_old_readers_accept_new_fields() -> None:
    payload = codec.encode(
        Incident(incident_id="i", server="A", state="opened", health=0.1, opened_at=1.0)
    )
    newer = payload[:-1] + b',"added_later":42}'
    assert codec.decode(newer).server == "A"  # type: ignore[union-attr]


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(b'{"type":"no.such.event"}')
    with pytest.raises(codec.DecodeError):
        codec.decode(b"\x00", "application/cbor")


def test_signature_covers_every_byte_and_the_subject() -> None:
    payload = b'{"type":"incident"}'
    headers = sign_headers("k1", b"secret", "aaa.incident.A", payload)
    assert verify({"k1": b"secret"}, headers, "aaa.incident.A", payload) == "k1"
    for i in range(len(payload)):
        tampered = payload[:i] + bytes([payload[i] ^ 1]) + payload[i + 1 :]
        with pytest.raises(Rejected, match="bad-signature"):
            verify({"k1": b"secret"}, headers, "aaa.incident.A", tampered)
    # the same bytes on another subject: another prefix, kind or server
    for elsewhere in ("sbx.incident.A", "aaa.health.A", "aaa.incident.B", "aaa.incident.A2"):
        with pytest.raises(Rejected, match="bad-signature"):
            verify({"k1": b"secret"}, headers, elsewhere, payload)


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
def test_signature_is_hmac_sha256_of_subject_newline_payload(key_len: int) -> None:
    """Each key's padded states are kept and copied per message: the digest is still the
    standard HMAC-SHA256, for keys shorter and longer than SHA-256's block, every time."""
    key = bytes(range(256))[:key_len]
    for n, payload in enumerate([b"", b"x", b"y" * 5000]):
        subject = f"aaa.health.s{n}"
        expected = hmac.new(key, f"{subject}\n".encode() + payload, hashlib.sha256).hexdigest()
        for _ in range(2):
            assert signature(key, subject, payload) == expected
    assert signature(key + b"!", "aaa.health.s0", b"") != signature(key, "aaa.health.s0", b"")


def test_key_rotation_accepts_old_and_new_key_ids() -> None:
    keys = {"k1": b"old", "k2": b"new"}
    for key_id in keys:
        headers = sign_headers(key_id, keys[key_id], "s", b"x")
        assert verify(keys, headers, "s", b"x") == key_id


def test_replay_guard_window_and_ids() -> None:
    guard = ReplayGuard(window_s=10)
    guard.check("a", event_time=100, now=105)
    with pytest.raises(Rejected, match="replayed"):
        guard.check("a", event_time=100, now=106)
    with pytest.raises(Rejected, match="stale"):
        guard.check("b", event_time=100, now=111)
    with pytest.raises(Rejected, match="future"):
        guard.check("c", event_time=200, now=100)
    # an id is forgotten only once no event carrying it could pass the window
    guard.check("d", event_time=1000, now=1000)
    with pytest.raises(Rejected, match="stale"):
        guard.check("a", event_time=100, now=1000)


def test_a_flood_of_new_ids_cannot_make_a_seen_event_acceptable_again() -> None:
    """Finding: any key holder could flush the seen-id cache with new ids, then replay."""
    guard = ReplayGuard(window_s=30, max_ids=100)
    guard.check("genuine", event_time=1000.0, now=1000.0)
    for i in range(500):  # five times the cap, all within the window
        guard.check(f"flood-{i}", event_time=1000.0 + i / 100, now=1001.0)
    assert "genuine" not in guard._seen  # pushed out by the cap...
    with pytest.raises(Rejected, match="stale"):  # ...yet its replay is still refused
        guard.check("genuine", event_time=1000.0, now=1002.0)
    # what is stamped after every forgotten id still passes
    guard.check("later", event_time=1006.0, now=1006.0)
    assert len(guard._seen) <= 100


def test_a_guard_since_a_start_refuses_what_was_stamped_before_it() -> None:
    """Finding: a restarted service forgot the ids it had seen within the window."""
    guard = ReplayGuard(window_s=30, since=1000.0)
    with pytest.raises(Rejected, match="stale"):
        guard.check("seen-before-the-restart", event_time=999.5, now=1001.0)
    guard.check("new", event_time=1000.5, now=1001.0)
    # a sandbox replays recorded events: no floor there
    sandbox = ReplayGuard(window_s=30, check_time=False, since=1000.0)
    sandbox.check("recorded", event_time=10.0, now=1001.0)


@given(
    secret=st.binary(min_size=1, max_size=32),
    body=st.binary(max_size=64),
    other=st.sampled_from(["127.0.0.12", "10.0.0.1"]),
)
def test_client_authenticator_binds_secret_ips_and_body(
    secret: bytes, body: bytes, other: str
) -> None:
    auth = client_authenticator(secret, "127.0.0.11", "127.0.1.1", body)
    verify_client_authenticator(secret, "127.0.0.11", "127.0.1.1", body, auth)
    with pytest.raises(Rejected):
        verify_client_authenticator(secret, other, "127.0.1.1", body, auth)
    with pytest.raises(Rejected):
        verify_client_authenticator(secret, "127.0.0.11", other, body, auth)
    with pytest.raises(Rejected):
        verify_client_authenticator(secret + b"x", "127.0.0.11", "127.0.1.1", body, auth)
    with pytest.raises(Rejected):
        verify_client_authenticator(secret, "127.0.0.11", "127.0.1.1", body + b"x", auth)


def test_legacy_authenticator_is_a_different_opt_in_form() -> None:
    modern = client_authenticator(b"s", "1.1.1.1", "2.2.2.2", b"n")
    legacy = client_authenticator(b"s", "1.1.1.1", "2.2.2.2", b"n", legacy=True)
    assert modern != legacy
    verify_client_authenticator(b"s", "1.1.1.1", "2.2.2.2", b"n", legacy, legacy=True)
    with pytest.raises(Rejected):
        verify_client_authenticator(b"s", "1.1.1.1", "2.2.2.2", b"n", legacy)


def test_subjects_refuse_tokens_that_would_break_routing() -> None:
    subjects = Subjects("aaa")
    assert subjects.notice("nas-01") == "aaa.notice.nas-01"
    assert subjects.metrics("*") == "aaa.metrics.*"
    assert subjects.stream_name() == "AAA"
    for bad in ["a.b", "a b", ">", ""]:
        with pytest.raises(ValueError):
            subjects.notice(bad)


def test_notice_alternates_round_trip() -> None:
    notice = FailoverNotice(
        incident_id="i",
        server="A",
        client="nas-01",
        alternates=["B"],
        seq=1,
        valid_until=2.0,
    )
    assert codec.decode(codec.encode(notice, "msgpack"), codec.MSGPACK_TYPE) == notice


def test_deficit_is_the_share_below_the_failover_threshold() -> None:
    # what the evaluator reports and the targeter plans by
    assert deficit(0.1, 0.2) == pytest.approx(0.5)
    assert deficit(0.0, 0.2) == 1.0
    assert deficit(0.2, 0.2) == 0.0
    assert deficit(0.9, 0.2) == 0.0
    assert deficit(0.1, 0.0) == 0.0
