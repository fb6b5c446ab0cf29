"""`aaa-failover report`: the timeline of one incident, its figure, PNG and HTML page."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverNotice,
    FailoverPlan,
    HealthReport,
    Incident,
    Move,
    ReadmitNotice,
    ReadmitWave,
)
from services.runtime.config import Config
from services.tools.incident_figure import INCIDENT_COLOUR, SERVER_COLOURS, figure
from services.tools.incident_timeline import Count, ReportError, Timeline, timeline
from services.tools.report import write_report
from tests.support import needs

T0 = 1_700_000_000.0
INCIDENT = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
HOSTILE = '<script>alert("x")</script> & <b>'
SERIES = [
    "health A",
    "health B",
    "health C",
    "failover threshold 0.25",
    "connection threshold 0.65",
    "overloaded",
    "recovering",
    "clients on A",
    "clients on B",
    "clients on C",
    "failover notice",
    "readmit notice",
    "ack accepted",
    "ack refused",
    "plan",
    "readmit wave",
]


def _config() -> Config:
    secret = {"env": "UNUSED_SECRET"}
    servers = [{"id": s, "status_secret": secret} for s in ("A", "B", "C")]
    homes = {"nas-01": "A", "nas-02": "B", "nas-03": "C", "nas-04": "A", "nas-05": "A"}
    clients = [
        {"id": c, "home": h, "secret": secret, "alternates": [s for s in "ABC" if s != h]}
        for c, h in homes.items()
    ]
    return msgspec.convert({"bus": {}, "servers": servers, "clients": clients}, Config)


def _health(server: str, t: float, health: float, **kwargs: Any) -> HealthReport:
    return HealthReport(
        server=server,
        sample_id=f"s-{server}-{t}",
        health=health,
        failover_threshold=0.25,
        connection_threshold=0.65,
        time=T0 + t,
        **kwargs,
    )


def _a_health(t: float) -> float:
    if t < 12:
        return 0.8
    if t < 32:
        return 0.1 if t != 20 else 0.05
    return 0.4 if t < 36 else 0.7


def _incident(t: float, state: Any, health: float, **kwargs: Any) -> Incident:
    kwargs.setdefault("incident_id", INCIDENT)
    return Incident(
        server="A", state=state, health=health, opened_at=T0 + 14, time=T0 + t, **kwargs
    )


def _notice(t: float, client: str, incident_id: str = INCIDENT) -> FailoverNotice:
    return FailoverNotice(
        incident_id=incident_id,
        server="A",
        client=client,
        alternates=["B"],
        seq=1,
        valid_until=T0 + 300,
        time=T0 + t,
    )


def _readmit(t: float, client: str, wave: int) -> ReadmitNotice:
    return ReadmitNotice(
        incident_id=INCIDENT,
        server="A",
        client=client,
        wave=wave,
        seq=2,
        valid_until=T0 + 300,
        time=T0 + t,
    )


def _status(t: float, client: str, home: str, current: str) -> ClientStatus:
    return ClientStatus(client=client, home=home, current=current, time=T0 + t)


def incident_events() -> list[Event]:
    """Server A overloads at 14 s, sheds nas-01 (ack) and nas-05 (status), readmits both."""
    events: list[Event] = []
    for i in range(31):
        t = 2.0 * i
        reports = (("A", _a_health(t)), ("B", 0.7 - 0.1 * (16 <= t < 46)), ("C", 0.6))
        for server, value in reports:
            kwargs = {"incident_id": INCIDENT} if server == "A" and 14 <= t <= 52 else {}
            events.append(_health(server, t, value, **kwargs))
    n1, n4 = _notice(15.5, "nas-01"), _notice(15.5, "nas-04")
    r1, r5 = _readmit(45.2, "nas-01", 1), _readmit(50.2, "nas-05", 2)
    events += [
        _incident(14, "opened", 0.1, reason="health below failover threshold"),
        FailoverPlan(
            incident_id=INCIDENT,
            server="A",
            moves=[Move(client="nas-01", alternates=["B"])],
            health=0.1,
            parts=2,
            part=1,
            plan_id="p1",
            time=T0 + 15,
        ),
        FailoverPlan(
            incident_id=INCIDENT,
            server="A",
            moves=[Move(client="nas-04", alternates=["C"])],
            health=0.1,
            parts=2,
            part=2,
            plan_id="p1",
            time=T0 + 15.01,
        ),
        n1,
        n4,
        _notice(30, "nas-03", incident_id=OTHER),
        Ack(notice_id=n1.id, client="nas-01", server="A", accepted=True, now_on="B", time=T0 + 16),
        Ack(
            notice_id=n4.id,
            client="nas-04",
            server="A",
            accepted=False,
            reason=HOSTILE,
            time=T0 + 16.2,
        ),
        Delivery(
            notice_id=n4.id,
            notice_type="notice.failover.v2",
            client="nas-04",
            server="A",
            outcome="failed",
            time=T0 + 17,
        ),
        _status(18, "nas-01", "A", "B"),
        _status(20, "nas-05", "A", "B"),
        _incident(40, "recovering", 0.7),
        ReadmitWave(incident_id=INCIDENT, server="A", wave=1, clients=["nas-01"], time=T0 + 45),
        r1,
        Ack(
            notice_id=r1.id, client="nas-01", server="A", accepted=True, now_on="A", time=T0 + 45.5
        ),
        ReadmitWave(
            incident_id=INCIDENT,
            server="A",
            wave=2,
            clients=["nas-05"],
            final=True,
            time=T0 + 50,
        ),
        r5,
        _status(51, "nas-05", "A", "A"),
        _incident(52, "closed", 0.7, reason=HOSTILE),
    ]
    return sorted(events, key=lambda e: e.time)


@pytest.fixture
def tl() -> Timeline:
    return timeline(incident_events(), INCIDENT, _config())


# --- timeline ----------------------------------------------------------------


def test_timeline_finds_the_server_phases_and_lowest_health(tl: Timeline) -> None:
    assert tl.server == "A"
    assert tl.start == T0
    assert tl.end == pytest.approx(60.0)
    assert [(c.state, c.t) for c in tl.changes] == [
        ("opened", 14.0),
        ("recovering", 40.0),
        ("closed", 52.0),
    ]
    assert [(p.state, p.start, p.end) for p in tl.phases] == [
        ("overloaded", 14.0, 40.0),
        ("recovering", 40.0, 52.0),
    ]
    assert tl.lowest_health == pytest.approx(0.05)
    assert [p.health for p in tl.health["A"]][:2] == [0.8, 0.8]
    assert set(tl.health) == {"A", "B", "C"}


def test_thresholds_come_from_the_reports_not_the_config(tl: Timeline) -> None:
    assert _config().evaluator.failover_threshold == 0.2
    assert (tl.failover_threshold, tl.connection_threshold) == (0.25, 0.65)


def test_thresholds_fall_back_to_the_config_without_reports() -> None:
    events = [e for e in incident_events() if not isinstance(e, HealthReport)]
    without = timeline(events, INCIDENT, _config())
    assert (without.failover_threshold, without.connection_threshold) == (0.2, 0.6)
    assert timeline(events, INCIDENT).failover_threshold is None


def _steps(steps: list[Count]) -> list[tuple[float, int]]:
    return [(round(s.t, 3), s.count) for s in steps]


def test_client_counts_follow_statuses_and_accepted_acks(tl: Timeline) -> None:
    # nas-01 leaves by its ack at 16 and returns by its ack at 45.5; nas-05
    # leaves by its status at 20 and returns by its status at 51; nas-04 refused.
    assert _steps(tl.clients["A"]) == [(0, 3), (16, 2), (20, 1), (45.5, 2), (51, 3)]
    assert _steps(tl.clients["B"]) == [(0, 1), (16, 2), (20, 3), (45.5, 2), (51, 1)]
    assert _steps(tl.clients["C"]) == [(0, 1)]
    assert tl.moved == ["nas-01", "nas-05"]
    assert tl.returned == ["nas-01", "nas-05"]


def test_clients_unknown_to_the_config_start_at_the_home_their_status_names() -> None:
    events = [*incident_events(), _status(30, "nas-99", "C", "B")]
    steps = timeline(events, INCIDENT, _config()).clients
    assert _steps(steps["C"]) == [(0, 2), (30, 1)]
    assert (30, 4) in _steps(steps["B"])


def test_notices_acks_plans_and_waves_are_the_incidents(tl: Timeline) -> None:
    assert [(n.kind, n.client) for n in tl.notices] == [
        ("failover", "nas-01"),
        ("failover", "nas-04"),
        ("readmit", "nas-01"),
        ("readmit", "nas-05"),
    ]
    assert [(a.client, a.accepted) for a in tl.acks] == [
        ("nas-01", True),
        ("nas-04", False),
        ("nas-01", True),
    ]
    assert [(p.t, p.moves) for p in tl.plans] == [(15.0, 2)]
    assert [(w.wave, w.clients, w.final) for w in tl.waves] == [(1, 1, False), (2, 1, True)]
    events = [row.event for row in tl.rows]
    assert events == [
        "incident",
        "failover.plan",
        "ack",
        "delivery",
        "incident",
        "readmit.wave",
        "readmit.wave",
        "incident",
    ]


def test_a_unique_prefix_names_the_incident() -> None:
    assert timeline(incident_events(), INCIDENT[:8]).incident_id == INCIDENT


def test_unknown_incident_is_a_report_error() -> None:
    with pytest.raises(ReportError, match="no Incident event"):
        timeline(incident_events(), "deadbeef")
    with pytest.raises(ReportError, match="no Incident event"):
        timeline(incident_events(), OTHER)


def test_a_window_that_starts_inside_the_incident_shades_from_its_opening() -> None:
    late = [e for e in incident_events() if e.time >= T0 + 20]
    tl = timeline(late, INCIDENT)
    assert [(p.state, p.start, p.end) for p in tl.phases] == [
        ("overloaded", 0.0, 20.0),
        ("recovering", 20.0, 32.0),
    ]


def test_an_incident_still_open_lasts_to_the_end_of_the_window() -> None:
    early = [e for e in incident_events() if e.time <= T0 + 44]
    tl = timeline(early, INCIDENT)
    assert tl.phases[-1].state == "recovering"
    assert (tl.phases[-1].end, tl.phases[-1].closed) == (44.0, False)
    assert tl.first("closed") is None


# --- figure, PNG and HTML ----------------------------------------------------


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_figure_has_three_panels_with_labelled_series(tl: Timeline) -> None:
    needs.module("matplotlib", "report")
    fig = figure(tl)
    assert fig.get_size_inches() * fig.dpi == pytest.approx((1200, 800))
    health_ax, clients_ax, strip_ax = fig.axes
    assert [line.get_label() for line in health_ax.get_lines()][:3] == [
        "health A",
        "health B",
        "health C",
    ]
    assert [line.get_label() for line in clients_ax.get_lines()] == [
        "clients on A",
        "clients on B",
        "clients on C",
    ]
    strip = {line.get_label() for line in strip_ax.get_lines()}
    assert {"failover notice", "readmit notice", "ack accepted", "ack refused"} <= strip
    assert {"plan", "readmit wave"} <= strip
    assert health_ax.get_lines()[0].get_color() == INCIDENT_COLOUR
    assert fig.get_suptitle() == "incident 01234567 on A"


def test_png_has_the_size_the_series_and_the_incident_colour(tl: Timeline, tmp_path: Path) -> None:
    needs.module("matplotlib", "report")
    from PIL import Image
    from PIL.PngImagePlugin import PngImageFile

    path = write_report(tl, tmp_path / "incident.png")
    with Image.open(path) as image:
        assert isinstance(image, PngImageFile)
        assert image.size == (1200, 800)
        text = dict(image.text)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
        # The health panel: the upper 40 % of the image, below the title.
        health_panel = pixels.crop((0, 30, 1200, 320)).getcolors(maxcolors=1 << 20)
    assert colours is not None and health_panel is not None
    assert len(colours) > 100
    counts = {rgb: n for n, rgb in health_panel}
    assert counts.get(_rgb(INCIDENT_COLOUR), 0) > 500
    # The colour a fourth server would have is not in a three-server figure.
    assert _rgb(SERVER_COLOURS[2]) not in dict((rgb, n) for n, rgb in colours)
    assert text["Title"] == "incident 01234567 on A"
    listed = text["Description"].removeprefix("series: ").split("; ")
    for label in SERIES:
        assert label in listed


def test_html_embeds_the_png_and_summarises_the_incident(tl: Timeline, tmp_path: Path) -> None:
    needs.module("matplotlib", "report")
    page = write_report(tl, tmp_path / "incident.html").read_text()
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<title>incident 01234567 on A</title>" in page
    assert "<th>clients moved</th><td>2: nas-01, nas-05</td>" in page
    assert "<th>lowest health</th><td>0.050</td>" in page
    assert "+14.0 s" in page and "+40.0 s" in page and "+52.0 s" in page
    assert "<th>waves</th><td>2 (2 clients readmitted, final wave sent)</td>" in page
    assert HOSTILE not in page
    assert "<script" not in page
    assert html_escaped(HOSTILE) in page
    assert page.count("<tr><td>") == len(tl.rows) == 8


def html_escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def test_other_suffixes_are_a_report_error_naming_the_suffixes(
    tl: Timeline, tmp_path: Path
) -> None:
    with pytest.raises(ReportError, match=r"\.png or \.html"):
        write_report(tl, tmp_path / "incident.pdf")
    assert not (tmp_path / "incident.pdf").exists()


def test_dollars_in_a_server_id_are_drawn_as_text_not_mathtext(tmp_path: Path) -> None:
    needs.module("matplotlib", "report")
    from PIL import Image
    from PIL.PngImagePlugin import PngImageFile

    server = "a$^$b"  # invalid mathtext: drawing it as such raises ValueError
    events = [
        msgspec.structs.replace(e, server=server) if isinstance(e, HealthReport | Incident) else e
        for e in incident_events()
    ]
    path = write_report(timeline(events, INCIDENT), tmp_path / "dollar.png")
    with Image.open(path) as image:
        assert isinstance(image, PngImageFile)
        assert image.text["Title"] == f"incident 01234567 on {server}"
        listed = image.text["Description"].removeprefix("series: ").split("; ")
    assert f"health {server}" in listed


def test_without_matplotlib_the_report_says_what_to_install(
    tl: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ReportError, match=re.escape("pip install 'aaa-failover[report]'")):
        figure(tl)
