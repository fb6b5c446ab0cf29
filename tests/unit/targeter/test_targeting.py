"""Failover planning: how many clients move, which ones, and where to."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import FailoverPlan
from services.runtime.config import TargeterConfig, TargetingPolicy
from services.targeter.planning import Pressure, ServerView, plan_failover
from services.targeter.registry import ClientRecord


def rec(
    cid: str,
    *alternates: str,
    current: str = "A",
    group: str = "",
    site: str = "",
    priority: int = 100,
    rate: float = 10.0,
    notice: bool = False,
) -> ClientRecord:
    return ClientRecord(
        id=cid,
        ip="10.0.0.1",
        home=current,
        current=current,
        group=group,
        site=site,
        priority=priority,
        alternates=alternates,
        alternates_from="notice" if notice else "client",
        rate=rate,
    )


def view(
    sid: str,
    health: float | None = 1.0,
    *,
    site: str = "",
    capacity: float | None = 1000.0,
    in_incident: bool = False,
) -> ServerView:
    return ServerView(
        id=sid,
        site=site,
        health=health,
        failover_threshold=0.2,
        in_incident=in_incident,
        capacity_rps=capacity,
    )


FARM = {sid: view(sid) for sid in ("A", "B", "C")}


def cfg(**kwargs: Any) -> TargeterConfig:
    kwargs.setdefault("max_share", 1.0)
    return TargeterConfig(**kwargs)


def pressure(health: float = 0.1, limiting: str = "threads") -> Pressure:
    return Pressure(health=health, failover_threshold=0.2, limiting=limiting)


def ten(**kwargs: Any) -> list[ClientRecord]:
    return [rec(f"nas-{i}", "B", "C", **kwargs) for i in range(10)]


def moved(plan: FailoverPlan) -> list[str]:
    return [m.client for m in plan.moves]


def plan(
    clients: list[ClientRecord],
    config: TargeterConfig,
    p: Pressure | None = None,
    servers: dict[str, ServerView] | None = None,
    **kwargs: Any,
) -> FailoverPlan:
    return plan_failover(
        "A", "inc-1", p or pressure(), clients, servers or FARM, config, source="t", **kwargs
    )


# --- how many ---------------------------------------------------------------


def test_share_follows_the_deficit_and_fills_the_plan_fields() -> None:
    result = plan(ten(), cfg(), pressure(0.1), step=2)
    assert (result.incident_id, result.server, result.source) == ("inc-1", "A", "t")
    assert result.step == 2 and result.health == 0.1
    assert result.deficit == pytest.approx(0.5) and result.share == pytest.approx(0.5)
    assert result.cap == 10 and result.load == 100
    assert moved(result) == [f"nas-{i}" for i in range(5)]
    assert result.moved_load == 50
    assert result.unplaced == []
    assert result.reason.startswith("step 2: health 0.10 is 50% below 0.20; shed 50% of 100 rps")
    assert "moved 5 clients, 50 rps, to " in result.reason


def test_gain_scales_the_share_up_to_everything() -> None:
    assert len(plan(ten(), cfg(gain=1.5), pressure(0.1)).moves) == 8
    result = plan(ten(), cfg(gain=3.0), pressure(0.1))
    assert result.share == 1.0 and len(result.moves) == 10


def test_the_cap_limits_one_step() -> None:
    result = plan(ten(), cfg(max_share=0.3), pressure(0.0))
    assert result.share == 1.0 and result.cap == 3
    assert moved(result) == ["nas-0", "nas-1", "nas-2"]
    assert "cap 3 of 10 clients" in result.reason


def test_a_small_deficit_still_moves_one_client() -> None:
    result = plan(ten(), cfg(max_share=0.01), pressure(0.199))
    assert result.cap == 1 and len(result.moves) == 1


def test_health_at_the_threshold_moves_nobody() -> None:
    result = plan(ten(), cfg(), pressure(0.2))
    assert result.moves == [] and result.unplaced == [] and result.deficit == 0
    assert "health 0.20 is not below 0.20" in result.reason


@pytest.mark.parametrize(
    ("limiting", "cause"),
    [
        ("service:radius", "mandatory service radius is down"),
        ("status", "does not answer Status-Server"),
    ],
)
def test_a_dead_server_sheds_every_client_whatever_the_cap(limiting: str, cause: str) -> None:
    clients = [*ten(), rec("nas-z", "B", rate=0.0)]
    result = plan(
        clients, cfg(max_share=0.2, policy=["list"], clients=["nas-3"]), pressure(0.0, limiting)
    )
    assert result.cap == 2 and result.share == 1.0
    assert len(result.moves) == 11 and result.moved_load == 100
    assert moved(result)[0] == "nas-3"
    assert cause in result.reason and "cap 2 does not apply" in result.reason
    assert all(cause in m.why for m in result.moves)


def test_only_clients_on_the_server_are_candidates() -> None:
    clients = [*ten(), rec("nas-b", "C", current="B")]
    result = plan(clients, cfg(gain=5.0))
    assert "nas-b" not in moved(result) and result.load == 100


def test_a_server_without_clients_gets_an_empty_plan() -> None:
    result = plan([rec("nas-b", "C", current="B")], cfg())
    assert result.moves == [] and result.cap == 0
    assert "no clients are on A" in result.reason


def test_clients_that_left_by_their_own_failover_are_kept_where_they_went() -> None:
    left = [
        msgspec.structs.replace(rec(f"own-{i}", "B", "C"), current=to)
        for i, to in enumerate(("B", "C"))
    ]
    result = plan(left, cfg(), p=pressure(0.0, "status"), away=left)
    assert [(m.client, m.alternates) for m in result.moves] == [
        ("own-0", ["B"]),
        ("own-1", ["C"]),
    ]
    assert all(m.why == "left A by its own failover" for m in result.moves)
    assert "no clients are on A" in result.reason
    assert "2 already left by their own failover, kept where they are" in result.reason
    # beside clients still on the server: they are outside the share and the cap
    mixed = plan([*ten(), *left], cfg(max_share=0.1), away=left)
    assert moved(mixed) == ["own-0", "own-1", "nas-0"]
    assert mixed.moved_load == 10.0 and mixed.load == 100.0


# --- which ones ---------------------------------------------------------------


def test_policy_all_takes_priority_then_id() -> None:
    clients = [
        rec("nas-a", "B", priority=50),
        rec("nas-b", "B", priority=10),
        rec("nas-c", "B", priority=10),
        rec("nas-d", "B"),
    ]
    result = plan(clients, cfg(), pressure(0.1))
    assert moved(result) == ["nas-b", "nas-c"]
    assert result.moves[0].why == "policy all: rank 1, priority 10"


def test_policy_list_moves_only_listed_clients_in_list_order() -> None:
    config = cfg(policy=["list"], clients=["nas-7", "nas-2", "nas-x", "nas-5"], gain=5.0)
    result = plan(ten(), config, pressure(0.1))
    assert moved(result) == ["nas-7", "nas-2", "nas-5"]
    assert result.moves[0].why.startswith("policy list: rank 1, listed at 1")
    assert "listed at 4" in result.moves[2].why
    assert "3 of 10 listed" in result.reason


def grouped() -> list[ClientRecord]:
    groups = ["g2"] * 4 + ["g1"] * 3 + ["gz"] * 2 + ["ga"]
    return [rec(f"nas-{i}", "B", "C", group=g) for i, g in enumerate(groups)]


def test_policy_group_takes_whole_groups_in_configured_then_alphabetical_order() -> None:
    config = cfg(policy=["group"], groups=["g2", "g1"])
    result = plan(grouped(), config, pressure(0.14))
    assert result.share == pytest.approx(0.3)
    assert moved(result) == ["nas-0", "nas-1", "nas-2", "nas-3"]
    assert "group g2 (group rank 1)" in result.moves[0].why
    result = plan(grouped(), config, pressure(0.1))
    assert moved(result) == ["nas-0", "nas-1", "nas-2", "nas-3", "nas-4", "nas-5", "nas-6"]
    result = plan(grouped(), config, pressure(0.02))
    assert moved(result)[7:] == ["nas-9", "nas-7", "nas-8"]
    assert "group ga (group rank 3)" in result.moves[7].why


def test_a_group_cut_by_the_cap_says_so() -> None:
    result = plan(grouped(), cfg(policy=["group"], groups=["g2"], max_share=0.2), pressure(0.0))
    assert moved(result) == ["nas-0", "nas-1"]
    assert all("group cut by the cap (2 of 4 taken)" in m.why for m in result.moves)


def test_list_then_group_takes_whole_groups_of_listed_clients() -> None:
    config = cfg(policy=["list", "group"], clients=["nas-5", "nas-1", "nas-8"], gain=0.1)
    result = plan(grouped(), config, pressure(0.1))
    assert moved(result) == ["nas-5"]
    config = cfg(policy=["list", "group"], clients=["nas-5", "nas-1", "nas-4"], gain=0.1)
    assert moved(plan(grouped(), config, pressure(0.1))) == ["nas-5", "nas-4"]


SITES = {
    "A": view("A", site="s1"),
    "B": view("B", 0.3, site="s1"),
    "C": view("C", 1.0, site="s2"),
    "D": view("D", None, site="s3"),
}


def test_topology_nearest_ranks_clients_with_a_near_alternate_first_and_sends_them_there() -> None:
    clients = [
        rec("nas-1", "B", "C", site="s2"),
        rec("nas-2", "C", site="s1"),
        rec("nas-3", "B", "C", site="s3", priority=1),
        rec("nas-4", "C", "B", site="s1"),
        rec("nas-5", "D", "C", site="s3"),
    ]
    config = cfg(policy=["topology"], topology="nearest")
    result = plan(clients, config, pressure(0.1), servers=SITES)
    assert moved(result) == ["nas-1", "nas-4", "nas-3"]
    by_client = {m.client: m for m in result.moves}
    assert by_client["nas-4"].alternates[0] == "B"
    assert "in the client's site s1" in by_client["nas-4"].where
    assert by_client["nas-1"].alternates[0] == "C"
    assert "site s2 has alternate with room" in by_client["nas-1"].why
    assert "site s3 has no alternate with room" in by_client["nas-3"].why


def test_topology_site_takes_whole_sites_in_order() -> None:
    clients = [
        rec("nas-1", "B", site="s2"),
        rec("nas-2", "B", site="s1"),
        rec("nas-3", "B", site="s3"),
        rec("nas-4", "B", site="s2"),
        rec("nas-5", "B", site="s1"),
    ]
    config = cfg(policy=["topology"], topology="site", sites=["s2"])
    result = plan(clients, config, pressure(0.15))
    assert moved(result) == ["nas-1", "nas-4"]
    assert "site s2 (site rank 1)" in result.moves[0].why
    result = plan(clients, config, pressure(0.1))
    assert moved(result) == ["nas-1", "nas-4", "nas-2", "nas-5"]


def test_group_then_topology_keeps_groups_whole_and_near_clients_first_in_a_cut() -> None:
    clients = [
        rec("nas-1", "B", "C", group="g1", site="s3"),
        rec("nas-2", "B", "C", group="g1", site="s1"),
        rec("nas-3", "B", "C", group="g0", site="s1"),
        rec("nas-4", "B", "C", group="g1", site="s2"),
    ]
    config = cfg(policy=["group", "topology"], groups=["g1"], max_share=0.5)
    result = plan(clients, config, pressure(0.0), servers=SITES)
    assert moved(result) == ["nas-2", "nas-4"]
    assert all("group cut by the cap" in m.why for m in result.moves)
    config = cfg(policy=["group", "topology"], groups=["g1"])
    result = plan(clients, config, pressure(0.16), servers=SITES)
    assert moved(result) == ["nas-2", "nas-4", "nas-1"]


# --- where to -------------------------------------------------------------------


def test_alternates_receive_clients_in_proportion_to_their_headroom() -> None:
    servers = {
        "A": view("A"),
        "B": view("B", 0.5, capacity=1600),
        "C": view("C", 1.0, capacity=1600),
    }
    clients = [rec(f"nas-{i:03d}", "B", "C", rate=1.0) for i in range(300)]
    result = plan(clients, cfg(), pressure(0.0, "service:radius"), servers=servers)
    counts = Counter(m.alternates[0] for m in result.moves)
    assert counts["B"] + counts["C"] == 300
    assert counts["C"] / 300 == pytest.approx(1280 / 1760, abs=0.01)
    first = result.moves[0]
    assert first.where == "B: room 480 rps of capacity 1600 at health 0.50 (100% of its room free)"
    assert first.alternates == ["B", "C"] and first.load == 1.0


def test_no_alternate_with_room_means_nobody_moves() -> None:
    servers = {"A": view("A"), "B": view("B", 0.2), "C": view("C", 0.1), "D": view("D", 0.9)}
    result = plan(ten(), cfg(), pressure(0.1), servers=servers)
    assert result.moves == [] and result.moved_load == 0
    assert result.unplaced == [f"nas-{i}" for i in range(10)]
    assert "no alternate has room for any of the 10 chosen clients" in result.reason


def test_a_client_that_fits_nowhere_is_unplaced_and_others_still_move() -> None:
    servers = {"A": view("A"), "B": view("B", 0.25), "C": view("C", 0.25)}
    clients = [rec("nas-big", "B", "C", rate=80, priority=1), *ten()]
    result = plan(clients, cfg(), pressure(0.1), servers=servers)
    assert result.unplaced == ["nas-big"]
    assert moved(result) == [f"nas-{i}" for i in range(9)]
    assert "1 unplaced" in result.reason


def test_servers_in_incident_or_of_unknown_health_get_nobody() -> None:
    servers = {
        "A": view("A"),
        "B": view("B", in_incident=True),
        "C": view("C", None),
        "D": view("D", 0.9),
    }
    clients = [rec(f"nas-{i}", "B", "C", "D", "A", notice=i % 2 == 0) for i in range(6)]
    result = plan(clients, cfg(), pressure(0.0, "status"), servers=servers)
    assert len(result.moves) == 6
    assert all(m.alternates == ["D"] for m in result.moves)


def test_capacity_comes_from_the_view_then_the_argument_then_the_config() -> None:
    servers = {"A": view("A"), "B": view("B", 0.3, capacity=None)}
    clients = [rec("nas-1", "B", rate=15)]
    assert plan(clients, cfg(default_capacity_rps=100), servers=servers).unplaced == ["nas-1"]
    assert moved(plan(clients, cfg(default_capacity_rps=200), servers=servers)) == ["nas-1"]
    result = plan(clients, cfg(default_capacity_rps=100), servers=servers, default_capacity_rps=500)
    assert result.moves[0].where.startswith("B: room 50 rps of capacity 500")


def test_own_alternates_versus_the_notice_list() -> None:
    servers = {sid: view(sid, h) for sid, h in (("A", 1.0), ("B", 0.5), ("C", 1.0), ("D", 0.8))}
    own = rec("nas-own", "B", priority=1)
    notice = rec("nas-notice", "B", notice=True)
    result = plan([own, notice], cfg(), pressure(0.0, "status"), servers=servers)
    by_client = {m.client: m for m in result.moves}
    assert by_client["nas-own"].alternates == ["B"]
    assert by_client["nas-notice"].alternates[0] == "C"
    assert set(by_client["nas-notice"].alternates) == {"B", "C", "D"}


def test_notice_ties_follow_the_clients_own_order() -> None:
    servers = {sid: view(sid) for sid in ("A", "B", "C", "D")}
    result = plan(
        [rec("nas-1", "D", "C", notice=True)], cfg(), pressure(0.0, "status"), servers=servers
    )
    assert result.moves[0].alternates == ["D", "C", "B"]


# --- properties -------------------------------------------------------------------

IDS = ("A", "B", "C", "D", "E")


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[ClientRecord], dict[str, ServerView], TargeterConfig, Pressure]:
    servers = {
        sid: ServerView(
            id=sid,
            site=draw(st.sampled_from(["", "s1", "s2"])),
            health=draw(st.none() | st.floats(0, 1)),
            failover_threshold=draw(st.floats(0.05, 0.5)),
            in_incident=draw(st.booleans()),
            capacity_rps=draw(st.none() | st.floats(1, 500)),
        )
        for sid in IDS
    }
    clients = []
    for n in range(draw(st.integers(0, 25))):
        current = draw(st.sampled_from(("A", "A", "A", "B")))
        others = [s for s in IDS if s != current]
        clients.append(
            ClientRecord(
                id=f"nas-{n:02d}",
                ip="10.0.0.1",
                home=current,
                current=current,
                group=draw(st.sampled_from(["", "g0", "g1", "g2"])),
                site=draw(st.sampled_from(["", "s1", "s2", "s3"])),
                priority=draw(st.integers(0, 3)),
                alternates=tuple(draw(st.lists(st.sampled_from(others), unique=True))),
                alternates_from=draw(st.sampled_from(["client", "notice"])),
                rate=draw(st.floats(0, 50)),
                measured_rate=draw(st.none() | st.floats(0, 50)),
            )
        )
    ids = [c.id for c in clients]
    every: list[TargetingPolicy] = ["all", "list", "group", "topology"]
    policy = draw(st.permutations(every))[: draw(st.integers(1, 4))]
    listed = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    if not listed:
        policy = [p for p in policy if p != "list"] or ["all"]
    config = TargeterConfig(
        policy=policy,
        clients=listed,
        groups=draw(st.lists(st.sampled_from(["g0", "g1", "g2", "g9"]), unique=True)),
        topology=draw(st.sampled_from(["nearest", "site"])),
        sites=draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), unique=True)),
        max_share=draw(st.floats(0.01, 1)),
        gain=draw(st.floats(0.1, 4)),
    )
    p = Pressure(
        health=draw(st.floats(0, 1)),
        failover_threshold=draw(st.floats(0.05, 0.9)),
        limiting=draw(st.sampled_from(["", "threads", "service:radius", "status"])),
    )
    return clients, servers, config, p


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plans_keep_their_promises(
    scenario: tuple[list[ClientRecord], dict[str, ServerView], TargeterConfig, Pressure],
) -> None:
    clients, servers, config, p = scenario
    result = plan_failover("A", "inc", p, clients, servers, config)
    candidates = {c.id: c for c in clients if c.current == "A"}
    shed_all = p.limiting == "status" or p.limiting.startswith("service:")
    chosen = [*moved(result), *result.unplaced]
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(candidates)
    if not shed_all:
        assert result.cap is not None and len(chosen) <= result.cap
        if "list" in config.policy:
            assert set(chosen) <= set(config.clients)
    assigned: dict[str, float] = {}
    for move in result.moves:
        client = candidates[move.client]
        assert move.alternates and len(set(move.alternates)) == len(move.alternates)
        for sid in move.alternates:
            target = servers[sid]
            assert sid != "A" and not target.in_incident and target.health is not None
        if client.alternates_from == "client":
            assert set(move.alternates) <= set(client.alternates)
        assert move.load == client.load
        assigned[move.alternates[0]] = assigned.get(move.alternates[0], 0.0) + move.load
    for sid, load in assigned.items():
        target = servers[sid]
        assert target.health is not None
        capacity = target.capacity_rps or config.default_capacity_rps
        assert load <= capacity * (target.health - target.failover_threshold) + 1e-6
    assert result.moved_load == pytest.approx(sum(m.load for m in result.moves))


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_with_room_enough_and_no_cap_the_plan_covers_the_share(
    scenario: tuple[list[ClientRecord], dict[str, ServerView], TargeterConfig, Pressure],
    data: st.DataObject,
) -> None:
    clients, servers, config, p = scenario
    load = sum(c.load for c in clients if c.current == "A")
    roomy = {
        sid: ServerView(
            id=sid, site=v.site, health=1.0, failover_threshold=0.5, capacity_rps=2 * load + 1
        )
        for sid, v in servers.items()
    }
    clients = [
        c if c.alternates else ClientRecord(**{**_fields(c), "alternates": ("C",)}) for c in clients
    ]
    policy: list[TargetingPolicy] = [q for q in config.policy if q != "list"] or ["all"]
    config = TargeterConfig(
        policy=policy,
        groups=config.groups,
        topology=config.topology,
        sites=config.sites,
        max_share=1.0,
        gain=config.gain,
    )
    result = plan_failover("A", "inc", p, clients, roomy, config)
    assert result.unplaced == []
    assert result.share is not None
    assert result.moved_load >= result.share * load - 1e-6


def _fields(client: ClientRecord) -> dict[str, Any]:
    return {f: getattr(client, f) for f in client.__struct_fields__}


def test_a_large_plan_travels_in_parts_that_share_its_id() -> None:
    from schemas import codec
    from schemas.events import FailoverPlan, Move
    from services.targeter.planning import split_plan

    plan = FailoverPlan(
        incident_id="i",
        server="A",
        moves=[Move(client=f"c{i}", alternates=["B"]) for i in range(1200)],
        unplaced=[f"u{i}" for i in range(30)],
        reason="r",
    )
    parts = split_plan(plan, per_part=500)
    assert [(p.part, p.parts) for p in parts] == [(1, 3), (2, 3), (3, 3)]
    assert [m for p in parts for m in p.moves] == plan.moves
    assert [u for p in parts for u in p.unplaced] == plan.unplaced
    assert {p.plan_id for p in parts} == {plan.plan_id}
    assert len({p.id for p in parts}) == 3
    assert all(len(codec.encode(p)) < 1_000_000 for p in parts)
    [whole] = split_plan(plan, per_part=5000)
    assert msgspec.structs.replace(whole, id=plan.id) == plan
    # the same plan split again gives the same events: the stream stores them once
    assert [p.id for p in split_plan(plan, per_part=500)] == [p.id for p in parts]
