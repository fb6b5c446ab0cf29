"""Each NATS user's permissions, derived from the subject scheme and the registry."""

from __future__ import annotations

import json

import pytest

from schemas.subjects import Subjects
from services.launch import registry
from services.runtime.natsserver import ServerUser, server_config
from services.runtime.permissions import (
    AGENT,
    HARNESS,
    SANDBOX,
    TOOLS,
    USES,
    Client,
    Permissions,
    agent_user_for,
    user_for,
    users,
)

CLIENTS = [Client("nas-01", "A"), Client("nas-02", "B"), Client("nas-03", "A")]
S = Subjects("aaa")


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(perms: Permissions, subject: str, *, publish: bool = True) -> bool:
    allow = perms.publish if publish else perms.subscribe
    deny = perms.publish_deny if publish else perms.subscribe_deny
    if allow is None:
        return True
    return any(matches(a, subject) for a in allow) and not any(matches(d, subject) for d in deny)


def test_matches_follows_nats_wildcards() -> None:
    assert matches("aaa.plan.*", "aaa.plan.A")
    assert not matches("aaa.plan.*", "aaa.plan.A.x")
    assert matches("aaa.>", "aaa.plan.A")
    assert not matches("aaa.>", "aaa")
    assert not matches("aaa.plan.A", "aaa.plan.B")


def test_every_service_of_the_registry_has_its_use_of_the_bus() -> None:
    assert set(USES) == set(registry.NAMES)
    assert all(s.bus is USES[s.name] for s in registry.SERVICES)


def test_the_users_are_the_services_an_agent_the_tools_the_sandbox_and_the_harness() -> None:
    got = users("aaa", CLIENTS)
    assert set(got) == set(USES) | {TOOLS, SANDBOX, HARNESS}


def test_the_agent_has_its_clients_subjects_and_no_jetstream() -> None:
    perms = users("aaa", CLIENTS[:2])[AGENT]
    assert perms.publish is not None and perms.subscribe is not None
    assert set(perms.subscribe) == {"aaa.notice.nas-01", "aaa.notice.nas-02"}
    assert set(perms.publish) == {
        "aaa.ack.nas-01",
        "aaa.ack.nas-02",
        "aaa.status.nas-01",
        "aaa.status.nas-02",
        "aaa.request.A",
        "aaa.request.B",
    }
    for forbidden in (S.plan("A"), S.health("A"), S.notice("nas-01"), S.ack("nas-03")):
        assert not allowed(perms, forbidden), forbidden
    for forbidden in ("aaa.>", S.notice("nas-03"), "$JS.API.>", "_INBOX.>"):
        assert not allowed(perms, forbidden, publish=False), forbidden
    assert not any(p.startswith(("$JS", "$KV")) for p in perms.publish)


def test_agent_users_split_the_clients_and_each_has_only_its_own() -> None:
    got = users("aaa", CLIENTS, {"site-1": ["nas-01"], "site-2": ["nas-02", "nas-03"]})
    assert AGENT not in got
    one, two = got["site-1"], got["site-2"]
    assert allowed(one, S.ack("nas-01")) and not allowed(one, S.ack("nas-02"))
    assert allowed(two, S.status("nas-03")) and allowed(two, S.request("B"))
    assert not allowed(one, S.request("B"))
    assert agent_user_for({"site-1": ["nas-01"], "site-2": ["nas-02", "nas-03"]}, ["nas-03"]) == (
        "site-2"
    )
    assert agent_user_for(None, ["nas-01", "nas-02"]) == AGENT
    with pytest.raises(ValueError, match="no agent user"):
        agent_user_for({"site-1": ["nas-01"]}, ["nas-01", "nas-02"])
    with pytest.raises(ValueError, match="unknown clients"):
        users("aaa", CLIENTS, {"site-9": ["nas-99"]})


@pytest.mark.parametrize(
    ("service", "may", "may_not"),
    [
        ("collector", [S.metrics("A")], [S.incident("A"), S.health("A"), S.plan("A")]),
        ("evaluator", [S.health("A"), S.incident("A")], [S.plan("A"), S.metrics("A")]),
        ("targeter", [S.plan("A")], [S.notice("nas-01"), S.incident("A")]),
        ("notifier", [S.notice("nas-01"), S.delivery("nas-01")], [S.plan("A"), S.ack("nas-01")]),
        ("readmitter", [S.readmit("A")], [S.plan("A"), S.request("A")]),
        ("aaa", [], [S.metrics("A"), S.control("A")]),
    ],
)
def test_each_service_publishes_its_own_kinds_only(
    service: str, may: list[str], may_not: list[str]
) -> None:
    perms = users("aaa", CLIENTS)[service]
    for subject in may:
        assert allowed(perms, subject), subject
    for subject in may_not:
        assert not allowed(perms, subject), subject


def test_each_service_subscribes_to_its_own_kinds_only() -> None:
    got = users("aaa", CLIENTS)
    for name, use in USES.items():
        if name == AGENT:
            continue
        perms = got[name]
        for kind in ("metrics", "health", "incident", "plan", "readmit", "request", "control"):
            assert allowed(perms, f"aaa.{kind}.A", publish=False) == (kind in use.subscribes)
        assert not allowed(perms, "aaa.>", publish=False)


def test_a_stateful_service_has_the_jetstream_api_of_its_own_stream_and_buckets_only() -> None:
    got = users("aaa", CLIENTS)
    targeter, evaluator = got["targeter"], got["evaluator"]
    for subject in (
        "$JS.API.STREAM.CREATE.AAA",
        "$JS.API.STREAM.INFO.KV_AAA_targeter",
        "$JS.API.DIRECT.GET.KV_AAA_registry.$KV.AAA_registry.nas-01",
        "$KV.AAA_targeter.A",
        "$JS.API.CONSUMER.CREATE.KV_AAA_registry",
    ):
        assert allowed(targeter, subject), subject
    for subject in (
        "$KV.AAA_evaluator.A",
        "$JS.API.STREAM.DELETE.AAA",
        "$JS.API.STREAM.PURGE.KV_AAA_targeter",
        "$JS.API.STREAM.CREATE.OTHER",
        "$JS.API.CONSUMER.CREATE.AAA",
    ):
        assert not allowed(targeter, subject), subject
    assert not allowed(evaluator, "$KV.AAA_targeter.A")
    assert allowed(targeter, "_INBOX.targeter.abc.1", publish=False)
    assert not allowed(targeter, "_INBOX.evaluator.abc.1", publish=False)


def test_a_service_creates_pulls_from_and_acks_only_its_own_durable_consumers() -> None:
    got = users("aaa", CLIENTS, servers=["A", "B"])
    notifier, readmitter = got["notifier"], got["readmitter"]
    for subject in (
        "$JS.API.CONSUMER.CREATE.AAA.notifier-plan.aaa.plan.*",
        "$JS.API.CONSUMER.MSG.NEXT.AAA.notifier-plan",
        "$JS.ACK.AAA.notifier-plan.1.5.5.1700000000000000000.0",
        "$JS.API.CONSUMER.CREATE.AAA.notifier-readmit.aaa.readmit.*",
    ):
        assert allowed(notifier, subject), subject
    for subject in (
        # another service's consumer, or one of its own on a kind it may not read
        "$JS.API.CONSUMER.MSG.NEXT.AAA.readmitter-plan",
        "$JS.ACK.AAA.readmitter-plan.1.5.5.1700000000000000000.0",
        "$JS.API.CONSUMER.CREATE.AAA.notifier-plan.aaa.metrics.*",
        "$JS.API.CONSUMER.CREATE.AAA.notifier-metrics.aaa.metrics.*",
        "$JS.API.CONSUMER.DELETE.AAA.readmitter-plan",
    ):
        assert not allowed(notifier, subject), subject
    # a replica given --only A has the consumers of A's subjects
    assert allowed(readmitter, "$JS.API.CONSUMER.CREATE.AAA.readmitter-plan-A.aaa.plan.A")
    assert allowed(readmitter, "$JS.API.CONSUMER.MSG.NEXT.AAA.readmitter-incident-B")
    assert not allowed(readmitter, "$JS.API.CONSUMER.CREATE.AAA.readmitter-plan-A.aaa.plan.B")
    assert not any(
        allowed(got[name], "$JS.API.CONSUMER.MSG.NEXT.AAA.notifier-plan")
        for name in ("collector", "evaluator", "targeter", "readmitter", AGENT)
    )


def test_tools_read_everything_and_write_nothing() -> None:
    tools = users("aaa", CLIENTS)[TOOLS]
    assert allowed(tools, "aaa.>", publish=False)
    assert allowed(tools, "$JS.API.CONSUMER.CREATE.AAA.reader.aaa.>")
    assert allowed(tools, "$JS.API.CONSUMER.MSG.NEXT.AAA.reader")
    for subject in (S.plan("A"), S.control("A"), "$JS.API.STREAM.DELETE.AAA", "$KV.AAA_notifier.x"):
        assert not allowed(tools, subject), subject


def test_the_sandbox_writes_anything_but_the_live_prefix_stream_and_buckets() -> None:
    sandbox = users("aaa", CLIENTS)[SANDBOX]
    assert allowed(sandbox, "replay1.plan.A")
    assert allowed(sandbox, "$JS.API.STREAM.CREATE.REPLAY1")
    assert allowed(sandbox, "$KV.REPLAY1_targeter.A")
    assert allowed(sandbox, "$JS.API.CONSUMER.CREATE.AAA.reader.aaa.>")
    for subject in (
        S.plan("A"),
        "$JS.API.STREAM.DELETE.AAA",
        "$JS.API.STREAM.UPDATE.KV_AAA_targeter",
        "$KV.AAA_targeter.A",
    ):
        assert not allowed(sandbox, subject), subject


def test_of_any_prefix_every_prefix_stream_and_bucket_is_a_wildcard() -> None:
    got = users(None)
    collector, agent = got["collector"], got[AGENT]
    assert allowed(collector, "t1234.metrics.A")
    assert allowed(collector, "$KV.T1234_collector.A")
    assert not allowed(collector, "t1234.incident.A")
    assert allowed(agent, "t1234.ack.nas-07")
    assert not allowed(agent, "t1234.plan.A")
    assert not any(p.startswith("$JS") for p in agent.publish or ())
    assert got[HARNESS] == Permissions(None, None)


def test_user_for_names_the_service_the_tools_the_sandbox_or_the_harness() -> None:
    assert user_for("collector") == "collector"
    assert user_for("tail") == TOOLS
    assert user_for("recording") == TOOLS
    assert user_for("replay") == SANDBOX
    assert user_for("evaluator", sandbox=True) == SANDBOX
    assert user_for("demo") == HARNESS


def test_the_server_config_holds_each_user_with_its_permissions() -> None:
    perms = users("aaa", CLIENTS)
    config = server_config([ServerUser(n, "pw-" + n, p) for n, p in perms.items()])
    text = json.dumps(config)
    entries = {u["user"]: u for u in config["authorization"]["users"]}  # type: ignore[index]
    assert set(entries) == set(perms)
    assert "permissions" not in entries[HARNESS]
    assert entries[AGENT]["permissions"]["subscribe"]["allow"] == [
        "aaa.notice.nas-01",
        "aaa.notice.nas-02",
        "aaa.notice.nas-03",
    ]
    assert "no_auth_user" not in text
