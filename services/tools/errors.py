"""The error every operator tool raises for a request it cannot answer."""

from __future__ import annotations


class ToolError(Exception):
    """What an operator asked of a tool cannot be done; the message is one line."""
