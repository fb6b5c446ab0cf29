"""A reference server's multi-round conversations, bound to the server that began them.

With ``challenge_rounds`` set, a reference server answers an Access-Request
that carries no ``State`` with an Access-Challenge and a fresh ``State``, and
each request that echoes it with the next challenge, until the last round is
decided by the password, as an EAP method runs over several round trips. The
session lives only in the server that issued its ``State``: another server
answers that request with Access-Reject, as FreeRADIUS does ("No EAP session
matching state"). Plain data behind a lock: workers are threads.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Literal

TTL_S = 60.0
MAX_SESSIONS = 65536

Step = Literal["challenge", "decide", "unknown"]


class ChallengeSessions:
    """The conversations in progress on one server: ``State`` -> rounds still to go."""

    def __init__(self, rounds: int, ttl_s: float = TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        if rounds < 1 or ttl_s <= 0 or max_sessions < 1:
            raise ValueError("rounds, ttl_s and max_sessions must be positive")
        self.rounds = rounds
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def step(self, state: bytes | None, now: float) -> tuple[Step, bytes | None]:
        """What to answer a request carrying ``state`` (None: a new conversation): a
        challenge with the new State, the decision by password, or an unknown session."""
        with self._lock:
            while self._sessions:
                oldest, (_, expires) = next(iter(self._sessions.items()))
                if expires > now and len(self._sessions) < self.max_sessions:
                    break
                del self._sessions[oldest]
            if state is None:
                left = self.rounds
            elif state in self._sessions:
                left = self._sessions.pop(state)[0]
            else:
                return "unknown", None
            if left <= 0:
                return "decide", None
            issued = secrets.token_bytes(16)
            self._sessions[issued] = (left - 1, now + self.ttl_s)
            return "challenge", issued
