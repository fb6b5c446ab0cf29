"""Which KV value holds each notice in flight, and when a value must be written (pure).

A notifier keeps every notice it waits an answer for in its KV bucket, so a
restarted notifier, or a replica taking over from one that died, sends it
again. The notices sent together (a plan part's, a wave's) are stored
together, :data:`CHUNK` to a value, under the id of the chunk's first notice:
a plan part of 500 notices is 4 writes, not 500. A value written before
chunks (one notice under its own id) is read as a chunk of one.

A chunk is written again when what it must hold changed:

- a notice of it was sent again or its exchange failed (its attempts and
  deadline changed: a restarted notifier must not grant it more tries, and a
  peer must not take a notice that is tended for orphaned);
- its notices in flight fell to half of what its last write held, or to none
  (the value is then removed). Between those writes the value may still hold
  notices already answered: a notifier that restarts then sends them again,
  with their ids, and their clients answer without acting twice
  (services/agent/client.py). That bounds the bytes written while thousands
  of acks come in to about twice the chunk's, instead of one rewrite per ack;
- a notice of it was answered since its last write, and its turn came
  (:meth:`Chunks.unwritten`, which the notifier writes each time its retry
  loop wakes, at least once an ack timeout): what is sent again after a
  restart is at most what was answered within that time.

A chunk's writes go out in the order they were taken (one connection), each
with what is in flight at that moment, so the last write wins and holds the
latest state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.notifier.deliveries import Pending

CHUNK = 128
"""Notices per stored value: about 1 kB each, well within the bus's 1 MB message cap."""

Stored = list[Pending] | Pending
"""A stored value: a chunk of notices, or (written before chunks) one notice."""


def notices_of(value: Stored) -> list[Pending]:
    """The notices a stored value holds."""
    return value if isinstance(value, list) else [value]


class Chunks:
    """The chunks of one notifier's notices in flight, by key."""

    def __init__(self) -> None:
        self.key_of: dict[str, str] = {}
        """The key of each notice's chunk, by notice id."""
        self.members: dict[str, list[str]] = {}
        """The notice ids each chunk holds, by key."""
        self.written: dict[str, int] = {}
        """How many notices each chunk's last write held (absent: not written yet)."""
        self.filed: dict[str, int] = {}
        """How many of each chunk's notices are still in flight (filed under it)."""
        self.behind: set[str] = set()
        """Chunks with notices answered since their last write, or whose write failed."""

    def __len__(self) -> int:
        return len(self.members)

    def add(self, notices: Iterable[Pending]) -> list[str]:
        """File notices just sent, in chunks of :data:`CHUNK`; the keys to write."""
        ids = [p.notice_id for p in notices if p.notice_id not in self.key_of]
        keys = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            keys.append(self._file(chunk[0], chunk))
        return keys

    def restore(self, key: str, notices: Iterable[Pending]) -> list[Pending]:
        """File a stored chunk read back (at start, or taken over from a notifier gone) as
        written; the notices it holds that are not filed already, to track."""
        taken = [p for p in notices if p.notice_id not in self.key_of]
        if key in self.members or not taken:
            return []
        self._file(key, [p.notice_id for p in taken])
        self.written[key] = len(taken)
        return taken

    def _file(self, key: str, ids: list[str]) -> str:
        self.members[key] = ids
        self.filed[key] = len(ids)
        for notice_id in ids:
            self.key_of[notice_id] = key
        return key

    def changed(self, notice_id: str) -> str | None:
        """A notice whose attempts or deadline changed: the key to write, if it is stored."""
        return self.key_of.get(notice_id)

    def removed(self, notice_id: str) -> str | None:
        """A notice no longer in flight: the key to write now, if its chunk fell to half of
        its last write or to nothing; None if that can wait, or if the chunk's first write
        is still to come (it will hold what is in flight then)."""
        key = self.key_of.pop(notice_id, None)
        if key is None or key not in self.filed:
            return None
        self.filed[key] -= 1
        if key not in self.written:
            return None
        if self.filed[key] * 2 <= self.written[key]:
            return key
        self.behind.add(key)
        return None

    def unwritten(self) -> list[str]:
        """The keys of chunks with notices answered since their last write, or whose last
        write failed: to write now."""
        keys, self.behind = sorted(self.behind), set()
        return keys

    def snapshot(self, key: str, live: Mapping[str, Pending]) -> list[Pending] | None:
        """What to write under ``key`` now: its notices still in flight, in the order sent;
        an empty list if the value is to be removed (the chunk is then forgotten); None if
        there is nothing to write (a chunk never written, and nothing left of it)."""
        ids = self.members.get(key)
        if ids is None:
            return None
        notices = []
        for notice_id in ids:
            if self.key_of.get(notice_id) != key:
                continue
            if notice_id in live:
                notices.append(live[notice_id])
            else:  # gone from flight, its removed() still to come (several fail at once)
                del self.key_of[notice_id]
        self.behind.discard(key)
        if notices:
            self.members[key] = [p.notice_id for p in notices]
            self.written[key] = self.filed[key] = len(notices)
            return notices
        del self.members[key], self.filed[key]
        return [] if self.written.pop(key, None) is not None else None


def orphaned(
    stored: Mapping[str, list[Pending]],
    tracked: Mapping[str, Pending],
    mine: Mapping[str, list[str]],
    now: float,
    grace_s: float,
) -> dict[str, list[Pending]]:
    """The stored chunks no live notifier tends, by key: not this notifier's (``mine``),
    none of their notices tracked here, and every one's ack timeout passed over
    ``grace_s`` ago (the notifier holding a chunk writes it again as it re-sends or
    fails a notice of it, and removes it once its notices are answered)."""
    return {
        key: notices
        for key, notices in stored.items()
        if key not in mine
        and notices
        and all(p.notice_id not in tracked and p.deadline < now - grace_s for p in notices)
    }
