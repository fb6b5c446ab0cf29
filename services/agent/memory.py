"""What an agent remembers of each client across a restart, in a file of its own.

A notice's sequence number protects a client from a captured notice sent
again, but only as long as the client remembers the last one it accepted: a
restarted agent that forgot it would take a replayed CoA as new. So before an
agent acknowledges a notice, it writes down where the client is, the last
sequence number and notice it accepted (with the answer a repeat gets), and
the client's timers; a restarted agent starts from there.

One file per client (``<state_dir>/<client>.json``), a journal of JSON lines:
the latest line is the client's memory. A change is one line appended before
the ack, and synced (``fdatasync``) after it (:meth:`MemoryFile.detach`): a
line written survives the agent's own crash as soon as it is written, and
only a crash of the host can lose it unsynced. So each line also carries
the host's boot id: a memory written under another boot is taken with its
sequence floor raised to the agent's start time, as for an unreadable file
(below), and nothing issued before the host restarted can pass. The disk's
sync, 0.5-1 ms on a loaded machine, is then off the path between a notice
and its ack. Where the boot id cannot be read, each line is synced before
the ack. Every :data:`COMPACT_AFTER` lines, and at the first write after a
start that found a line torn by a crash (or a file of another form), the
file is replaced atomically (written beside, synced, renamed) with the
latest line alone, so it stays small and a torn line is never appended to;
a file of whole lines, or none, is appended to from the first write (a
thousands of clients' agent would otherwise sync a file per client, in the
loop, at its first notice after a start). A last line without its newline
is such a torn write: the line before it is read. A
file of one JSON object without a newline (written before the journal) reads
as that object. What cannot be read is logged and set aside (renamed
``.bad``), and the client starts at home with its sequence floor at the
agent's start time: notice sequence numbers are microseconds of the
notifier's clock, so nothing issued before the restart can pass.

:func:`remembered` and :func:`restored` convert to and from the pure
:class:`~services.agent.client.ClientState`; :class:`MemoryFile` does the I/O.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import msgspec

from schemas.errors import AaaFailoverError
from schemas.events import Endpoint
from services.agent.client import Answer, ClientState

logger = logging.getLogger(__name__)


class RememberedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The answer given to the last notice accepted, given again to a repeat of it."""

    accepted: bool
    now_on: str
    reason: str = ""


class ClientMemory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One client's state as written down: servers by id, times as UNIX seconds."""

    client: str
    current: str
    last_seq: int = 0
    last_notice_id: str | None = None
    last_answer: RememberedAnswer | None = None
    return_at: float | None = None
    stay_until: float | None = None
    boot: str | None = None
    """The host's boot id when it was written (None: synced before the ack)."""


def remembered(state: ClientState) -> ClientMemory:
    """What of ``state`` survives a restart."""
    answer = state.last_answer
    return ClientMemory(
        client=state.client,
        current=state.current.server,
        last_seq=state.last_seq,
        last_notice_id=state.last_notice_id,
        last_answer=(
            None
            if answer is None
            else RememberedAnswer(
                accepted=answer.accepted, now_on=answer.now_on, reason=answer.reason
            )
        ),
        return_at=state.return_at,
        stay_until=state.stay_until,
    )


def restored(
    fresh: ClientState, memory: ClientMemory, servers: Mapping[str, Endpoint]
) -> ClientState:
    """``fresh`` (the client at home, as configured) with ``memory`` put back.

    The sequence floor and the last notice always come back; where the client
    was comes back only if that server is still in the configuration (else it
    is home, and its timers with it).
    """
    answer = memory.last_answer
    state = replace(
        fresh,
        last_seq=max(fresh.last_seq, memory.last_seq),
        last_notice_id=memory.last_notice_id,
        last_answer=(
            None if answer is None else Answer(answer.accepted, answer.now_on, answer.reason)
        ),
    )
    current = servers.get(memory.current)
    if current is None or current.server == fresh.home.server:
        return state
    return replace(state, current=current, return_at=memory.return_at, stay_until=memory.stay_until)


class Unreadable(AaaFailoverError):
    """A client's memory file exists but cannot be read."""


_decoder = msgspec.json.Decoder(ClientMemory)
_encoder = msgspec.json.Encoder()


COMPACT_AFTER = 256
"""Lines appended to a client's journal before it is replaced by its latest line alone."""

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id(path: Path = BOOT_ID) -> str | None:
    """This host's boot id (a new one at every start of the kernel), or None if unknown."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class MemoryFile:
    """The journal that holds one client's memory."""

    def __init__(self, path: Path, boot: str | None = None) -> None:
        self.path = path
        self.boot = boot
        self._written: ClientMemory | None = None
        self._lines = COMPACT_AFTER  # lines in the file; unknown: the first write replaces it
        self._unsynced: int | None = None  # the descriptor of a line not synced yet

    def load(self, client: str) -> ClientMemory | None:
        """The memory written last for ``client``, or None when there is no file yet.

        Raises :class:`Unreadable` for a file that cannot be read (logged, and
        set aside as ``<name>.bad`` for the operator when it does not decode).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._lines = 0
            return None
        except OSError as exc:
            logger.warning("%s: cannot read %s: %s", client, self.path, exc)
            raise Unreadable(str(exc)) from None
        try:
            memory = _decoder.decode(_latest(data))
            if memory.client != client:
                raise ValueError(f"it is the memory of {memory.client!r}")
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            logger.warning(
                "%s: %s is unreadable (%s); set aside as %s",
                client,
                self.path,
                str(exc)[:200],
                bad.name,
            )
            with contextlib.suppress(OSError):
                self.path.replace(bad)
            raise Unreadable(str(exc)) from None
        self._written = memory
        if data.endswith(b"\n"):
            self._lines = data.count(b"\n")  # whole lines: appended to
        if memory.boot is not None and memory.boot != self.boot:
            floor = int(time.time() * 1_000_000)
            logger.info("%s: memory written before the host restarted; sequence floor now", client)
            return msgspec.structs.replace(memory, last_seq=max(memory.last_seq, floor))
        return memory

    def save(self, memory: ClientMemory) -> None:
        """Write ``memory`` if it changed: a line appended, or the file replaced by it (see
        the module); the line is synced here only without a boot id, else by :meth:`sync`.
        Raises OSError: the caller must not act as if it were remembered."""
        if memory == self._written:
            return
        self.sync()
        line = _encoder.encode(msgspec.structs.replace(memory, boot=self.boot)) + b"\n"
        if self._lines >= COMPACT_AFTER:
            partial = self.path.with_name(self.path.name + ".partial")
            with open(partial, "wb") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            partial.replace(self.path)
            self._lines = 1
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                if self.boot is None:
                    os.fdatasync(fd)
            except BaseException:
                os.close(fd)
                raise
            if self.boot is None:
                os.close(fd)
            else:
                self._unsynced = fd
            self._lines += 1
        self._written = memory

    def sync(self) -> None:
        """Sync the line last appended, if it is not yet (see :meth:`detach`)."""
        syncing = self.detach()
        if syncing is not None:
            syncing()

    def detach(self) -> Callable[[], None] | None:
        """The sync of the line last appended, taken from this file (to run in a thread:
        it touches nothing else of it), or None when every line is synced. A failure is
        logged: the line is written, and its boot id covers a host that stops first."""
        fd, self._unsynced = self._unsynced, None
        if fd is None:
            return None
        path = self.path

        def syncing() -> None:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                logger.warning("cannot sync %s: %s", path, exc)
            finally:
                os.close(fd)

        return syncing


def _latest(data: bytes) -> bytes:
    """The last whole line of a journal (see the module); the bytes as they are when the
    file holds one line or one object without a newline."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ends with a newline: every line is whole
    elif len(lines) > 1:
        lines.pop()  # a line torn by a crash: the one before it is the memory
    return lines[-1] if lines else b""
