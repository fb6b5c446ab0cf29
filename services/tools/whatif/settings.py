"""What-if settings: ``section.field=value`` assignments applied to a config and checked."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from typing import Any

import msgspec

from services.runtime.config import Config, ConfigError

SECTIONS = ("collector", "evaluator", "targeter", "readmitter")
"""The config sections whose fields ``--set`` may change."""

_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _parse_value(text: str) -> Any:
    """A TOML value (scalar or array); a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.match(text):
            return text
        raise ValueError(f"{text!r} is not a TOML value") from None


def apply_settings(config: Config, assignments: Sequence[str]) -> Config:
    """``config`` with each ``section.field=value`` set, checked as a config file would be.

    Sections: collector, evaluator, targeter, readmitter; a nested field is
    named with more dots (``evaluator.weights.cpu=0.5``). A value is a TOML
    value (``0.1``, ``3``, ``true``, ``"site"``, ``["a", "b"]``), or a bare
    word taken as a string. Every assignment is applied, then the whole config
    is validated once, so related fields may change together (both
    thresholds). Raises ConfigError with one line.
    """
    if not assignments:
        return config
    data = msgspec.to_builtins(config)
    for assignment in assignments:
        key, eq, raw = assignment.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise ConfigError(f"--set {assignment!r}: expected section.field=value")
        path = key.split(".")
        if len(path) < 2 or not all(path):
            raise ConfigError(f"--set {assignment!r}: expected section.field=value")
        if path[0] not in SECTIONS:
            raise ConfigError(
                f"--set {assignment!r}: unknown section {path[0]!r} (one of {', '.join(SECTIONS)})"
            )
        node = data[path[0]]
        for depth, name in enumerate(path[1:], start=1):
            if not isinstance(node, dict) or name not in node:
                where = ".".join(path[:depth])
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ConfigError(
                    f"--set {assignment!r}: {where} has no field {name!r} (fields: {known})"
                )
            if depth < len(path) - 1:
                node = node[name]
        try:
            node[path[-1]] = _parse_value(raw)
        except ValueError as exc:
            raise ConfigError(f"--set {assignment!r}: {exc}") from None
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"--set {' '.join(assignments)}: {exc}") from None
