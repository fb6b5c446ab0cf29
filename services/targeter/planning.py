"""Failover planning: which clients of an overloaded server move, how many, and where to.

Pure and fast: a plan is made from the registry's clients, a view of every
server (its latest health, capacity and whether it is in an incident) and the
targeter's config, with no I/O.

How many: the share of the server's load to shed is proportional to how far
its health is below the failover threshold (``gain`` times the deficit, like
the reduction percentage of Diameter overload control, RFC 7683), and one
step moves at most ``max_share`` of its clients (like Envoy's
``max_ejection_percent``). A mandatory service down, or a server that does
not answer at all, sheds every client whatever the cap.

Which ones: each policy of ``targeter.policy`` is a sort key, applied in the
order listed, then the client's priority (lower moves first), then its id.
``list`` makes only the listed clients eligible, in list order; ``group``
ranks by device group and takes whole groups; ``topology`` either ranks the
clients that have an alternate with room in their own site first
(``nearest``) or ranks by site and takes whole sites (``site``); ``all``
adds no key.

Where to: an alternate's room is ``capacity * (health - failover threshold)``
less what this plan already sends it. A server in an incident, of unknown
health or without room for a client never gets it. Each client goes to the
candidate with the largest part of its room still free (under ``nearest``, one
in its own site if any has room for it), so alternates receive clients in
proportion to their headroom. A chosen client that fits nowhere is unplaced;
if no alternate has room at all, nobody moves: the overload is never moved
elsewhere.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from schemas.events import FailoverPlan, Move, deficit
from services.runtime.config import TargeterConfig
from services.targeter.registry import ClientRecord

MAX_ALTERNATES = 8
"""The most alternates one move lists: the chosen one, then the next by room."""

SLACK = 1e-9
"""Rounding allowed when a client's load is checked against room (part of capacity)."""


class ServerView(msgspec.Struct, frozen=True, kw_only=True):
    """One server as the planner sees it: latest health (None: unknown), room, incident."""

    id: str
    site: str = ""
    health: float | None = None
    failover_threshold: float
    in_incident: bool = False
    capacity_rps: float | None = None


class Pressure(msgspec.Struct, frozen=True, kw_only=True):
    """The overloaded server's state: its health, threshold and what limits its health."""

    health: float
    failover_threshold: float
    limiting: str = ""


def shed_all_cause(pressure: Pressure) -> str | None:
    """Why every client must move whatever the cap, or None when the shed is proportional."""
    if pressure.limiting.startswith("service:"):
        return f"mandatory service {pressure.limiting.removeprefix('service:')} is down"
    if pressure.limiting == "status":
        return "the server does not answer Status-Server"
    return None


def step_cap(cfg: TargeterConfig, candidates: int) -> int:
    """The most clients one step may move out of ``candidates``."""
    if candidates == 0:
        return 0
    return max(1, math.floor(cfg.max_share * candidates))


class _Alternate:
    """A server that may take clients, with the room it has left in this plan.

    ``left`` is the part of its initial room still free: clients go where it
    is largest, which spreads them in proportion to the servers' headroom.
    """

    __slots__ = ("capacity", "health", "id", "initial", "left", "room", "site")

    def __init__(self, view: ServerView, capacity: float) -> None:
        assert view.health is not None
        self.id = view.id
        self.site = view.site
        self.health = view.health
        self.capacity = capacity
        self.initial = capacity * (view.health - view.failover_threshold)
        self.room = self.initial
        self.left = 1.0 if self.initial > 0 else 0.0

    def fits(self, load: float) -> bool:
        return self.room > 0 and self.room + SLACK * self.capacity >= load

    def take(self, load: float) -> None:
        self.room -= load
        self.left = self.room / self.initial

    def describe(self) -> str:
        return (
            f"{self.id}: room {self.room:.0f} rps of capacity {self.capacity:.0f} "
            f"at health {self.health:.2f} ({self.left:.0%} of its room free)"
        )


_Entry = tuple[float, str]


class _Board:
    """The alternates' remaining room: a heap by free part for "any server", scans for lists."""

    def __init__(self, alternates: dict[str, _Alternate]) -> None:
        self.alternates = alternates
        self.by_id = sorted(alternates)
        self._heap = [(-a.left, a.id) for a in alternates.values() if a.room > 0]
        heapq.heapify(self._heap)
        self._site_heaps: dict[str, list[_Entry]] = {}

    def _site_heap(self, site: str) -> list[_Entry]:
        heap = self._site_heaps.get(site)
        if heap is None:
            heap = [(-a.left, a.id) for a in self.alternates.values() if a.site == site]
            heapq.heapify(heap)
            self._site_heaps[site] = heap
        return heap

    def best_of(self, ids: Sequence[str], load: float, site: str) -> _Alternate | None:
        """The alternate among ``ids`` (in the client's order) with most room free for ``load``.

        With ``site``, one in that site wins over any elsewhere.
        """
        best: _Alternate | None = None
        best_key = (False, 0.0)
        for sid in ids:
            alt = self.alternates[sid]
            if not alt.fits(load):
                continue
            key = (bool(site) and alt.site == site, alt.left)
            if best is None or key > best_key:
                best, best_key = alt, key
        return best

    def best_any(self, load: float, site: str, order: Mapping[str, int]) -> _Alternate | None:
        """The alternate with most room free for ``load`` (ties: ``order``, then id).

        With ``site``, one in that site wins over any elsewhere.
        """
        if site:
            near = self._best_in(self._site_heap(site), load, order)
            if near is not None:
                return near
        return self._best_in(self._heap, load, order)

    def _best_in(
        self, heap: list[_Entry], load: float, order: Mapping[str, int]
    ) -> _Alternate | None:
        """The best fitting alternate of ``heap``; stale entries are dropped on the way."""
        popped: list[_Entry] = []
        tied: list[str] = []
        best = 0.0
        while heap:
            entry = heapq.heappop(heap)
            alt = self.alternates[entry[1]]
            if -entry[0] != alt.left or alt.room <= 0:
                continue
            if tied and alt.left < best:
                heapq.heappush(heap, entry)
                break
            popped.append(entry)
            if alt.fits(load) and (not tied or alt.left == best):
                if not tied:
                    best = alt.left
                if alt.id not in tied:
                    tied.append(alt.id)
        for entry in dict.fromkeys(popped):
            heapq.heappush(heap, entry)
        if not tied:
            return None
        last = len(order)
        return self.alternates[min(tied, key=lambda sid: (order.get(sid, last), sid))]

    def take(self, alt: _Alternate, load: float) -> None:
        """Send ``load`` to ``alt``."""
        if load == 0:
            return
        alt.take(load)
        if alt.room <= 0:
            return
        entry = (-alt.left, alt.id)
        heapq.heappush(self._heap, entry)
        site_heap = self._site_heaps.get(alt.site)
        if site_heap is not None:
            heapq.heappush(site_heap, entry)

    def others(
        self, ids: Iterable[str], chosen: str, load: float, order: Mapping[str, int]
    ) -> list[str]:
        """Those of ``ids`` but ``chosen`` with room for ``load``: by room, ``order``, id."""
        fitting = [a for sid in ids if sid != chosen and (a := self.alternates[sid]).fits(load)]
        last = len(order)
        fitting.sort(key=lambda a: (-a.room, order.get(a.id, last), a.id))
        return [a.id for a in fitting[: MAX_ALTERNATES - 1]]


class _Ranking:
    """The sort keys of the policies, and how each explains a client's place."""

    def __init__(
        self,
        cfg: TargeterConfig,
        candidates: list[ClientRecord],
        board: _Board,
        include_unlisted: bool,
    ) -> None:
        self.cfg = cfg
        self.listed = {cid: i for i, cid in enumerate(dict.fromkeys(cfg.clients))}
        self.group_rank = _ranks(cfg.groups, (c.group for c in candidates))
        self.site_rank = _ranks(cfg.sites, (c.site for c in candidates))
        self.include_unlisted = include_unlisted
        self.nearest = "topology" in cfg.policy and cfg.topology == "nearest"
        self.unit_of: Callable[[ClientRecord], str] | None = None
        for policy in cfg.policy:
            if policy == "group":
                self.unit_of = _group_of
                break
            if policy == "topology" and cfg.topology == "site":
                self.unit_of = _site_of
                break
        self._board = board
        self._near_cache: dict[tuple[str, str, tuple[str, ...]], bool] = {}
        self._near_sites = {a.site for a in board.alternates.values() if a.site and a.room > 0}

    def eligible(self, client: ClientRecord) -> bool:
        return self.include_unlisted or "list" not in self.cfg.policy or client.id in self.listed

    def has_near(self, client: ClientRecord) -> bool:
        """Whether an alternate of ``client`` in its own site has room now."""
        site = client.site
        if not site or site not in self._near_sites:
            return False
        if client.alternates_from == "notice":
            return True
        key = (site, client.alternates_from, client.alternates)
        near = self._near_cache.get(key)
        if near is None:
            alts = self._board.alternates
            near = any(
                (a := alts.get(sid)) is not None and a.site == site and a.room > 0
                for sid in client.alternates
            )
            self._near_cache[key] = near
        return near

    def sort(self, clients: list[ClientRecord]) -> list[ClientRecord]:
        """``clients`` in the order they move."""
        columns: list[list[Any]] = []
        unlisted = len(self.listed)
        for policy in self.cfg.policy:
            if policy == "list":
                columns.append([self.listed.get(c.id, unlisted) for c in clients])
            elif policy == "group":
                columns.append([self.group_rank[c.group] for c in clients])
            elif policy == "topology" and self.cfg.topology == "site":
                columns.append([self.site_rank[c.site] for c in clients])
            elif policy == "topology":
                columns.append([not self.has_near(c) for c in clients])
        columns.append([c.priority for c in clients])
        columns.append([c.id for c in clients])
        keys = list(zip(*columns, strict=True))
        return [clients[i] for i in sorted(range(len(clients)), key=keys.__getitem__)]

    def why(self, client: ClientRecord, rank: int) -> str:
        """Why ``client`` was chosen, at ``rank`` (1 = first to move)."""
        parts = [f"policy {'+'.join(self.cfg.policy)}: rank {rank}"]
        for policy in self.cfg.policy:
            if policy == "list":
                if client.id in self.listed:
                    parts.append(f"listed at {self.listed[client.id] + 1}")
                else:
                    parts.append("not listed")
            elif policy == "group":
                parts.append(
                    f"group {client.group or '-'} (group rank {self.group_rank[client.group] + 1})"
                )
            elif policy == "topology" and self.cfg.topology == "site":
                parts.append(
                    f"site {client.site or '-'} (site rank {self.site_rank[client.site] + 1})"
                )
            elif policy == "topology":
                near = "has" if self.has_near(client) else "has no"
                parts.append(f"site {client.site or '-'} {near} alternate with room")
        parts.append(f"priority {client.priority}")
        return ", ".join(parts)


def _group_of(client: ClientRecord) -> str:
    return client.group


def _site_of(client: ClientRecord) -> str:
    return client.site


def _ranks(configured: Sequence[str], present: Iterable[str]) -> dict[str, int]:
    """Rank of each name: its place in ``configured``, then the others alphabetically."""
    ranks = {name: i for i, name in enumerate(dict.fromkeys(configured))}
    for name in sorted(set(present) - ranks.keys()):
        ranks[name] = len(ranks)
    return ranks


def _alternates(
    server: str, servers: Mapping[str, ServerView], capacity: float
) -> dict[str, _Alternate]:
    """The servers that may take clients: not ``server``, not in an incident, health known."""
    return {
        sid: _Alternate(view, view.capacity_rps if view.capacity_rps is not None else capacity)
        for sid, view in servers.items()
        if sid != server and not view.in_incident and view.health is not None
    }


def plan_failover(
    server: str,
    incident_id: str,
    pressure: Pressure,
    clients: Iterable[ClientRecord],
    servers: Mapping[str, ServerView],
    cfg: TargeterConfig,
    *,
    step: int = 1,
    default_capacity_rps: float | None = None,
    source: str = "",
    away: Iterable[ClientRecord] = (),
) -> FailoverPlan:
    """The next step of moving clients of ``server`` off it: who, how many, where to.

    ``away`` are clients of ``server`` that already left it by their own
    failover: each is kept where it went (a move to the server it is on),
    outside the share and the cap, so that readmission brings it back in a
    wave like any other.
    """
    kept = [_keep(c) for c in away if c.home == server and c.current != server]
    candidates = [c for c in clients if c.current == server]
    n = len(candidates)
    load = sum(c.load for c in candidates)
    d = deficit(pressure.health, pressure.failover_threshold)
    cap = step_cap(cfg, n)
    cause = shed_all_cause(pressure)
    share = 1.0 if cause is not None else min(1.0, cfg.gain * d)

    def plan(moves: list[Move], unplaced: list[str], moved: float, reason: str) -> FailoverPlan:
        if kept:
            reason += f"; {len(kept)} already left by their own failover, kept where they are"
        return FailoverPlan(
            source=source,
            incident_id=incident_id,
            server=server,
            moves=[*kept, *moves],
            unplaced=unplaced,
            reason=f"step {step}: {reason}",
            step=step,
            health=pressure.health,
            deficit=d,
            share=share,
            cap=cap,
            load=load,
            moved_load=moved,
        )

    if cause is not None:
        head = f"{cause}; shed all {n} clients, {load:.0f} rps (cap {cap} does not apply)"
        limit = n
    else:
        health = f"health {pressure.health:.2f}"
        if d <= 0:
            return plan([], [], 0.0, f"{health} is not below {pressure.failover_threshold:.2f}")
        head = (
            f"{health} is {d:.0%} below {pressure.failover_threshold:.2f}; "
            f"shed {share:.0%} of {load:.0f} rps (cap {cap} of {n} clients)"
        )
        limit = cap
    if n == 0:
        return plan([], [], 0.0, f"{head}; no clients are on {server}")

    capacity = (
        default_capacity_rps if default_capacity_rps is not None else cfg.default_capacity_rps
    )
    board = _Board(_alternates(server, servers, capacity))
    ranking = _Ranking(cfg, candidates, board, include_unlisted=cause is not None)
    eligible = [c for c in candidates if ranking.eligible(c)]
    if len(eligible) < n:
        head += f"; {len(eligible)} of {n} listed"
    ranked = ranking.sort(eligible)

    target = share * load
    moves: list[Move] = []
    unplaced: list[str] = []
    moved = 0.0
    taken = 0
    for unit in _units(ranked, ranking.unit_of):
        if taken >= limit or (cause is None and taken > 0 and moved >= target):
            break
        room_left = limit - taken
        cut = len(unit) > room_left
        for client in unit[:room_left]:
            taken += 1
            why = ranking.why(client, taken)
            if cut and ranking.unit_of is not None:
                what = "group" if ranking.unit_of is _group_of else "site"
                why += f"; {what} cut by the cap ({room_left} of {len(unit)} taken)"
            if cause is not None:
                why += f"; all move: {cause}"
            move = _place(client, why, board, ranking.nearest)
            if move is None:
                unplaced.append(client.id)
            else:
                moves.append(move)
                moved += move.load
    return plan(moves, unplaced, moved, f"{head}; {_outcome(moves, unplaced, moved)}")


def _units(
    ranked: list[ClientRecord], unit_of: Callable[[ClientRecord], str] | None
) -> list[list[ClientRecord]]:
    """``ranked`` cut into what is taken whole: groups or sites by first member, else clients."""
    if unit_of is None:
        return [[c] for c in ranked]
    units: dict[str, list[ClientRecord]] = {}
    for client in ranked:
        units.setdefault(unit_of(client), []).append(client)
    return list(units.values())


def _place(client: ClientRecord, why: str, board: _Board, nearest: bool) -> Move | None:
    """The move of ``client`` to the alternate with most room free, or None if none fits."""
    load = client.load
    site = client.site if nearest else ""
    order = {sid: i for i, sid in enumerate(client.alternates)}
    if client.alternates_from == "client":
        ids: Sequence[str] = [sid for sid in client.alternates if sid in board.alternates]
        chosen = board.best_of(ids, load, site)
    else:
        chosen = board.best_any(load, site, order)
        ids = board.by_id
    if chosen is None:
        return None
    where = chosen.describe()
    if site and chosen.site == site:
        where += f", in the client's site {site}"
    board.take(chosen, load)
    return Move(
        client=client.id,
        alternates=[chosen.id, *board.others(ids, chosen.id, load, order)],
        why=why,
        where=where,
        load=load,
    )


def _keep(client: ClientRecord) -> Move:
    """The move that keeps ``client`` on the server its own failover took it to."""
    return Move(
        client=client.id,
        alternates=[client.current],
        why=f"left {client.home} by its own failover",
        where=f"{client.current}, where it went by itself",
        load=client.load,
    )


def _outcome(moves: list[Move], unplaced: list[str], moved: float) -> str:
    if not moves and unplaced:
        return f"no alternate has room for any of the {len(unplaced)} chosen clients: none moves"
    counts: dict[str, int] = {}
    for move in moves:
        counts[move.alternates[0]] = counts.get(move.alternates[0], 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    named = [f"{sid} ({count})" for sid, count in ranked]
    where = " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
    text = f"moved {len(moves)} clients, {moved:.0f} rps" + (f", to {where}" if where else "")
    if unplaced:
        text += f"; {len(unplaced)} unplaced (no alternate with room)"
    return text


MOVES_PER_PART = 500


def step_plan_id(server: str, incident_id: str, step: int) -> str:
    """The plan id of step ``step`` of ``server``'s incident: the same each time that step is
    planned, so a targeter that planned it again after a restart (it had published the
    plan, not yet stored that it had) sends the same events, which the stream stores
    once (``Nats-Msg-Id``) and the notifier and agents take once."""
    return hashlib.blake2b(f"{server}/{incident_id}/{step}".encode(), digest_size=16).hexdigest()


def part_id(plan_id: str, part: int) -> str:
    """The event id of part ``part`` of the plan ``plan_id``."""
    return hashlib.blake2b(f"{plan_id}/part/{part}".encode(), digest_size=16).hexdigest()


def split_plan(plan: FailoverPlan, per_part: int = MOVES_PER_PART) -> list[FailoverPlan]:
    """``plan`` as events of at most ``per_part`` moves and unplaced clients each.

    NATS caps a message at 1 MB by default; a plan for thousands of clients
    travels in parts that share the plan id and summary. Each part's event id
    comes from the plan id and its number (:func:`part_id`).
    """
    entries: list[Move | str] = [*plan.moves, *plan.unplaced]
    if len(entries) <= per_part:
        return [msgspec.structs.replace(plan, id=part_id(plan.plan_id, 1))]
    chunks = [entries[i : i + per_part] for i in range(0, len(entries), per_part)]
    return [
        msgspec.structs.replace(
            plan,
            id=part_id(plan.plan_id, number),  # each part is an event of its own
            moves=[e for e in chunk if isinstance(e, Move)],
            unplaced=[e for e in chunk if isinstance(e, str)],
            part=number,
            parts=len(chunks),
        )
        for number, chunk in enumerate(chunks, start=1)
    ]
