"""Staged readmission of one server's clients: pure decisions over plain data.

A :class:`Readmission` is what the readmitter knows of one server's incident:
the clients moved away (in plan order), those readmitted, the next wave
number and when the last wave went out. The functions here take it and a
time ``now`` and return a new one or a decision; they do no I/O and read no
clock, so the service can persist every state and tests can drive them alone.

Rules:

- A wave goes out only while the incident is ``recovering``, not sooner than
  ``wave_interval_s`` after the previous wave, and only when the latest health
  is at or above the connection threshold. Its size is decided by
  :mod:`services.readmitter.sizing` (fixed, or by what the previous wave
  cost); its clients are those that asked to return first, in the order they
  asked, then the others, first moved first back.
- A client a wave readmits is ``returning`` until it is heard home (its ack
  or status says it is on its home server). One whose readmission notice
  failed (the notifier gave up) is away again, for a later wave.
- The final wave holds no clients (the evaluator closes the incident on it):
  it goes once nobody is away and every returning client is heard home, or
  ``confirm_timeout_s`` after the last wave if some never are (an agent gone
  for good; its client returns by its own notice validity). So an incident
  never closes while a client it readmitted may still be away. Until the
  incident is known closed, the final wave is sent again every
  ``wave_interval_s``: an evaluator that was down when it first went out
  closes the incident when it is back.
- A client's own request is granted when the server has no incident in
  progress and health is at or above the connection threshold. During an
  incident it is deferred: while the incident is opened or health is low, for
  ``retry_after_s``; while it is recovering, a client still away is put
  first in the next wave and told to ask again a wave interval after that
  wave is due, so staging is kept and the asking clients come back first
  (one that asked while the incident was opened is first in the first wave).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import msgspec

from schemas.events import IncidentState, ReadmitWave
from services.readmitter.sizing import Measuring, Size, WaveCost, observed

KEPT_COSTS = 8
"""The waves whose cost a readmission keeps (the latest; sizing reads the last measured)."""


class Readmission(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """The readmission state of one server's current (or last) incident.

    The clients are stored as tuples (in order: plan order, wave order, the order they
    asked); whether a client is among them is looked up in a set of each, built once per
    state (``away_set``, ...) and handed on by :func:`evolve` to the next state while the
    tuple is the same. The sets are not stored.
    """

    server: str
    incident_id: str
    state: IncidentState = "opened"
    away: tuple[str, ...] = ()
    readmitted: tuple[str, ...] = ()
    next_wave: int = 1
    last_wave_at: float | None = None
    final_sent: bool = False
    returning: tuple[str, ...] = ()
    asked: tuple[str, ...] = ()
    costs: tuple[WaveCost, ...] = ()
    # Stored only: the waves written with this state that the stream may not have yet
    # (services/readmitter/service.py publishes them, then clears them).
    outbox: tuple[ReadmitWave, ...] = ()

    @cached_property
    def away_set(self) -> frozenset[str]:
        """The clients of ``away``, to look one up."""
        return frozenset(self.away)

    @cached_property
    def readmitted_set(self) -> frozenset[str]:
        """The clients of ``readmitted``, to look one up."""
        return frozenset(self.readmitted)

    @cached_property
    def returning_set(self) -> frozenset[str]:
        """The clients of ``returning``, to look one up."""
        return frozenset(self.returning)

    @cached_property
    def asked_set(self) -> frozenset[str]:
        """The clients of ``asked``, to look one up."""
        return frozenset(self.asked)


_INDEXES = {
    "away": "away_set",
    "readmitted": "readmitted_set",
    "returning": "returning_set",
    "asked": "asked_set",
}
"""Each client tuple of a Readmission and the set that indexes it."""


def evolve(current: Readmission, **changes: Any) -> Readmission:
    """``current`` with ``changes``, keeping the sets already built of the tuples it keeps
    (a changed tuple's set is built when first looked up)."""
    after = msgspec.structs.replace(current, **changes)
    built = current.__dict__
    kept = after.__dict__
    for field, name in _INDEXES.items():
        if name in built and getattr(after, field) is getattr(current, field):
            kept[name] = built[name]
    return after


class Wave(msgspec.Struct, frozen=True, kw_only=True):
    """Send wave number ``wave`` readmitting ``clients`` now."""

    wave: int
    clients: tuple[str, ...]
    final: bool
    reason: str


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """The next wave is due at ``until`` (spacing between waves)."""

    until: float
    reason: str


class Paused(msgspec.Struct, frozen=True, kw_only=True):
    """No wave may go out now, for ``reason`` (health or incident state)."""

    reason: str


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """The final wave has gone out; nothing is left to do for this incident."""

    reason: str


Decision = Wave | Wait | Paused | Done


class RequestAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to one client's own readmission request (if deferred, when to ask again)."""

    granted: bool
    reason: str
    retry_after_s: float = 0.0


def on_incident(
    current: Readmission | None, *, server: str, incident_id: str, state: IncidentState
) -> Readmission:
    """The state after an Incident event of ``server``.

    A new incident id starts a new readmission; clients still away from an
    earlier incident stay away (they are readmitted with the new one). A
    relapse to ``opened`` re-arms the final wave and forgets what the waves
    cost, so readmission starts small again.
    """
    if current is None or current.incident_id != incident_id:
        away = current.away if current is not None else ()
        return Readmission(server=server, incident_id=incident_id, state=state, away=away)
    if state == "opened":
        return evolve(current, state=state, final_sent=False, costs=())
    return evolve(current, state=state)


def record_plan(
    current: Readmission | None, *, server: str, incident_id: str, clients: list[str]
) -> Readmission:
    """The state after a FailoverPlan moving ``clients`` off ``server``.

    Clients join ``away`` in plan order, each once; a client moved again
    after it was readmitted is away again. A plan of an incident not seen yet
    starts its readmission in state ``opened``.
    """
    if current is None or current.incident_id != incident_id:
        current = on_incident(current, server=server, incident_id=incident_id, state="opened")
    moved = set(clients)
    return evolve(
        current,
        away=_with(current.away, current.away_set, clients),
        readmitted=_without(current.readmitted, current.readmitted_set, moved),
        returning=_without(current.returning, current.returning_set, moved),
    )


def _with(
    clients: tuple[str, ...], members: frozenset[str], more: Iterable[str]
) -> tuple[str, ...]:
    """``clients`` and then those of ``more`` not among them yet, in order, each once (the
    same tuple if there are none)."""
    new = [c for c in dict.fromkeys(more) if c not in members]
    return (*clients, *new) if new else clients


def _without(clients: tuple[str, ...], members: frozenset[str], gone: set[str]) -> tuple[str, ...]:
    """``clients`` less those in ``gone`` (the same tuple if none of them is there)."""
    if members.isdisjoint(gone):
        return clients
    return tuple(c for c in clients if c not in gone)


def next_wave(
    current: Readmission,
    *,
    now: float,
    health: float | None,
    connection_threshold: float,
    size: Size | Measuring | Callable[[], Size | Measuring],
    wave_interval_s: float,
    confirm_timeout_s: float = 30.0,
) -> Decision:
    """What to do about the next wave of ``current`` at time ``now``, of ``size``.

    The incident state is checked first, then the spacing since the last wave
    (not before the final wave, which readmits no one: only before it goes
    again), then the latest health, then whether the size is known, so the
    health that lets a wave go is the one known when the wave is due. ``size``
    may be a function giving it, called only once a wave of clients may go.
    """
    if isinstance(size, Size) and size.clients < 1:
        raise ValueError("a wave must bring at least 1 client")
    if current.final_sent and current.state != "recovering":
        return Done(reason=f"final wave of incident {current.incident_id} sent")
    if current.state != "recovering":
        return Paused(reason=f"incident {current.incident_id} is {current.state}")
    due = None if current.last_wave_at is None else current.last_wave_at + wave_interval_s
    spacing = None
    if due is not None and now < due:
        spacing = Wait(until=due, reason=f"next wave due {due - now:.2f}s from now")
    if current.final_sent:
        if spacing is not None:
            return spacing
        reason = f"final wave again: incident {current.incident_id} not known closed yet"
        return Wave(wave=current.next_wave - 1, clients=(), final=True, reason=reason)
    if current.away and spacing is not None:
        return spacing
    if health is None:
        return Paused(reason="no health report yet")
    if health < connection_threshold:
        return Paused(
            reason=f"health {health:.2f} below connection threshold {connection_threshold:.2f}"
        )
    above = f"health {health:.2f} >= connection threshold {connection_threshold:.2f}"
    if not current.away:
        return _final(current, now=now, confirm_timeout_s=confirm_timeout_s, above=above)
    if callable(size):
        size = size()
        if isinstance(size, Size) and size.clients < 1:
            raise ValueError("a wave must bring at least 1 client")
    if isinstance(size, Measuring):
        return Paused(reason=size.reason)
    clients = queue(current)[: size.clients]
    if len(clients) == len(current.away):
        why = f"last {len(clients)} of the clients away"
    else:
        why = f"{len(clients)} of {len(current.away)} clients away"
    asked = sum(1 for c in clients if c in current.asked_set)
    if asked:
        why += f" ({asked} that asked first)"
    reason = f"{above}; {why}; {size.reason}"
    return Wave(wave=current.next_wave, clients=clients, final=False, reason=reason)


def queue(current: Readmission) -> tuple[str, ...]:
    """The clients away in the order waves bring them back: those that asked first."""
    away = current.away_set
    asked = tuple(c for c in current.asked if c in away)
    if not asked:
        return current.away
    first = set(asked)
    return (*asked, *(c for c in current.away if c not in first))


def observe(current: Readmission, health: float, *, now: float, settle_s: float) -> Readmission:
    """The state after a health report at ``now``: one more measure of the last wave's
    cost, while the incident is recovering and from ``settle_s`` after the wave."""
    if current.state != "recovering" or not current.costs or current.final_sent:
        return current
    *before, last = current.costs
    if now < last.at + settle_s:
        return current
    return evolve(current, costs=(*before, observed(last, health)))


def _final(current: Readmission, *, now: float, confirm_timeout_s: float, above: str) -> Decision:
    """Nobody is away: the final wave once every returning client is heard home (or the
    wait for them is over), else the wait."""
    if not current.returning:
        why = "every client readmitted is home" if current.readmitted else "no clients away"
        return Wave(wave=current.next_wave, clients=(), final=True, reason=f"{above}; {why}")
    until = (current.last_wave_at or now) + confirm_timeout_s
    if now < until:
        return Wait(
            until=until,
            reason=f"{len(current.returning)} clients readmitted, not heard home yet",
        )
    unheard = ", ".join(current.returning)
    reason = f"{above}; not heard home {confirm_timeout_s:g}s after their wave: {unheard}"
    return Wave(wave=current.next_wave, clients=(), final=True, reason=reason)


def settles_only(before: Readmission, after: Readmission) -> bool:
    """Whether ``after`` differs from ``before`` only in what decides no wave: fewer
    clients ``returning`` (heard home) and the measures of the last wave's cost."""
    if not after.returning_set <= before.returning_set:
        return False
    return evolve(after, returning=before.returning, costs=before.costs) == before


def arrived(current: Readmission, client: str) -> Readmission:
    """The state once ``client`` is heard on its home server."""
    if client not in current.returning_set:
        return current
    returning = tuple(c for c in current.returning if c != client)
    return evolve(current, returning=returning)


def not_returned(current: Readmission, client: str) -> Readmission:
    """The state once ``client``'s readmission notice failed: away again, for a later wave
    (the final wave goes again only after it, if it had gone)."""
    if client not in current.returning_set or current.state == "closed":
        return current
    return evolve(
        current,
        away=current.away if client in current.away_set else (*current.away, client),
        returning=tuple(c for c in current.returning if c != client),
        readmitted=tuple(c for c in current.readmitted if c != client),
        final_sent=False,
    )


def record_wave(
    current: Readmission,
    wave: Wave,
    *,
    now: float,
    load: float = 0.0,
    health: float | None = None,
) -> Readmission:
    """The state after ``wave`` went out at ``now``, with ``health`` the latest before it
    and ``load`` the request rate its clients bring (the start of its cost)."""
    sent = set(wave.clients)
    costs = current.costs
    if wave.clients:
        cost = WaveCost(
            wave=wave.wave, clients=len(wave.clients), load=load, health_before=health, at=now
        )
        costs = (*costs, cost)[-KEPT_COSTS:]
    return evolve(
        current,
        away=_without(current.away, current.away_set, sent),
        asked=_without(current.asked, current.asked_set, sent),
        readmitted=_with(current.readmitted, current.readmitted_set, wave.clients),
        returning=_with(current.returning, current.returning_set, wave.clients),
        next_wave=max(current.next_wave, wave.wave + 1),
        last_wave_at=now,
        final_sent=current.final_sent or wave.final,
        costs=costs,
    )


def answer_request(
    current: Readmission | None,
    *,
    client: str,
    health: float | None,
    connection_threshold: float,
    now: float,
    wave_interval_s: float,
    retry_after_s: float,
    wave_capacity: int = 0,
) -> tuple[RequestAnswer, Readmission | None]:
    """Grant or defer ``client``'s own request to return; the state after it.

    Granted when no incident is in progress (no state, or closed), or the
    incident is recovering and the client is not among those away, and the
    latest health is at or above the connection threshold. A client away
    from a recovering incident is deferred to the next wave, first in it (with
    those that asked before it); one away from an opened incident is
    deferred, and first in its first wave. With ``wave_capacity`` (the most a
    wave takes) a client behind that many others who asked is told to ask
    again when its own wave is due, not at the next one: thousands asking at
    once would otherwise ask again at every wave.
    """

    def deferred(reason: str, retry: float = retry_after_s) -> RequestAnswer:
        return RequestAnswer(granted=False, reason=reason, retry_after_s=retry)

    if current is not None and current.state == "opened":
        reason = f"incident {current.incident_id} is opened"
        if client in current.away_set and client not in current.asked_set:
            current = evolve(current, asked=(*current.asked, client))
        return deferred(reason), current
    if health is None:
        return deferred("no health report yet"), current
    if health < connection_threshold:
        reason = f"health {health:.2f} below connection threshold {connection_threshold:.2f}"
        return deferred(reason), current
    if current is not None and current.state == "recovering" and client in current.away_set:
        due = now if current.last_wave_at is None else current.last_wave_at + wave_interval_s
        asked = current.asked if client in current.asked_set else (*current.asked, client)
        position = asked.index(client)
        ahead = position // wave_capacity if wave_capacity > 0 else 0
        retry = max(due - now, 0.0) + (ahead + 1) * max(wave_interval_s, 1.0)
        reason = (
            f"incident {current.incident_id} recovering in waves: {client} is "
            f"{position + 1} of {len(asked)} asked, first in the waves"
        )
        return deferred(reason, retry), evolve(current, asked=asked)
    if current is not None and current.state == "recovering":
        reason = f"incident {current.incident_id} recovering, {client} not among those away"
    else:
        reason = "no incident in progress"
    reason += f"; health {health:.2f} >= connection threshold {connection_threshold:.2f}"
    answer = RequestAnswer(granted=True, reason=reason)
    if current is None or client not in current.away_set:
        return answer, current
    readmitted = current.readmitted
    if client not in current.readmitted_set:
        readmitted = (*readmitted, client)
    away = tuple(c for c in current.away if c != client)
    return answer, evolve(current, away=away, readmitted=readmitted)
