"""What a recorded incident must show after chaos: plain functions over its events.

Each check takes the events read back from the stream (oldest first, as
``services.tools.recording.events_of`` gives them) and returns what is wrong,
one message per fault, naming the client, the decision and the event ids;
an empty list means the check holds. :func:`check_incidents` runs them all
for every incident of one server.

- moved: every client a FailoverPlan of the incident names was moved (an
  accepted Ack of its FailoverNotice, or a ClientStatus on another server);
- home by waves: every moved client came back by a ReadmitWave of the incident
  (a granted ReadmitNotice of wave 1 or more, acked), never by its own timer
  (a ReadmitRequest) nor by its notice running out (back home before any wave
  told it), and it ended at home;
- closed: the incident closed;
- no doubled decision: each Incident transition (state, relapse count) is
  published once; no client is moved by a second plan while the first move
  stands; no wave number carries two lists of clients, and no client is in two
  waves without a plan moving it again between; no notice acted on twice: acked
  as accepted, as a first answer (``again`` False), more than once (a re-send
  answered again, ``again`` True, is no double however often it comes);
- no lost decision: each move of each plan was followed by a FailoverNotice,
  each client of each wave by a granted ReadmitNotice of that wave; no notice the
  client acked as accepted given up by the notifier as failed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverNotice,
    FailoverPlan,
    Incident,
    ReadmitNotice,
    ReadmitRequest,
    ReadmitWave,
)
from services.notifier.deliveries import notice_id

E = TypeVar("E", bound=Event)

Findings = dict[str, list[str]]
"""Each failing check's name and its messages."""


def _of(events: Iterable[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


class _Clock:
    """Times as seconds after a reference (the incident's opening), for messages."""

    def __init__(self, origin: float) -> None:
        self.origin = origin

    def __call__(self, when: float) -> str:
        return f"{when - self.origin:+.2f}s"


def incident_ids(events: Sequence[Event], server: str) -> list[str]:
    """The incidents of ``server``, in the order they opened."""
    out: list[str] = []
    for incident in _of(events, Incident):
        if incident.server == server and incident.incident_id not in out:
            out.append(incident.incident_id)
    return out


def _plans(events: Sequence[Event], incident_id: str) -> list[FailoverPlan]:
    return [p for p in _of(events, FailoverPlan) if p.incident_id == incident_id]


def _opened_at(events: Sequence[Event], incident_id: str) -> float:
    times = [i.time for i in _of(events, Incident) if i.incident_id == incident_id]
    return min(times) if times else (events[0].time if events else 0.0)


def targeted_by(events: Sequence[Event], incident_id: str) -> dict[str, FailoverPlan]:
    """Each client a plan of the incident moves, and the first plan that moved it."""
    first: dict[str, FailoverPlan] = {}
    for plan in _plans(events, incident_id):
        for move in plan.moves:
            first.setdefault(move.client, plan)
    return first


def _accepted_acks(events: Sequence[Event], notice_ids: set[str]) -> list[Ack]:
    return [a for a in _of(events, Ack) if a.accepted and a.notice_id in notice_ids]


def wave_notices(events: Sequence[Event], incident_id: str) -> dict[str, tuple[ReadmitWave, str]]:
    """Each wave's notice to each of its clients, by the id the notifier gives it (from the
    wave's event id and the client: services/notifier/deliveries.py). A client's ack of
    that id shows the notice reached it, even where neither the stream nor a listener has
    the notice itself (sent as a cluster's stream leader was killed)."""
    return {
        notice_id(w.id, client): (w, client)
        for w in _of(events, ReadmitWave)
        if w.incident_id == incident_id and w.wave >= 1
        for client in w.clients
    }


def moved_at(events: Sequence[Event], incident_id: str) -> dict[str, tuple[float, str]]:
    """Each client of a plan of the incident that was moved: when, and the event showing it
    (an accepted Ack of its FailoverNotice, or a ClientStatus away from the server)."""
    plans = _plans(events, incident_id)
    if not plans:
        return {}
    server = plans[0].server
    targeted = targeted_by(events, incident_id)
    notices = {
        n.id: n.client
        for n in _of(events, FailoverNotice)
        if n.incident_id == incident_id and n.client in targeted
    }
    out: dict[str, tuple[float, str]] = {}
    for ack in _accepted_acks(events, set(notices)):
        if ack.now_on and ack.now_on != server and notices[ack.notice_id] == ack.client:
            out.setdefault(ack.client, (ack.time, f"ack {ack.id} of notice {ack.notice_id}"))
    for status in _of(events, ClientStatus):
        plan = targeted.get(status.client)
        if plan is None or status.time < plan.time:
            continue
        if status.current and status.current != server:
            seen = out.get(status.client)
            if seen is None or status.time < seen[0]:
                out[status.client] = (status.time, f"status {status.id} on {status.current}")
    return out


def check_moved(events: Sequence[Event], incident_id: str) -> list[str]:
    """Every client a plan of the incident names was moved."""
    at = _Clock(_opened_at(events, incident_id))
    moved = moved_at(events, incident_id)
    out = []
    for client, plan in sorted(targeted_by(events, incident_id).items()):
        if client in moved:
            continue
        notices = [
            n.id
            for n in _of(events, FailoverNotice)
            if n.incident_id == incident_id and n.client == client
        ]
        out.append(
            f"{client}: named by plan {plan.plan_id} (event {plan.id}, step {plan.step}, "
            f"{at(plan.time)}) but never moved: no accepted ack of its failover notices "
            f"{notices or '(none sent)'} and no status away from {plan.server}"
        )
    return out


def check_home_by_waves(events: Sequence[Event], incident_id: str) -> list[str]:
    """Every moved client came home by a wave of the incident, not by itself, and ended home."""
    plans = _plans(events, incident_id)
    if not plans:
        return []
    server = plans[0].server
    at = _Clock(_opened_at(events, incident_id))
    homes = {s.client: s.home for s in _of(events, ClientStatus)}
    out = []
    for client, (when, how) in sorted(moved_at(events, incident_id).items()):
        home = homes.get(client, server)
        if home != server:
            # on the server by its own failover, moved off it by the plan: it goes home to
            # its own server, which no wave of this one can readmit it to
            latest = [s for s in _of(events, ClientStatus) if s.client == client][-1:]
            if latest and latest[0].current != home:
                out.append(
                    f"{client}: homed on {home}, ended on {latest[0].current} "
                    f"(last status {latest[0].id} at {at(latest[0].time)})"
                )
            continue
        grants = [
            n
            for n in _of(events, ReadmitNotice)
            if n.incident_id == incident_id and n.client == client and n.granted and n.wave >= 1
        ]
        derived = {
            nid: w for nid, (w, c) in wave_notices(events, incident_id).items() if c == client
        }
        acks = [
            a
            for a in _accepted_acks(events, {n.id for n in grants} | set(derived))
            if a.client == client and a.now_on == server
        ]
        in_waves = sorted(
            {
                w.wave
                for w in _of(events, ReadmitWave)
                if w.incident_id == incident_id and w.wave >= 1 and client in w.clients
            }
        )
        if not acks:
            if not in_waves:
                why = "it was in no wave"
            elif not grants:
                why = f"it was in wave {in_waves} but no granted ReadmitNotice of a wave went out"
            else:
                why = f"its wave notices {[n.id for n in grants]} were never acked as accepted"
            out.append(f"{client}: moved at {at(when)} ({how}) never came home by a wave: {why}")
        for request in _of(events, ReadmitRequest):
            if request.client == client and request.server == server and request.time >= when:
                out.append(
                    f"{client}: asked to return by its own timer: ReadmitRequest {request.id} "
                    f"at {at(request.time)} (moved at {at(when)})"
                )
        told_by_ack = [derived[a.notice_id].time for a in acks if a.notice_id in derived]
        first_told = min([n.time for n in grants] + told_by_ack, default=None)
        for status in _of(events, ClientStatus):
            if status.client != client or status.time <= when or status.current != server:
                continue
            if first_told is None or status.time < first_told:
                out.append(
                    f"{client}: back on {server} on its own at {at(status.time)} "
                    f"(status {status.id}) before any wave told it"
                    + (f" (first wave notice at {at(first_told)})" if first_told else "")
                )
            break
        statuses = [s for s in _of(events, ClientStatus) if s.client == client]
        if statuses and statuses[-1].current != server:
            last = statuses[-1]
            out.append(
                f"{client}: ended on {last.current}, not home on {server} "
                f"(last status {last.id} at {at(last.time)})"
            )
    return out


def check_closed(events: Sequence[Event], incident_id: str) -> list[str]:
    """The incident closed."""
    states = [i for i in _of(events, Incident) if i.incident_id == incident_id]
    if any(i.state == "closed" for i in states):
        return []
    last = states[-1] if states else None
    where = (
        f"its last Incident was {last.state} (relapses {last.relapses}, event {last.id})"
        if last is not None
        else "no Incident event of it was recorded"
    )
    return [f"incident {incident_id} never closed: {where}"]


def check_transitions_once(events: Sequence[Event], incident_id: str) -> list[str]:
    """Each transition of the incident (state, relapse count) published once."""
    ids: dict[tuple[str, int], list[str]] = defaultdict(list)
    for incident in _of(events, Incident):
        if (
            incident.incident_id == incident_id
            and incident.id not in ids[incident.state, incident.relapses]
        ):
            ids[incident.state, incident.relapses].append(incident.id)
    return [
        f"incident {incident_id} {state} (relapses {relapses}) published {len(found)} times: "
        f"events {', '.join(found)}"
        for (state, relapses), found in ids.items()
        if len(found) > 1
    ]


def check_moved_once(events: Sequence[Event], incident_id: str) -> list[str]:
    """No client moved by a second plan of the incident while the first plan's move stood
    (it accepted that move and had not come home since)."""
    plans = _plans(events, incident_id)
    if not plans:
        return []
    server = plans[0].server
    at = _Clock(_opened_at(events, incident_id))
    by_client: dict[str, list[FailoverPlan]] = defaultdict(list)
    for plan in plans:
        for move in plan.moves:
            if all(p.plan_id != plan.plan_id for p in by_client[move.client]):
                by_client[move.client].append(plan)
    failover = {n.id for n in _of(events, FailoverNotice) if n.incident_id == incident_id}
    out = []
    for client, chosen in sorted(by_client.items()):
        acks = [a for a in _of(events, Ack) if a.client == client and a.accepted]
        for second in chosen[1:]:
            left = [
                a
                for a in acks
                if a.notice_id in failover
                and not a.again  # a re-ack repeats an old answer: no move
                and a.now_on not in ("", server)
                and chosen[0].time <= a.time < second.time
            ]
            if not left:
                continue
            stood = left[-1]
            if any(a.now_on == server and stood.time < a.time < second.time for a in acks):
                continue
            first = [p for p in chosen if p.time <= stood.time][-1]
            out.append(
                f"{client}: moved twice in incident {incident_id}: plan {first.plan_id} "
                f"(event {first.id}, step {first.step}, {at(first.time)}) moved it to "
                f"{stood.now_on} (ack {stood.id} at {at(stood.time)}), and plan "
                f"{second.plan_id} (event {second.id}, step {second.step}, {at(second.time)}) "
                f"moved it again while that move stood"
            )
    return out


def check_waves_once(events: Sequence[Event], incident_id: str) -> list[str]:
    """No wave number of the incident with two lists of clients (the final wave sent again
    with no clients is the same decision), and no client in two waves without a plan moving
    it again between them."""
    waves = [w for w in _of(events, ReadmitWave) if w.incident_id == incident_id and w.wave >= 1]
    out = []
    lists: dict[int, dict[tuple[str, ...], str]] = defaultdict(dict)
    for wave in waves:
        if wave.final and not wave.clients and lists[wave.wave]:
            continue
        lists[wave.wave].setdefault(tuple(wave.clients), wave.id)
    for number, found in sorted(lists.items()):
        if len(found) > 1:
            listed = "; ".join(f"{list(c)} (event {i})" for c, i in found.items())
            out.append(
                f"wave {number} of incident {incident_id} published with different clients: "
                + listed
            )
    plans = _plans(events, incident_id)
    first_in: dict[str, ReadmitWave] = {}
    for wave in waves:
        for client in wave.clients:
            before = first_in.get(client)
            if before is None or before.wave == wave.wave:
                first_in.setdefault(client, wave)
                continue
            moved_again = any(
                before.time < p.time < wave.time and any(m.client == client for m in p.moves)
                for p in plans
            )
            if moved_again:
                first_in[client] = wave
                continue
            out.append(
                f"{client}: readmitted twice in incident {incident_id}: wave {before.wave} "
                f"(event {before.id}) and wave {wave.wave} (event {wave.id}), no plan between"
            )
    return out


def check_acked_once(events: Sequence[Event]) -> list[str]:
    """No notice acted on twice: acked as accepted with ``again`` False (the client acted
    on it) more than once. The same notice heard again is answered again with ``again``
    True, doing nothing: such re-acks are fine however many there are.

    The notifier's Deliveries are not compared with the acks: a Delivery published while
    the bus restarts can be missing from the stream."""
    kind = {
        e.id: f"{type(e).__name__} to {e.client}"
        for e in events
        if isinstance(e, FailoverNotice | ReadmitNotice)
    }
    acted: dict[str, list[Ack]] = defaultdict(list)
    for ack in _of(events, Ack):
        if ack.accepted and not ack.again and all(a.id != ack.id for a in acted[ack.notice_id]):
            acted[ack.notice_id].append(ack)
    origin = events[0].time if events else 0.0
    return [
        f"notice {notice_id} ({kind.get(notice_id, 'not recorded')}) acted on "
        f"{len(acks)} times: acked as accepted with again=False by "
        + ", ".join(
            f"{a.client} (ack {a.id}, +{a.time - origin:.2f}s, now on {a.now_on!r})" for a in acks
        )
        for notice_id, acks in acted.items()
        if len(acks) > 1
    ]


def check_acks_heard(events: Sequence[Event]) -> list[str]:
    """No notice given up as failed by the notifier after its client acked it as accepted
    (the ack was lost on the way to the notifier)."""
    acked: dict[str, Ack] = {}
    for ack in _of(events, Ack):
        if ack.accepted:
            acked.setdefault(ack.notice_id, ack)
    return [
        f"notice {d.notice_id} to {d.client}: Delivery failed (event {d.id}, attempt "
        f"{d.attempts}) though {d.client} acked it as accepted (ack {acked[d.notice_id].id}, "
        f"{d.time - acked[d.notice_id].time:.2f}s before)"
        for d in _of(events, Delivery)
        if d.outcome == "failed" and d.notice_id in acked and acked[d.notice_id].time < d.time
    ]


def check_nothing_lost(events: Sequence[Event], incident_id: str) -> list[str]:
    """Each move of each plan followed by a FailoverNotice to its client; each client of each
    wave by a granted ReadmitNotice of that wave."""
    at = _Clock(_opened_at(events, incident_id))
    failover = [n for n in _of(events, FailoverNotice) if n.incident_id == incident_id]
    readmit = [n for n in _of(events, ReadmitNotice) if n.incident_id == incident_id]
    out = []
    for plan in _plans(events, incident_id):
        for move in plan.moves:
            if not any(n.client == move.client and n.time >= plan.time for n in failover):
                out.append(
                    f"{move.client}: moved by plan {plan.plan_id} (event {plan.id}, step "
                    f"{plan.step}, {at(plan.time)}) but no FailoverNotice to it followed"
                )
    told: set[tuple[int, str]] = set()
    acked = {a.notice_id for a in _of(events, Ack)}
    for nid, (wave, client) in wave_notices(events, incident_id).items():
        if nid in acked:
            told.add((wave.wave, client))  # its ack shows the notice reached it
    for wave in _of(events, ReadmitWave):
        if wave.incident_id != incident_id or wave.wave < 1:
            continue
        for client in wave.clients:
            if (wave.wave, client) in told:
                continue
            told.add((wave.wave, client))
            if not any(n.client == client and n.wave == wave.wave and n.granted for n in readmit):
                out.append(
                    f"{client}: in wave {wave.wave} (event {wave.id}, {at(wave.time)}) but no "
                    f"granted ReadmitNotice of that wave went to it"
                )
    return out


IncidentCheck = Callable[[Sequence[Event], str], list[str]]

INCIDENT_CHECKS: dict[str, IncidentCheck] = {
    "moved": check_moved,
    "home by waves": check_home_by_waves,
    "closed": check_closed,
    "transitions once": check_transitions_once,
    "moved once": check_moved_once,
    "waves once": check_waves_once,
    "nothing lost": check_nothing_lost,
}
"""The checks of one incident, by name."""


RUN_CHECKS: dict[str, Callable[[Sequence[Event]], list[str]]] = {
    "acked once": check_acked_once,
    "acks heard": check_acks_heard,
}
"""The checks of the whole run's notices, by name."""


def check_incidents(events: Sequence[Event], server: str) -> Findings:
    """Every check of every incident of ``server``, and of the notices' acks; only the
    checks that failed, each with its messages."""
    findings: Findings = {}
    ids = incident_ids(events, server)
    if not ids:
        findings["opened"] = [f"no incident of {server} was recorded"]
    for incident_id in ids:
        for name, check in INCIDENT_CHECKS.items():
            found = check(events, incident_id)
            if found:
                findings.setdefault(name, []).extend(found)
    for name, whole in RUN_CHECKS.items():
        found = whole(events)
        if found:
            findings[name] = found
    return findings
