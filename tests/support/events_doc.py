"""The worked examples of docs/events.md: its fenced python blocks, found by their first line."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def code_block(marker: str) -> str:
    """The fenced python block of docs/events.md whose first line is ``# <marker>``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if b.startswith(f"# {marker}")]
    assert len(found) == 1, f"expected one block starting with '# {marker}' in {DOC}"
    return found[0]
