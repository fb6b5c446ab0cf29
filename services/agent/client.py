"""The state of one AAA client and how it answers notices and timers (pure, no I/O).

A notice reaches these functions only after its authenticator was verified
and it was decoded. :func:`on_notice` rejects it (wrong client, expired, old
sequence number, a server the client does not know), re-acknowledges a
repeat of the last notice without acting again, or acts on it: a failover
notice for the current server switches to the first usable alternate (named
by id, its address taken from the client's own configuration) and arms a
jittered return timer; a readmission
notice brings the client home or re-arms the timer. :func:`on_time` says when
to ask to return home, and brings the client home on its own once the last
notice's validity is over, at a jittered moment after it (so no client is
stranded if the system is gone, and the clients of one server do not all
come back at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from schemas.events import Endpoint, FailoverNotice, ReadmitNotice

RejectReason = Literal["wrong-client", "expired", "old-seq", "unknown-server"]


class Uniform(Protocol):
    """A source of random numbers (``random.Random`` in service, seeded in tests)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Answer:
    """What an Ack says about a notice."""

    accepted: bool
    now_on: str
    reason: str = ""


@dataclass(frozen=True)
class ClientState:
    """Where one client is, what it last accepted, and its timers.

    ``return_at`` is when it asks to return home; ``stay_until`` is when the
    validity of the last notice that keeps it away from home is over.
    """

    client: str
    home: Endpoint
    current: Endpoint
    return_after_s: float
    jitter: float
    last_seq: int = 0
    last_notice_id: str | None = None
    last_answer: Answer | None = None
    return_at: float | None = None
    stay_until: float | None = None

    @property
    def away(self) -> bool:
        return self.current.server != self.home.server


def new_state(client: str, home: Endpoint, *, return_after_s: float, jitter: float) -> ClientState:
    """A client at home with no notice seen yet."""
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    return ClientState(
        client=client, home=home, current=home, return_after_s=return_after_s, jitter=jitter
    )


def jittered(base_s: float, jitter: float, rng: Uniform) -> float:
    """``base_s`` spread by a factor uniform in [1 - jitter, 1 + jitter]."""
    return base_s * (1 + rng.uniform(-jitter, jitter))


@dataclass(frozen=True)
class Step:
    """The outcome of a notice: the new state and what to tell the notifier.

    ``rejected`` names the reason of a rejection (counted by the agent);
    ``ack`` is None when the notice must go unanswered; ``reack`` marks a
    repeat of the last accepted notice; ``switched`` a change of server.
    """

    state: ClientState
    ack: Answer | None
    rejected: RejectReason | None = None
    reack: bool = False
    switched: bool = False


def on_notice(
    state: ClientState,
    notice: FailoverNotice | ReadmitNotice,
    now: float,
    rng: Uniform,
    servers: Mapping[str, Endpoint],
) -> Step:
    """Decide what a verified, decoded notice does to ``state`` at time ``now``.

    ``servers`` are the servers of the client's own configuration: a notice
    naming any other (as its server or an alternate) is refused whole, as
    ``unknown-server``, and changes nothing.
    """
    if notice.client != state.client:
        return Step(state, None, rejected="wrong-client")
    if notice.id == state.last_notice_id and state.last_answer is not None:
        return Step(state, state.last_answer, reack=True)
    if now > notice.valid_until:
        answer = Answer(False, state.current.server, "expired")
        return Step(state, answer, rejected="expired")
    if notice.seq <= state.last_seq:
        answer = Answer(False, state.current.server, "old-seq")
        return Step(state, answer, rejected="old-seq")
    named = [notice.server, *notice.alternates] if isinstance(notice, FailoverNotice) else []
    if any(sid not in servers for sid in named):
        answer = Answer(False, state.current.server, "unknown-server")
        return Step(state, answer, rejected="unknown-server")
    if isinstance(notice, FailoverNotice):
        new, answer = _failover(state, notice, now, rng, servers)
    else:
        new, answer = _readmit(state, notice, now, rng)
    new = replace(new, last_seq=notice.seq, last_notice_id=notice.id, last_answer=answer)
    return Step(new, answer, switched=new.current != state.current)


def _failover(
    state: ClientState,
    notice: FailoverNotice,
    now: float,
    rng: Uniform,
    servers: Mapping[str, Endpoint],
) -> tuple[ClientState, Answer]:
    if notice.server != state.current.server:
        return state, Answer(False, state.current.server, "not-on-server")
    sid = next((s for s in notice.alternates if s != state.current.server), None)
    if sid is None:
        return state, Answer(False, state.current.server, "no-alternate")
    target = servers[sid]
    if target.server == state.home.server:
        return _at_home(state, target), Answer(True, target.server, "home")
    stay_until = max(_lease_end(notice, now, state.jitter, rng), state.stay_until or 0.0)
    new = replace(
        state,
        current=target,
        return_at=now + jittered(state.return_after_s, state.jitter, rng),
        stay_until=stay_until,
    )
    return new, Answer(True, target.server)


def _readmit(
    state: ClientState, notice: ReadmitNotice, now: float, rng: Uniform
) -> tuple[ClientState, Answer]:
    if notice.server != state.home.server:
        return state, Answer(False, state.current.server, "not-home")
    if notice.granted:
        return _at_home(state, state.home), Answer(True, state.home.server)
    if not state.away:
        return state, Answer(False, state.current.server, "already-home")
    new = replace(
        state,
        return_at=now + jittered(notice.retry_after_s, state.jitter, rng),
        stay_until=max(_lease_end(notice, now, state.jitter, rng), state.stay_until or 0.0),
    )
    return new, Answer(True, state.current.server, "deferred")


def _lease_end(
    notice: FailoverNotice | ReadmitNotice, now: float, jitter: float, rng: Uniform
) -> float:
    """When a client that hears nothing more goes home on its own: once ``notice`` is
    void, and up to ``jitter`` of its validity later, so that the clients of one server,
    told together, do not all come back together (as Diameter overload reports expire)."""
    validity = max(0.0, notice.valid_until - now)
    return notice.valid_until + validity * rng.uniform(0.0, jitter)


def _at_home(state: ClientState, home: Endpoint) -> ClientState:
    return replace(state, home=home, current=home, return_at=None, stay_until=None)


TimeAction = Literal["request-return", "lease-over"]


@dataclass(frozen=True)
class Tick:
    """The outcome of time passing: the new state and what happened, if anything."""

    state: ClientState
    action: TimeAction | None = None


def on_time(state: ClientState, now: float, rng: Uniform) -> Tick:
    """Act on the timers of ``state`` at ``now``.

    Past ``stay_until`` the client goes home on its own (``lease-over``);
    past ``return_at`` it asks to return (``request-return``) and re-arms the
    timer, so it keeps asking until it is answered.
    """
    if not state.away:
        if state.return_at is not None or state.stay_until is not None:
            return Tick(replace(state, return_at=None, stay_until=None))
        return Tick(state)
    if state.stay_until is not None and now > state.stay_until:
        return Tick(_at_home(state, state.home), "lease-over")
    if state.return_at is not None and now >= state.return_at:
        again = now + jittered(state.return_after_s, state.jitter, rng)
        return Tick(replace(state, return_at=again), "request-return")
    return Tick(state)


def next_wakeup(state: ClientState) -> float | None:
    """The earliest time at which :func:`on_time` may act, or None."""
    times = [t for t in (state.return_at, state.stay_until) if t is not None]
    return min(times) if times else None
