"""`aaa-failover report`: the picture of one incident, for a post-mortem.

The incident's :func:`~services.tools.incident_timeline.timeline`, drawn by
``incident_figure``, written by :func:`write_report` as a PNG, or as one
self-contained HTML page (``incident_page``) with the PNG embedded, a summary
and a table of the decision events.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.tools.incident_figure import png_bytes
from services.tools.incident_page import html_page
from services.tools.incident_timeline import ReportError, Timeline

logger = logging.getLogger(__name__)

SUFFIXES = (".png", ".html")


def write_report(tl: Timeline, path: Path) -> Path:
    """Write the report of ``tl`` to ``path``: a ``.png`` figure or a ``.html`` page."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ReportError(
            f"cannot write a report as {path.name!r}: the file name must end in "
            + " or ".join(SUFFIXES)
        )
    data = png_bytes(tl)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        path.write_bytes(data)
    else:
        path.write_text(html_page(tl, data), encoding="utf-8")
    logger.info("report of incident %s written to %s", tl.incident_id, path)
    return path
