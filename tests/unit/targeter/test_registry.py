"""The client registry: config facts, live announcements, and what a restart keeps."""

from __future__ import annotations

from pathlib import Path

from schemas.events import ClientStatus
from services.launch.farm import farm_dict, write_config
from services.runtime.config import Config, load_config
from services.targeter.registry import (
    ClientRecord,
    apply_status,
    merge,
    moved,
    record_from_config,
)


def _config(tmp_path: Path) -> Config:
    data = farm_dict(tmp_path, bus_url=None, clients=3)
    data["clients"][0].update(group="branch", site="east", priority=5, alternates_from="notice")
    return load_config(write_config(tmp_path, data))


def _status(current: str, *, time: float, rate: float | None = None) -> ClientStatus:
    return ClientStatus(client="nas-01", home="A", current=current, rate=rate, time=time)


def test_a_configured_client_starts_at_home_with_its_facts(tmp_path: Path) -> None:
    record = record_from_config(_config(tmp_path).client("nas-01"))
    assert (record.current, record.group, record.site, record.priority) == (
        "A",
        "branch",
        "east",
        5,
    )
    assert record.alternates == ("B", "C") and record.alternates_from == "notice"
    assert record.load == record.rate == 2.0


def test_announcements_move_the_client_and_measure_its_rate(tmp_path: Path) -> None:
    record = record_from_config(_config(tmp_path).client("nas-01"))
    servers = {"A", "B", "C"}
    on_b = apply_status(record, _status("B", time=10, rate=6.0), servers)
    assert on_b is not None and on_b.current == "B" and on_b.load == 6.0
    # nothing worth storing: same server, rate within the tolerance
    assert apply_status(on_b, _status("B", time=11, rate=6.5), servers) is None
    # older than what is recorded, or an unknown server: ignored
    assert apply_status(on_b, _status("C", time=5), servers) is None
    assert apply_status(on_b, _status("Z", time=12), servers) is None
    # an ack moves it as well, unless it is older than the record
    assert moved(on_b, "C", 20).current == "C"
    assert moved(on_b, "C", 1).current == "B"


def test_merge_keeps_live_facts_and_follows_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    stored = {c.id: record_from_config(c) for c in config.clients}
    on_b = apply_status(stored["nas-01"], _status("B", time=10, rate=3.0), {"A", "B", "C"})
    assert on_b is not None
    stored["nas-01"] = on_b
    stored["gone"] = ClientRecord(id="gone", ip="127.0.9.9", home="A", current="A")
    merged = merge(config, stored)
    assert set(merged) == {"nas-01", "nas-02", "nas-03"}
    assert merged["nas-01"].current == "B" and merged["nas-01"].measured_rate == 3.0
    assert merged["nas-01"].group == "branch"
