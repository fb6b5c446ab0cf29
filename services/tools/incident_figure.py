"""The figure of an incident's timeline: three stacked panels on one time axis.

Health of each server with the thresholds and the incident's phases, the
clients on each server, and a strip of notices, acks, plans and waves
(matplotlib, imported only when drawing, Agg canvas without pyplot); as PNG
bytes with the title and the series named in the PNG's text chunks.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from services.tools.incident_timeline import ReportError, Timeline, plain
from services.tools.tail import utc_ms

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

MISSING_MATPLOTLIB = "aaa-failover report needs matplotlib: pip install 'aaa-failover[report]'"
FIGSIZE = (12.0, 8.0)
DPI = 100

INCIDENT_COLOUR = "#d62728"
"""The colour of the incident server (its health line and client count)."""
SERVER_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
"""The colours of the other servers, in order, repeated when there are more."""
FAILOVER_COLOUR = "#ff7f0e"
CONNECTION_COLOUR = "#17becf"
PLAN_COLOUR = "#6a3d9a"
WAVE_COLOUR = "#08519c"
PHASE_COLOURS = {"overloaded": "#ff9896", "recovering": "#98df8a"}


def _matplotlib() -> tuple[type[Figure], type[FigureCanvasAgg]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(MISSING_MATPLOTLIB) from None
    return Figure, FigureCanvasAgg


def server_colours(tl: Timeline) -> dict[str, str]:
    """The colour of each server: the incident's server in INCIDENT_COLOUR."""
    others = [s for s in [*tl.health, *tl.clients] if s != tl.server]
    colours = {tl.server: INCIDENT_COLOUR}
    for sid in dict.fromkeys(others):
        colours[sid] = SERVER_COLOURS[(len(colours) - 1) % len(SERVER_COLOURS)]
    return colours


def figure(tl: Timeline) -> Figure:
    """The report's figure: health, clients per server and an event strip on one time axis."""
    figure_type, canvas_type = _matplotlib()
    fig = figure_type(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    canvas_type(fig)
    health_ax, clients_ax, strip_ax = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3.0, 2.0, 1.6]}
    )
    colours = server_colours(tl)
    _draw_health(health_ax, tl, colours)
    _draw_clients(clients_ax, tl, colours)
    _draw_strip(strip_ax, tl)
    for ax in (health_ax, clients_ax, strip_ax):
        _shade(ax, tl, labelled=ax is health_ax)
        ax.grid(True, axis="x", alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    strip_ax.set_xlim(0.0, max(tl.end, 1.0))
    strip_ax.set_xlabel(f"seconds after {utc_ms(tl.start)}")
    fig.suptitle(tl.plot_title)
    return fig


def _shade(ax: Axes, tl: Timeline, *, labelled: bool) -> None:
    shown: set[str] = set()
    for phase in tl.phases:
        label = phase.state if labelled and phase.state not in shown else "_nolegend_"
        shown.add(phase.state)
        ax.axvspan(
            phase.start, phase.end, color=PHASE_COLOURS[phase.state], alpha=0.35, label=label
        )


def _draw_health(ax: Axes, tl: Timeline, colours: dict[str, str]) -> None:
    for sid, points in tl.health.items():
        mine = sid == tl.server
        ax.plot(
            [p.t for p in points],
            [p.health for p in points],
            color=colours[sid],
            linewidth=2.5 if mine else 1.5,
            zorder=3 if mine else 2,
            label=f"health {plain(sid)}",
        )
    for value, name, colour in (
        (tl.failover_threshold, "failover", FAILOVER_COLOUR),
        (tl.connection_threshold, "connection", CONNECTION_COLOUR),
    ):
        if value is not None:
            ax.axhline(
                value,
                color=colour,
                linestyle="--",
                linewidth=1.2,
                label=f"{name} threshold {value:.2f}",
            )
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("health")


def _draw_clients(ax: Axes, tl: Timeline, colours: dict[str, str]) -> None:
    for sid, steps in tl.clients.items():
        if not any(s.count for s in steps):
            continue
        ts = [s.t for s in steps] + [max(tl.end, steps[-1].t)]
        ns = [s.count for s in steps] + [steps[-1].count]
        ax.step(
            ts,
            ns,
            where="post",
            color=colours[sid],
            linewidth=2.5 if sid == tl.server else 1.5,
            label=f"clients on {plain(sid)}",
        )
    ax.set_ylabel("clients")
    ax.set_ylim(bottom=0.0)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


STRIP_ROWS = ("waves", "plans", "acks", "notices")


def _draw_strip(ax: Axes, tl: Timeline) -> None:
    y = {name: float(i) for i, name in enumerate(STRIP_ROWS)}
    series: list[tuple[str, list[float], str, str, str]] = [
        (
            "failover notice",
            [n.t for n in tl.notices if n.kind == "failover"],
            "notices",
            "o",
            FAILOVER_COLOUR,
        ),
        (
            "readmit notice",
            [n.t for n in tl.notices if n.kind == "readmit" and n.granted],
            "notices",
            "o",
            CONNECTION_COLOUR,
        ),
        (
            "readmit deferred",
            [n.t for n in tl.notices if n.kind == "readmit" and not n.granted],
            "notices",
            "D",
            "#8c6d31",
        ),
        ("ack accepted", [a.t for a in tl.acks if a.accepted], "acks", "^", "#006d2c"),
        ("ack refused", [a.t for a in tl.acks if not a.accepted], "acks", "x", "#000000"),
        ("plan", [p.t for p in tl.plans], "plans", "v", PLAN_COLOUR),
        ("readmit wave", [w.t for w in tl.waves], "waves", "s", WAVE_COLOUR),
    ]
    for label, ts, row, marker, colour in series:
        if ts:
            ax.plot(
                ts,
                [y[row]] * len(ts),
                linestyle="none",
                marker=marker,
                markersize=7,
                color=colour,
                alpha=0.8,
                label=label,
            )
    for plan in tl.plans:
        ax.axvline(plan.t, color=PLAN_COLOUR, linewidth=0.8, alpha=0.5)
        ax.annotate(
            f"{plan.moves} move{'' if plan.moves == 1 else 's'}",
            (plan.t, y["plans"]),
            xytext=(4, 5),
            textcoords="offset points",
            fontsize="x-small",
        )
    for wave in tl.waves:
        ax.axvline(wave.t, color=WAVE_COLOUR, linewidth=0.8, alpha=0.5)
        text = f"w{wave.wave}: {wave.clients}" + (" final" if wave.final else "")
        ax.annotate(
            text,
            (wave.t, y["waves"]),
            xytext=(4, 5),
            textcoords="offset points",
            fontsize="x-small",
        )
    ax.set_yticks([y[name] for name in STRIP_ROWS], list(STRIP_ROWS))
    ax.set_ylim(-0.6, len(STRIP_ROWS) - 0.4)


def series_labels(fig: Figure) -> list[str]:
    """The label of every plotted series of ``fig``, in panel order, each once."""
    labels: list[str] = []
    for ax in fig.axes:
        labels.extend(ax.get_legend_handles_labels()[1])
    return list(dict.fromkeys(labels))


def png_metadata(tl: Timeline, fig: Figure) -> dict[str, str]:
    """The PNG text chunks: the title and, in Description, ``series: a; b; ...``."""
    labels = [label.replace(r"\$", "$") for label in series_labels(fig)]
    return {"Title": tl.title, "Description": "series: " + "; ".join(labels)}


def png_bytes(tl: Timeline) -> bytes:
    """The figure of ``tl`` as PNG bytes, with its metadata."""
    fig = figure(tl)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=png_metadata(tl, fig))
    return buffer.getvalue()
