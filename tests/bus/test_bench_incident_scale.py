"""The incident benchmark's scale mode: its farm and its figures, without running the farm (a
run takes minutes: `make bench` runs it as ``incident_10k``)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.incident import (  # noqa: E402
    AGENT_RATE,
    OVERLOADED,
    SCALE_STATUS_INTERVAL_S,
    Observed,
    build_scale_config,
    parse,
    scale_figures,
    traffic_indexes,
)
from schemas.events import ClientStatus  # noqa: E402


def test_the_traffic_goes_round_the_servers_and_ends_with_a_last_client() -> None:
    chosen = traffic_indexes(10_000, 100)
    assert len(chosen) == 100
    assert Counter("ABC"[i % 3] for i in chosen) == {"A": 34, "B": 33, "C": 33}
    # the last client homed on A carries traffic: a plan that sheds A's load moves them all
    assert max(i for i in range(10_000) if i % 3 == 0) in chosen
    assert len(traffic_indexes(2_000, 21)) == 21
    assert traffic_indexes(5, 10) == set(range(5))


def test_the_scale_farm_has_every_client_and_proxies_only_where_traffic_goes(
    tmp_path: Path,
) -> None:
    config, _ = build_scale_config(tmp_path, "nats://127.0.0.1:4222", 3_000, 30)
    clients = config.clients
    assert len(clients) == 3_000
    assert len({c.ip for c in clients}) == 3_000
    assert all(not c.ip.startswith("127.0.") for c in clients)
    assert sum(c.home == OVERLOADED for c in clients) == 1_000
    proxied = [c for c in clients if c.proxy is not None]
    assert len(proxied) == 30
    assert all(c.proxy is not None and c.proxy.ip == c.ip for c in proxied)
    assert all(c.own_rate == AGENT_RATE for c in proxied)
    assert all(c.own_rate == 0 for c in clients if c.proxy is None)
    assert config.agent.status_interval_s == SCALE_STATUS_INTERVAL_S
    assert all(config.read_secret(c.secret) for c in clients[:3])


def test_the_last_client_moved_off_a_is_told_from_the_statuses() -> None:
    observed = Observed()

    def status(at: float, client: str, current: str, home: str = "A") -> None:
        observed.on_status(ClientStatus(client=client, home=home, current=current, time=at))

    status(1.0, "a1", "A")
    status(1.0, "a2", "A")
    status(1.0, "a3", "A")
    status(1.0, "b1", "B", home="B")
    observed.onset, observed.recovered = 10.0, 40.0
    status(11.0, "a1", "B")
    status(12.5, "a2", "C")
    status(13.0, "a2", "A")  # back on A...
    status(14.0, "a2", "B")  # ...and off again: it first left at 12.5
    assert not observed.all_home()
    figures = scale_figures(observed, {"a1", "a2"}, clients=4)
    assert figures["clients_on_a"] == 3
    assert figures["moved_off_a"] == 2
    assert figures["on_a_at_recovery"] == 1  # a3 never left
    assert figures["last_moved_off_a_s"] == 2.5
    assert figures["traffic_all_off_a_s"] == 4.0  # a1 and a2 both off A from 14.0
    assert observed.off_a_since() is None
    assert observed.returns_to_a() == 1
    status(41.0, "a1", "A")
    status(42.0, "a2", "A")
    assert observed.all_home() and observed.home_since() == 42.0


def test_scale_is_a_mode_of_the_command_line() -> None:
    args = parse(["--scale", "--clients", "2000", "--quick"])
    assert args.scale and args.quick and args.clients == 2_000
    assert not parse([]).scale
