"""The project's one error base and its one shape for a rejected input.

Every error the project raises of its own derives from :class:`AaaFailoverError`,
so a caller can tell them from Python's and the libraries'. Whatever input is
refused (an event that fails a check, a RADIUS packet that is not answered,
a notice that is not well formed) is a :class:`Rejected`: a short ``reason``
that labels the counter it is dropped under, and a ``detail`` for the log.
Modules may subclass it to say where the input came from; catchers that
count drops read ``reason`` alone.
"""

from __future__ import annotations


class AaaFailoverError(Exception):
    """The base of every error aaa-failover raises of its own."""


class Rejected(AaaFailoverError):
    """An input was refused; ``reason`` is a short counter label, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
