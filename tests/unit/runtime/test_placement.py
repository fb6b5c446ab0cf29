"""Where each client is (pure): home from the config, moved by statuses and accepted acks."""

from __future__ import annotations

from pathlib import Path

from schemas.events import Ack, ClientStatus, HealthReport
from services.launch.farm import write_farm
from services.runtime.placement import Placement, homes, now_on


def test_statuses_and_accepted_acks_place_clients(tmp_path: Path) -> None:
    config, _ = write_farm(tmp_path / "farm", bus_url=None, clients=3)
    assert homes(config) == {"nas-01": "A", "nas-02": "B", "nas-03": "C"}
    stranger = ClientStatus(client="nas-99", home="C", current="C")
    placement = Placement.start(config, [stranger])
    assert placement.where["nas-99"] == "C" and placement.where["nas-01"] == "A"

    moved = ClientStatus(client="nas-01", home="A", current="B")
    assert now_on(moved) == ("nas-01", "B")
    assert placement.follow(moved) == ("nas-01", "A", "B")
    assert placement.follow(moved) is None  # already there
    refused = Ack(notice_id="n", client="nas-01", server="B", accepted=False, now_on="A")
    assert now_on(refused) is None and placement.follow(refused) is None
    back = Ack(notice_id="n", client="nas-01", server="B", accepted=True, now_on="A")
    assert placement.follow(back) == ("nas-01", "B", "A")
    report = HealthReport(
        server="A", sample_id="s", health=1.0, failover_threshold=0.2, connection_threshold=0.6
    )
    assert now_on(report) is None
    assert Placement.start(None, [stranger]).where == {"nas-99": "C"}
