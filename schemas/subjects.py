"""NATS subject builders: every subject of the flow lives under one prefix.

The default prefix is ``aaa``; tests and replay sandboxes use others. Ids of
servers and clients are single subject tokens (letters, digits, ``_``, ``-``).
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WILDCARD = "*"

SERVER_KINDS = frozenset({"metrics", "health", "incident", "plan", "request", "readmit", "control"})
"""Kinds of subject whose last token is a server id."""
CLIENT_KINDS = frozenset({"notice", "delivery", "ack", "status"})
"""Kinds of subject whose last token is a client id."""

NAMED_BY_KIND = dict.fromkeys(CLIENT_KINDS, "client") | dict.fromkeys(SERVER_KINDS, "server")
"""What the last token of each kind of subject names: ``aaa.status.nas-01`` is about the
client ``nas-01``, ``aaa.plan.A`` about the server ``A``; the event on it must name the same."""


def kind_of(subject: str) -> str:
    """The kind of ``subject``: ``plan`` for ``aaa.plan.A`` (the token before the last)."""
    parts = subject.rsplit(".", 2)
    return parts[1] if len(parts) == 3 else ""


def named_in(subject: str) -> tuple[str, str] | None:
    """``(field, id)``: the event field the subject's last token names and its value
    (``("client", "nas-01")`` for ``aaa.status.nas-01``), or None for another subject."""
    parts = subject.rsplit(".", 2)
    if len(parts) < 3:
        return None
    field = NAMED_BY_KIND.get(parts[1])
    return None if field is None else (field, parts[2])


def check_token(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid single subject token, else raise ValueError."""
    if value != WILDCARD and not TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 of letters, digits, '_' or '-'")
    return value


def overlaps(prefix: str, other: str) -> bool:
    """Whether the subjects of two prefixes can meet: one prefix is the other or is under it."""
    a, b = prefix.split("."), other.split(".")
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


class Subjects:
    """The subjects of one deployment, built from its prefix."""

    def __init__(self, prefix: str = "aaa") -> None:
        for part in prefix.split("."):
            check_token(part, "subject prefix part")
        self.prefix = prefix

    def _subject(self, kind: str, token: str) -> str:
        return f"{self.prefix}.{kind}.{check_token(token)}"

    @property
    def all(self) -> str:
        return f"{self.prefix}.>"

    def metrics(self, server: str) -> str:
        return self._subject("metrics", server)

    def health(self, server: str) -> str:
        return self._subject("health", server)

    def incident(self, server: str) -> str:
        return self._subject("incident", server)

    def plan(self, server: str) -> str:
        return self._subject("plan", server)

    def notice(self, client: str) -> str:
        return self._subject("notice", client)

    def delivery(self, client: str) -> str:
        return self._subject("delivery", client)

    def ack(self, client: str) -> str:
        return self._subject("ack", client)

    def status(self, client: str) -> str:
        return self._subject("status", client)

    def request(self, server: str) -> str:
        return self._subject("request", server)

    def readmit(self, server: str) -> str:
        return self._subject("readmit", server)

    def control(self, server: str) -> str:
        return self._subject("control", server)

    def rehome(self, subject: str, prefix: str) -> str:
        """``subject`` of this prefix moved under ``prefix`` (a replay sandbox's)."""
        if not subject.startswith(self.prefix + "."):
            raise ValueError(f"{subject!r} is not under {self.prefix!r}")
        return prefix + subject[len(self.prefix) :]

    def stream_name(self) -> str:
        """The JetStream stream that captures every subject of this prefix."""
        return self.prefix.replace(".", "_").upper()
