"""An incident's report as one self-contained HTML page: its summary, its figure
embedded as a PNG data URI, and a table of the decision events."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from services.tools.incident_figure import DPI, FIGSIZE
from services.tools.incident_timeline import Timeline, num
from services.tools.tail import utc_ms


def _when(tl: Timeline, t: float) -> str:
    return f"{utc_ms(tl.start + t)} (+{t:.1f} s)"


def summary_items(tl: Timeline) -> list[tuple[str, str]]:
    """The incident's summary as (name, value) pairs, not escaped."""
    items = [("incident", tl.incident_id), ("server", tl.server)]
    for state in ("opened", "recovering", "closed"):
        change = tl.first(state)
        items.append((state, _when(tl, change.t) if change else "-"))
    items += [
        ("relapses", str(tl.relapses)),
        ("lowest health", num(tl.lowest_health)),
        (
            "thresholds",
            f"failover {num(tl.failover_threshold)}, connection {num(tl.connection_threshold)}",
        ),
        ("plans", f"{len(tl.plans)} ({sum(p.moves for p in tl.plans)} moves)"),
        ("clients moved", _names(tl.moved)),
        ("clients returned", _names(tl.returned)),
        (
            "waves",
            f"{sum(1 for w in tl.waves if w.wave > 0)} "
            f"({sum(w.clients for w in tl.waves)} clients readmitted"
            + (", final wave sent)" if any(w.final for w in tl.waves) else ")"),
        ),
        (
            "acks",
            f"{sum(a.accepted for a in tl.acks)} accepted, "
            f"{sum(not a.accepted for a in tl.acks)} refused",
        ),
        ("window", f"{utc_ms(tl.start)} to {utc_ms(tl.start + tl.end)}"),
    ]
    return items


def _names(names: Sequence[str]) -> str:
    return f"{len(names)}" + (f": {', '.join(names)}" if names else "")


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.mono { font-family: monospace; white-space: pre-wrap; }
img { max-width: 100%; height: auto; }
"""


def html_page(tl: Timeline, png: bytes) -> str:
    """One self-contained HTML page: summary, the figure as a data URI, the decisions."""
    e = html.escape
    summary_rows = "\n".join(
        f"<tr><th>{e(name)}</th><td>{e(value)}</td></tr>" for name, value in summary_items(tl)
    )
    decision_rows = "\n".join(
        f"<tr><td>{e(_when(tl, row.t))}</td><td>{e(row.event)}</td>"
        f'<td class="mono">{e(row.summary)}</td></tr>'
        for row in tl.rows
    )
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(tl.title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{e(tl.title)}</h1>
<h2>Summary</h2>
<table class="summary">
{summary_rows}
</table>
<h2>Timeline</h2>
<img alt="{e(tl.title)}" width="{int(FIGSIZE[0] * DPI)}" height="{int(FIGSIZE[1] * DPI)}"
 src="data:image/png;base64,{image}">
<h2>Decisions</h2>
<table class="decisions">
<tr><th>time</th><th>event</th><th>summary</th></tr>
{decision_rows}
</table>
</body>
</html>
"""
