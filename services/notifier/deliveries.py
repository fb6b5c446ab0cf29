"""Delivery tracking of notices, and their per-client sequence numbers (pure, no I/O).

A notice is *sent*, *retried* (the same bytes again) each time no Ack came
within the ack timeout, *acked* when its client answers, and *failed* after
the last retry went unanswered. Every step yields the :class:`Delivery`
event that reports it, so nothing is lost without a trace.

A transport that answers by itself (RADIUS CoA) runs an *exchange* per try:
while it runs the notice is not due (``begin_exchange``), each of its
retransmissions is reported as *retried* (``retransmitted``), a CoA-ACK
settles it like an Ack, and a failed exchange (``exchange_failed``) makes it
due again after the ack timeout, to be tried again like any other, or fails
it when that was its last try.
``attempts`` counts transmissions, ``rounds`` the tries the retry budget
limits (the same for the bus, where each try is one transmission).

Notices sent together (the parts of one plan, one wave: their ``batch``)
are answered together too, and a client side that takes thousands of them at
once answers the last ones seconds after the first. So a notice whose ack
timeout passed is not sent again while acks of its batch keep coming: it is
due an ack timeout after the latest of them. Only a batch whose acks stopped
for a whole ack timeout has its unanswered notices sent again; a notice
alone in its batch is retried at its timeout as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas.events import Delivery

Outcome = Literal["sent", "retried", "acked", "failed"]


class Pending(msgspec.Struct, kw_only=True):
    """One notice waiting for its Ack, with the exact message to send again."""

    notice_id: str
    notice_type: str
    client: str
    server: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    first_sent: float
    attempts: int = 1
    rounds: int = 1
    deadline: float
    batch: str = ""
    """The notices sent together with it (the id of the plan part or wave), if known."""


@dataclass(frozen=True)
class Retry:
    """Send ``pending`` again (its attempts already counted) and report ``delivery``."""

    pending: Pending
    delivery: Delivery


@dataclass(frozen=True)
class Failed:
    """``pending`` got no Ack after its last retry; report ``delivery``."""

    pending: Pending
    delivery: Delivery


class DeliveryTracker:
    """The notices in flight of one notifier, by notice id."""

    def __init__(self, *, ack_timeout_s: float, retries: int, source: str = "") -> None:
        if ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.ack_timeout_s = ack_timeout_s
        self.retries = retries
        self.source = source
        self.pending: dict[str, Pending] = {}
        self.exchanging: set[str] = set()
        self.acks_of: dict[str, float] = {}
        """When each batch still in flight last had a notice acked."""

    def __len__(self) -> int:
        return len(self.pending)

    def _delivery(
        self, p: Pending, outcome: Outcome, now: float, latency_s: float | None = None
    ) -> Delivery:
        return Delivery(
            notice_id=p.notice_id,
            notice_type=p.notice_type,
            client=p.client,
            server=p.server,
            outcome=outcome,
            attempts=p.attempts,
            latency_s=latency_s,
            time=now,
            source=self.source,
        )

    def sent(
        self,
        *,
        notice_id: str,
        notice_type: str,
        client: str,
        server: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        now: float,
        batch: str = "",
    ) -> tuple[Pending, Delivery]:
        """Track a notice just sent; the Pending to keep and the ``sent`` Delivery."""
        pending = Pending(
            notice_id=notice_id,
            notice_type=notice_type,
            client=client,
            server=server,
            subject=subject,
            payload=payload,
            headers=dict(headers),
            first_sent=now,
            deadline=now + self.ack_timeout_s,
            batch=batch,
        )
        self.pending[notice_id] = pending
        return pending, self._delivery(pending, "sent", now)

    def wait_after(self, rounds: int) -> float:
        """How long to wait for the Ack of a notice sent ``rounds`` times: the ack timeout,
        doubled at each re-send (so a client that is restarting hears one of them)."""
        return float(self.ack_timeout_s * 2 ** min(rounds - 1, 16))

    def restore(self, pending: Pending) -> None:
        """Track again a notice that was in flight before a restart."""
        self.pending[pending.notice_id] = pending

    def acked(self, notice_id: str, client: str, now: float) -> Delivery | None:
        """The ``acked`` Delivery of an Ack, or None if no such notice waits for this client."""
        pending = self.pending.get(notice_id)
        if pending is None or pending.client != client:
            return None
        del self.pending[notice_id]
        self.exchanging.discard(notice_id)
        if pending.batch:
            self.acks_of[pending.batch] = max(now, self.acks_of.get(pending.batch, now))
        return self._delivery(pending, "acked", now, latency_s=max(0.0, now - pending.first_sent))

    def begin_exchange(self, notice_id: str, now: float, hold_s: float) -> Pending | None:
        """Mark a notice as in an exchange; it is due again only after ``hold_s``.

        The hold matters after a restart only (exchanges are not restored):
        then the notice is tried again once it has passed.
        """
        pending = self.pending.get(notice_id)
        if pending is None:
            return None
        self.exchanging.add(notice_id)
        pending.deadline = now + max(hold_s, self.ack_timeout_s)
        return pending

    def retransmitted(self, notice_id: str, now: float) -> Delivery | None:
        """The ``retried`` Delivery of one retransmission within an exchange."""
        pending = self.pending.get(notice_id)
        if pending is None:
            return None
        pending.attempts += 1
        return self._delivery(pending, "retried", now)

    def exchange_failed(self, notice_id: str, now: float) -> Pending | Failed | None:
        """An exchange ended unanswered or refused.

        With retries left the notice is due again after the ack timeout (the
        Pending to keep is returned); after the last one it has failed.
        """
        pending = self.pending.get(notice_id)
        self.exchanging.discard(notice_id)
        if pending is None:
            return None
        if pending.rounds > self.retries:
            del self.pending[notice_id]
            return Failed(pending, self._delivery(pending, "failed", now))
        pending.deadline = now + self.ack_timeout_s
        return pending

    def fail(self, notice_id: str, now: float) -> Delivery | None:
        """Give up on a notice at once (it cannot be sent at all): its ``failed`` Delivery."""
        pending = self.pending.pop(notice_id, None)
        self.exchanging.discard(notice_id)
        if pending is None:
            return None
        return self._delivery(pending, "failed", now)

    def due(self, now: float) -> list[Retry | Failed]:
        """What to do about every notice whose ack timeout has passed, oldest first (a
        notice of a batch still being acked waits: see the module)."""
        actions: list[Retry | Failed] = []
        expired = sorted(
            (
                p
                for p in self.pending.values()
                if p.deadline <= now and p.notice_id not in self.exchanging
            ),
            key=lambda p: p.deadline,
        )
        self._forget_batches()
        for pending in expired:
            acked_at = self.acks_of.get(pending.batch) if pending.batch else None
            if acked_at is not None and acked_at + self.ack_timeout_s > now:
                pending.deadline = acked_at + self.ack_timeout_s
                continue
            if pending.rounds > self.retries:
                del self.pending[pending.notice_id]
                actions.append(Failed(pending, self._delivery(pending, "failed", now)))
            else:
                pending.attempts += 1
                pending.rounds += 1
                pending.deadline = now + self.wait_after(pending.rounds)
                actions.append(Retry(pending, self._delivery(pending, "retried", now)))
        return actions

    def _forget_batches(self) -> None:
        """Drop the ack times of batches with nothing left in flight."""
        if self.acks_of:
            live = {p.batch for p in self.pending.values()}
            for batch in [b for b in self.acks_of if b not in live]:
                del self.acks_of[batch]

    def next_deadline(self) -> float | None:
        """When the next ack timeout passes, or None with nothing due later."""
        return min(
            (p.deadline for p in self.pending.values() if p.notice_id not in self.exchanging),
            default=None,
        )


def notice_id(decision_id: str, client: str) -> str:
    """The id of the notice a plan's or a wave's event ``decision_id`` sends ``client``: the
    same each time that decision is handled (offered again after a restart), so the
    agent takes it once and the notifier tracks it once."""
    return hashlib.blake2b(f"{decision_id}/{client}".encode(), digest_size=16).hexdigest()


class Sequencer:
    """Sequence numbers that grow strictly per client, across restarts.

    A number is the time in microseconds, bumped past the last one given to
    the same client; a restarted notifier starts from a later clock.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def next(self, client: str, now: float) -> int:
        seq = max(int(now * 1_000_000), self.last.get(client, 0) + 1)
        self.last[client] = seq
        return seq
