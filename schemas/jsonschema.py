"""JSON Schema of every event, for tools in other languages.

`aaa-failover schema` writes one file per event under ``schemas/json/``,
named by the event's tag.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from schemas.events import EVENT_TYPES

JSON_DIR = Path(__file__).parent / "json"


def event_schemas() -> dict[str, str]:
    """File name -> JSON text, for every event type."""
    out: dict[str, str] = {}
    for event_type in EVENT_TYPES:
        tag = event_type.__struct_config__.tag
        schema = msgspec.json.schema(event_type)
        out[f"{tag}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write every event's schema under ``directory``; remove stale ones."""
    directory.mkdir(parents=True, exist_ok=True)
    schemas = event_schemas()
    for old in directory.glob("*.json"):
        if old.name not in schemas:
            old.unlink()
    written = []
    for name, text in schemas.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
