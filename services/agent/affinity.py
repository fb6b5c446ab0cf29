"""Which upstream holds each EAP conversation in progress (plain data, no clock of its own).

An EAP conversation (PEAP, TTLS, EAP-TLS) is a run of Access-Request /
Access-Challenge round trips tied together by the ``State`` attribute: each
Access-Challenge carries a fresh ``State`` that the next Access-Request
echoes, and only the home server that issued it holds the session it names
(FreeRADIUS: "No EAP session matching state" anywhere else). So the proxy
remembers, for each ``State`` an upstream issued, which upstream it was, and
sends the request that carries it there, whichever upstream new
conversations go to. An Access-Accept or Access-Reject ends the
conversation; an entry not used for ``ttl_s`` (FreeRADIUS's EAP
``timer_expire`` is 60 s) is forgotten, and at most ``max_entries`` are
kept, the oldest forgotten first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

TTL_S = 60.0
MAX_ENTRIES = 65536


@dataclass(frozen=True)
class _Held:
    server: str
    expires: float


class Conversations:
    """The conversations in progress, by the ``State`` their upstream last issued."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be positive and max_entries at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._by_state: OrderedDict[bytes, _Held] = OrderedDict()
        self._per_server: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_state)

    def _drop(self, state: bytes) -> None:
        held = self._by_state.pop(state, None)
        if held is not None:
            self._per_server[held.server] -= 1

    def _expire(self, now: float) -> None:
        while self._by_state:
            state, held = next(iter(self._by_state.items()))
            if held.expires > now and len(self._by_state) <= self.max_entries:
                return
            self._drop(state)

    def issued(self, state: bytes, server: str, now: float) -> None:
        """``server`` answered with an Access-Challenge carrying ``state``."""
        self._drop(state)
        self._by_state[state] = _Held(server, now + self.ttl_s)
        self._per_server[server] += 1
        self._expire(now)

    def holder(self, state: bytes, now: float) -> str | None:
        """The upstream that issued ``state``, if the conversation is still in progress."""
        self._expire(now)
        held = self._by_state.get(state)
        return None if held is None else held.server

    def answered(self, state: bytes) -> None:
        """The request that carried ``state`` was answered: that round is over (a challenge
        that goes on with the conversation brings a new ``State``)."""
        self._drop(state)

    def held_by(self, server: str, now: float) -> int:
        """How many conversations in progress ``server`` holds."""
        self._expire(now)
        return self._per_server[server]
