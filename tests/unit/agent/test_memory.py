"""What an agent writes down of a client, and how it comes back (real files, no bus)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from schemas.events import Endpoint
from services.agent import memory as memory_module
from services.agent.client import Answer, new_state
from services.agent.memory import (
    ClientMemory,
    MemoryFile,
    Unreadable,
    boot_id,
    remembered,
    restored,
)

A = Endpoint(server="A", ip="10.0.0.1", auth_port=1812)
B = Endpoint(server="B", ip="10.0.0.2", auth_port=1812)
SERVERS = {"A": A, "B": B}


def _away():  # type: ignore[no-untyped-def]
    fresh = new_state("nas-01", A, return_after_s=30.0, jitter=0.2)
    return fresh, replace(
        fresh,
        current=B,
        last_seq=42,
        last_notice_id="n42",
        last_answer=Answer(True, "B"),
        return_at=1030.0,
        stay_until=1300.0,
    )


def test_a_client_away_comes_back_where_it_was_with_its_timers(tmp_path: Path) -> None:
    fresh, away = _away()
    file = MemoryFile(tmp_path / "nas-01.json")
    file.save(remembered(away))
    again = MemoryFile(tmp_path / "nas-01.json").load("nas-01")
    assert again is not None
    assert restored(fresh, again, SERVERS) == away
    assert not list(tmp_path.glob("*.partial"))


def test_a_server_gone_from_the_configuration_brings_the_client_home(tmp_path: Path) -> None:
    fresh, away = _away()
    back = restored(fresh, remembered(away), {"A": A})
    assert back.current == A and (back.return_at, back.stay_until) == (None, None)
    assert back.last_seq == 42  # the sequence floor is kept whatever else is


def test_no_file_is_a_first_start(tmp_path: Path) -> None:
    assert MemoryFile(tmp_path / "nas-01.json").load("nas-01") is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"client":"nas-02","current":"A"}', b"[" * 100_000, b'{"x":1}'],
)
def test_an_unreadable_file_is_set_aside_and_said(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "nas-01.json"
    path.write_bytes(content)
    with pytest.raises(Unreadable):
        MemoryFile(path).load("nas-01")
    assert not path.exists() and (tmp_path / "nas-01.json.bad").read_bytes() == content


def test_an_unchanged_memory_is_not_written_again(tmp_path: Path) -> None:
    path = tmp_path / "nas-01.json"
    file = MemoryFile(path)
    memory = ClientMemory(client="nas-01", current="A", last_seq=7)
    file.save(memory)
    path.unlink()
    file.save(memory)
    assert not path.exists()
    file.save(ClientMemory(client="nas-01", current="A", last_seq=8))
    assert path.exists()


def test_changes_are_appended_and_the_latest_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "nas-01.json"
    file = MemoryFile(path)
    for seq in (1, 2, 3):
        file.save(ClientMemory(client="nas-01", current="B", last_seq=seq))
    assert path.read_bytes().count(b"\n") == 3  # the first write made the file, then lines
    again = MemoryFile(path).load("nas-01")
    assert again is not None and again.last_seq == 3


def test_a_line_torn_by_a_crash_leaves_the_one_before_and_is_not_appended_to(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nas-01.json"
    file = MemoryFile(path)
    file.save(ClientMemory(client="nas-01", current="B", last_seq=1))
    with path.open("ab") as f:
        f.write(b'{"client":"nas-01","current":"A","last_s')  # the crash
    restarted = MemoryFile(path)
    memory = restarted.load("nas-01")
    assert memory is not None and memory.last_seq == 1
    # the first write after a start replaces the file: the torn line is gone
    restarted.save(ClientMemory(client="nas-01", current="A", last_seq=2))
    restarted.save(ClientMemory(client="nas-01", current="B", last_seq=3))
    assert path.read_bytes().count(b"\n") == 2
    last = MemoryFile(path).load("nas-01")
    assert last is not None and last.last_seq == 3


def test_the_journal_is_replaced_by_its_latest_line_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_module, "COMPACT_AFTER", 4)
    path = tmp_path / "nas-01.json"
    file = MemoryFile(path)
    for seq in range(1, 11):
        file.save(ClientMemory(client="nas-01", current="B", last_seq=seq))
        assert path.read_bytes().count(b"\n") <= 4
    last = MemoryFile(path).load("nas-01")
    assert last is not None and last.last_seq == 10
    assert not list(tmp_path.glob("*.partial"))


def test_a_file_written_before_the_journal_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "nas-01.json"
    path.write_bytes(b'{"client":"nas-01","current":"B","last_seq":9}')  # no newline
    memory = MemoryFile(path).load("nas-01")
    assert memory is not None and memory.last_seq == 9


def test_a_memory_written_before_the_host_restarted_raises_the_sequence_floor(
    tmp_path: Path,
) -> None:
    # a line not yet synced may be lost with the host: whatever the file says, a notice
    # issued before this start cannot pass
    path = tmp_path / "nas-01.json"
    file = MemoryFile(path, boot="boot-1")
    file.save(ClientMemory(client="nas-01", current="B", last_seq=42))
    file.save(ClientMemory(client="nas-01", current="B", last_seq=43))
    syncing = file.detach()
    assert syncing is not None and file.detach() is None
    syncing()
    same = MemoryFile(path, boot="boot-1").load("nas-01")
    assert same is not None and (same.current, same.last_seq) == ("B", 43)
    before = time.time()
    rebooted = MemoryFile(path, boot="boot-2").load("nas-01")
    assert rebooted is not None and rebooted.current == "B"
    assert rebooted.last_seq >= int(before * 1_000_000)


def test_without_a_boot_id_every_line_is_synced_before_the_ack(tmp_path: Path) -> None:
    file = MemoryFile(tmp_path / "nas-01.json")
    for seq in (1, 2):
        file.save(ClientMemory(client="nas-01", current="B", last_seq=seq))
        assert file.detach() is None
    memory = MemoryFile(tmp_path / "nas-01.json", boot="any").load("nas-01")
    assert memory is not None and memory.last_seq == 2  # no boot id written: trusted


def test_the_boot_id_is_read_from_the_kernel_or_unknown(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("3f2a\n")
    assert boot_id(tmp_path / "boot_id") == "3f2a"
    assert boot_id(tmp_path / "missing") is None


def test_a_journal_of_whole_lines_is_appended_to_from_the_first_write_after_a_start(
    tmp_path: Path,
) -> None:
    # no file replaced (and synced in the loop) per client at its first notice
    path = tmp_path / "nas-01.json"
    MemoryFile(path).save(ClientMemory(client="nas-01", current="B", last_seq=1))
    inode = path.stat().st_ino
    restarted = MemoryFile(path, boot="boot-1")
    assert restarted.load("nas-01") is not None
    restarted.save(ClientMemory(client="nas-01", current="A", last_seq=2))
    assert path.stat().st_ino == inode and path.read_bytes().count(b"\n") == 2
    fresh = MemoryFile(tmp_path / "nas-02.json", boot="boot-1")
    assert fresh.load("nas-02") is None
    fresh.save(ClientMemory(client="nas-02", current="B", last_seq=1))
    assert fresh.detach() is not None  # appended, its sync left for after the ack
