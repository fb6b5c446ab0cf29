"""JSON Schema of every event, for tools in other languages.

`aaa-failover schema` writes one file per event under ``schemas/json/``,
named by the event's tag; `aaa-failover schema --check` names the files that
no longer describe the events.

A description is the event's docstring with its indentation removed, whatever
the msgspec release does with it, and a check compares descriptions by their
words: a library that lays a docstring out anew does not make a schema stale,
a changed field, type, default or docstring does.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import EVENT_TYPES

JSON_DIR = Path(__file__).parent / "json"


def event_schemas() -> dict[str, str]:
    """File name -> JSON text, for every event type."""
    out: dict[str, str] = {}
    for event_type in EVENT_TYPES:
        tag = event_type.__struct_config__.tag
        schema = _map_descriptions(msgspec.json.schema(event_type), inspect.cleandoc)
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


def stale_schemas(directory: Path = JSON_DIR) -> list[str]:
    """The file names under ``directory`` that are missing, left over, unreadable, or
    describe an event otherwise than it is now; empty when the files are current."""
    expected = {name: _canonical(json.loads(text)) for name, text in event_schemas().items()}
    on_disk = {path.name: path for path in directory.glob("*.json")}
    stale = list(set(expected) ^ set(on_disk))
    for name in set(expected) & set(on_disk):
        try:
            current = _canonical(json.loads(on_disk[name].read_text()))
        except (OSError, UnicodeDecodeError, ValueError):
            current = None
        if current != expected[name]:
            stale.append(name)
    return sorted(stale)


def _canonical(schema: Any) -> Any:
    """``schema`` with every description reduced to its words, one space apart."""
    return _map_descriptions(schema, lambda text: " ".join(text.split()))


def _map_descriptions(node: Any, change: Callable[[str], str]) -> Any:
    if isinstance(node, dict):
        return {
            key: change(value)
            if key == "description" and isinstance(value, str)
            else _map_descriptions(value, change)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_map_descriptions(item, change) for item in node]
    return node
