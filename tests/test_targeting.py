"""Failover planning: policies, alternates outside incidents, unplaced clients."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.runtime.config import (
    BusConfig,
    ClientConfig,
    Config,
    Secret,
    ServerConfig,
    TargeterConfig,
)
from services.targeter.planning import plan_failover

SERVERS = ("A", "B", "C", "D")


def client(cid: str, home: str, *alternates: str) -> ClientConfig:
    return ClientConfig(id=cid, secret=Secret(env="S"), home=home, alternates=list(alternates))


def config(clients: list[ClientConfig], listed: list[str] | None = None) -> Config:
    targeter = TargeterConfig(policy="list", clients=listed) if listed else TargeterConfig()
    return Config(
        bus=BusConfig(),
        servers=[ServerConfig(id=s, status_secret=Secret(env="S")) for s in SERVERS],
        clients=clients,
        targeter=targeter,
    )


CLIENTS = [
    client("nas-1", "A", "B", "C"),
    client("nas-2", "B", "A", "C"),
    client("nas-3", "A", "C", "D"),
    client("nas-4", "A", "B"),
    client("nas-5", "A"),
]


def test_policy_all_moves_every_client_of_the_server_to_its_own_alternates() -> None:
    plan = plan_failover("A", "inc-1", config(CLIENTS), set())
    assert plan.incident_id == "inc-1"
    assert plan.server == "A"
    assert [(m.client, m.alternates) for m in plan.moves] == [
        ("nas-1", ["B", "C"]),
        ("nas-3", ["C", "D"]),
        ("nas-4", ["B"]),
    ]
    assert plan.unplaced == ["nas-5"]
    assert all(m.why.startswith("policy all: home of") for m in plan.moves)
    assert "3 of 4 clients of A move" in plan.reason
    assert "nas-5" in plan.reason


def test_policy_list_keeps_the_list_order_and_only_the_servers_clients() -> None:
    cfg = config(CLIENTS, listed=["nas-4", "nas-2", "nas-1"])
    plan = plan_failover("A", "inc-1", cfg, set())
    assert [m.client for m in plan.moves] == ["nas-4", "nas-1"]
    assert plan.unplaced == []
    assert plan.moves[0].why.startswith("policy list")
    assert "listed at 1" in plan.moves[0].why
    assert "policy list: 2 of 4 clients of A move" in plan.reason


def test_servers_in_incident_are_skipped_and_named() -> None:
    plan = plan_failover("A", "inc-1", config(CLIENTS), {"B"})
    assert [(m.client, m.alternates) for m in plan.moves] == [
        ("nas-1", ["C"]),
        ("nas-3", ["C", "D"]),
    ]
    assert plan.moves[0].why.endswith("skipped B (in incident)")
    assert plan.unplaced == ["nas-4", "nas-5"]
    assert "servers in incident: B" in plan.reason


def test_every_alternate_in_incident_leaves_all_unplaced() -> None:
    plan = plan_failover("A", "inc-1", config(CLIENTS), {"B", "C", "D"})
    assert plan.moves == []
    assert plan.unplaced == ["nas-1", "nas-3", "nas-4", "nas-5"]


def test_a_server_without_clients_gets_an_empty_plan() -> None:
    plan = plan_failover("D", "inc-1", config(CLIENTS), set())
    assert plan.moves == [] and plan.unplaced == []
    assert "0 of 0" in plan.reason


@st.composite
def farms(draw: st.DrawFn) -> tuple[Config, str, set[str]]:
    clients = []
    for n in range(draw(st.integers(0, 8))):
        home = draw(st.sampled_from(SERVERS))
        others = [s for s in SERVERS if s != home]
        alternates = draw(st.lists(st.sampled_from(others), unique=True))
        clients.append(client(f"nas-{n}", home, *alternates))
    ids = [c.id for c in clients]
    if ids and draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
        cfg = config(clients, listed=listed)
    else:
        cfg = config(clients)
    failing = draw(st.sampled_from(SERVERS))
    in_incident = draw(st.sets(st.sampled_from(SERVERS)))
    return cfg, failing, in_incident


@given(farms())
def test_no_move_lists_the_failing_server_or_one_in_incident(
    farm: tuple[Config, str, set[str]],
) -> None:
    cfg, failing, in_incident = farm
    plan = plan_failover(failing, "inc", cfg, in_incident)
    for move in plan.moves:
        assert move.alternates
        assert failing not in move.alternates
        assert not set(move.alternates) & in_incident
        assert cfg.client(move.client).home == failing
    moved = [m.client for m in plan.moves]
    assert len(set(moved)) == len(moved)
    assert not set(moved) & set(plan.unplaced)
    assert all(cfg.client(c).home == failing for c in plan.unplaced)
