"""The error every operator tool raises for a request it cannot answer."""

from __future__ import annotations

from schemas.errors import AaaFailoverError


class ToolError(AaaFailoverError):
    """What an operator asked of a tool cannot be done; the message is one line."""
