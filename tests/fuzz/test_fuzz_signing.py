"""The bus's verification (Bus.check: signature, decoding, replay guard), a notice's
(verify_notice) and the tools' (checked, and the lines they print) under random and
malformed headers and payloads: a Rejected with a known reason or a verified event, and no
state change from what is rejected (the replay guard remembers no id of it)."""

from __future__ import annotations

import re
import time
from typing import Any

from nats.aio.msg import Msg

from schemas import codec
from schemas.events import EVENT_TYPES, Event, FailoverNotice, ReadmitNotice
from schemas.signing import (
    KEY_HEADER,
    SIG_HEADER,
    Rejected,
    client_authenticator,
    client_key_id,
    sign_headers,
)
from schemas.subjects import Subjects
from services.agent.receive import verify_notice
from services.runtime.bus import Bus, Keyring, Signer, verify_event
from services.runtime.config import ClientConfig, Secret, ServerConfig
from services.tools.tail import checked, format_line, json_line
from tests.fuzz.conftest import Fuzz
from tests.support.fuzzing import (
    header_value,
    mutate,
    nested,
    perturb,
    random_bytes,
    random_text,
    to_json,
    to_msgpack,
    value_of,
)

BUS_KEY = b"bus-key-of-the-fuzz-farm"
CLIENT_SECRET = b"secret-of-nas-01"
KEYRING = Keyring(Signer("k1", BUS_KEY), {"k1": BUS_KEY}, {"nas-01": CLIENT_SECRET})
REASON = re.compile(r"[a-z][a-z-]{1,39}")
"""A drop reason: a short counter label. The bus's checks grow (wrong-subject, key-not-allowed
came with subject binding and per-service keys), so any such label is taken; the ones every
run must reach are asserted by name."""
SUBJECTS = ("fz.metrics.A", "fz.status.nas-01", "fz.ack.nas-02", "fz.plan.B", "fz.other")
SERVERS = {
    "A": ServerConfig(id="A", ip="127.0.0.11", status_secret=Secret(env="UNUSED")),
    "B": ServerConfig(id="B", ip="127.0.0.12", status_secret=Secret(env="UNUSED")),
}
CLIENT = ClientConfig(id="nas-01", ip="127.0.1.1", secret=Secret(env="UNUSED"), home="A")


def event_payload(fuzz: Fuzz, kind: type[Event], *, msgpack: bool, now: float) -> bytes:
    rng = fuzz.rng
    value = value_of(rng, kind)
    if rng.random() < 0.6:
        value["time"] = now + rng.uniform(-40, 40)
    if rng.random() < 0.3:
        value["client"] = rng.choice(("nas-01", "nas-02"))
    pick = rng.random()
    if pick < 0.2:
        value = perturb(rng, value)
    elif pick < 0.25:
        return nested(rng, "msgpack" if msgpack else "json")
    elif pick < 0.3:
        return random_bytes(rng, 128)
    data = to_msgpack(value) if msgpack else to_json(value)
    return mutate(rng, data) if rng.random() < 0.15 else data


def headers_for(fuzz: Fuzz, subject: str, payload: bytes, msgpack: bool) -> dict[str, str] | None:
    """Headers signing ``payload`` on ``subject`` (under the bus key or the client's, most
    often on that subject), then perhaps spoilt."""
    rng = fuzz.rng
    if rng.random() < 0.05:
        return None
    signed_on = subject if rng.random() < 0.9 else rng.choice(SUBJECTS)
    if rng.random() < 0.7:
        headers = sign_headers("k1", BUS_KEY, signed_on, payload)
    else:
        headers = sign_headers(client_key_id("nas-01"), CLIENT_SECRET, signed_on, payload)
    if msgpack:
        headers[codec.CONTENT_TYPE] = codec.MSGPACK_TYPE
    for _ in range(rng.choice((0, 0, 1, 2))):
        name = rng.choice((KEY_HEADER, SIG_HEADER, codec.CONTENT_TYPE, KEY_HEADER, SIG_HEADER))
        if rng.random() < 0.2:
            headers.pop(name, None)
        else:
            headers[name] = header_value(rng, headers.get(name, "k1"))
    return headers


def test_bus_check_rejects_or_accepts_and_remembers_only_what_it_accepts(fuzz: Fuzz) -> None:
    bus = Bus(None, Subjects("fz"), KEYRING)  # type: ignore[arg-type]  # check needs no connection
    accepted = 0
    reasons: set[str] = set()
    for case in fuzz.cases():
        now = time.time()
        msgpack = fuzz.rng.random() < 0.4
        kind = EVENT_TYPES[case % len(EVENT_TYPES)]
        payload = event_payload(fuzz, kind, msgpack=msgpack, now=now)
        subject = fuzz.rng.choice(SUBJECTS)
        headers = headers_for(fuzz, subject, payload, msgpack)
        msg = Msg(None, subject=subject, data=payload, headers=headers)  # type: ignore[arg-type]
        clients = fuzz.rng.random() < 0.5
        remembered = dict(bus.guard._seen)
        try:
            event = bus.check(msg, clients)
        except Rejected as rejected:
            assert REASON.fullmatch(rejected.reason), rejected
            reasons.add(rejected.reason)
            assert set(bus.guard._seen) <= set(remembered)  # no id of it remembered
            continue
        accepted += 1
        assert isinstance(event, EVENT_TYPES)
        assert event.id in bus.guard._seen
        remembered = dict(bus.guard._seen)
        try:
            second = bus.check(msg, clients)
        except Rejected as again:
            assert again.reason == "replayed"
            assert set(bus.guard._seen) <= set(remembered)
        else:
            # only a payload without an id: each decoding makes a fresh one (the field's
            # default), so the guard cannot tell it again (docs/security-input.md)
            assert second.id != event.id
    assert accepted
    assert {"undecodable", "bad-signature", "stale"} <= reasons


def test_tools_keep_every_message_and_print_a_line_for_it(fuzz: Fuzz) -> None:
    keys = KEYRING.verification_keys(True)
    skipped = 0
    for case in fuzz.cases():
        msgpack = fuzz.rng.random() < 0.4
        kind = EVENT_TYPES[case % len(EVENT_TYPES)]
        payload = event_payload(fuzz, kind, msgpack=msgpack, now=time.time())
        subject = fuzz.rng.choice((*SUBJECTS, "fz." + random_bytes(fuzz.rng, 8).hex()))
        headers = headers_for(fuzz, subject, payload, msgpack)
        msg = Msg(None, subject=subject, data=payload, headers=headers)  # type: ignore[arg-type]
        seen = checked(msg, lambda m: verify_event(keys, m.headers, m.subject, m.data), 1.7e9)
        if not seen.verified:
            skipped += 1
            assert REASON.fullmatch(seen.reason), seen.reason
        assert format_line(seen, "fz")
        assert json_line(seen)
    assert skipped


def notice_payload(fuzz: Fuzz) -> tuple[bytes, str | None]:
    rng = fuzz.rng
    kind: Any = rng.choice((FailoverNotice, ReadmitNotice, rng.choice(EVENT_TYPES)))
    value = value_of(rng, kind)
    if rng.random() < 0.7:
        value["client"] = "nas-01"
        value["server"] = rng.choice(("A", "A", "B"))
    msgpack = rng.random() < 0.3
    content: str | None = codec.MSGPACK_TYPE if msgpack else rng.choice((None, codec.JSON_TYPE))
    pick = rng.random()
    if pick < 0.2:
        value = perturb(rng, value)
    elif pick < 0.25:
        return nested(rng, "msgpack" if msgpack else "json"), content
    data = to_msgpack(value) if msgpack else to_json(value)
    if rng.random() < 0.1:
        data = mutate(rng, data)
    if rng.random() < 0.05:
        content = random_text(rng)
    return data, content


def test_verify_notice_rejects_or_returns_a_notice_for_this_client(fuzz: Fuzz) -> None:
    rng = fuzz.rng
    accepted = 0
    reasons: set[str] = set()
    for _ in fuzz.cases():
        payload, content = notice_payload(fuzz)
        server_id = rng.choice(("A", "A", "B", "Z", random_text(rng)))
        signing_server = SERVERS.get(server_id, SERVERS["A"])
        auth: str | None = client_authenticator(
            CLIENT_SECRET, signing_server.ip, CLIENT.ip, payload, legacy=rng.random() < 0.1
        )
        if rng.random() < 0.3:
            auth = None if rng.random() < 0.1 else header_value(rng, auth)
        try:
            notice = verify_notice(
                CLIENT, CLIENT_SECRET, SERVERS, server_id, payload, auth, content
            )
        except Rejected as rejected:
            assert REASON.fullmatch(rejected.reason), rejected
            reasons.add(rejected.reason)
            continue
        accepted += 1
        assert isinstance(notice, FailoverNotice | ReadmitNotice)
        assert (notice.client, notice.server) == ("nas-01", server_id)
    assert accepted
    assert {"unknown-server", "bad-authenticator", "undecodable"} <= reasons


def test_an_authenticator_header_of_any_text_is_refused_not_raised(fuzz: Fuzz) -> None:
    notice = FailoverNotice(
        incident_id="i", server="A", client="nas-01", alternates=["B"], seq=1, valid_until=2e9
    )
    payload = codec.encode(notice)
    good = client_authenticator(CLIENT_SECRET, "127.0.0.11", CLIENT.ip, payload)
    for _ in fuzz.cases():
        auth = header_value(fuzz.rng, good)
        try:
            verify_notice(CLIENT, CLIENT_SECRET, SERVERS, "A", payload, auth, None)
        except Rejected as rejected:
            assert rejected.reason in {"unsigned", "bad-authenticator"}
        else:
            assert auth == good
