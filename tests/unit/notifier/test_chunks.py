"""Notices in flight stored in chunks: which value holds each, and when it is written."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.chunks import CHUNK, Chunks, Stored, notices_of, orphaned
from services.notifier.deliveries import Pending


def _pending(notice_id: str, deadline: float = 110.0) -> Pending:
    return Pending(
        notice_id=notice_id,
        notice_type="notice.failover.v2",
        client=f"c-{notice_id}",
        server="A",
        subject=f"aaa.notice.c-{notice_id}",
        payload=b'{"x":1}',
        headers={"Aaa-Auth": "abc"},
        first_sent=100.0,
        deadline=deadline,
        batch="plan-1",
    )


def _sent(chunks: Chunks, live: dict[str, Pending], n: int) -> list[str]:
    notices = [_pending(f"n{i:04d}") for i in range(n)]
    live.update({p.notice_id: p for p in notices})
    return chunks.add(notices)


def test_notices_sent_together_are_stored_a_chunk_to_a_value_under_its_first_notice() -> None:
    chunks, live = Chunks(), dict[str, Pending]()
    keys = _sent(chunks, live, CHUNK * 2 + 3)
    assert keys == ["n0000", f"n{CHUNK:04d}", f"n{2 * CHUNK:04d}"]
    written = [chunks.snapshot(key, live) for key in keys]
    assert [len(w or []) for w in written] == [CHUNK, CHUNK, 3]
    assert [p.notice_id for w in written for p in w or []] == sorted(live)


def test_a_chunk_is_written_again_at_half_and_removed_when_empty() -> None:
    chunks, live = Chunks(), dict[str, Pending]()
    (key,) = _sent(chunks, live, 8)
    assert chunks.snapshot(key, live) is not None
    due = []
    for n in range(8):
        del live[f"n{n:04d}"]
        due.append(chunks.removed(f"n{n:04d}"))
        if due[-1] is not None:
            assert chunks.snapshot(key, live) == [live[k] for k in sorted(live)]
    # written at 4 of 8 left, 2 of 4, 1 of 2, then removed
    assert [d is not None for d in due] == [False, False, False, True, False, True, True, True]
    assert chunks.snapshot(key, live) is None  # forgotten once removed
    assert len(chunks) == 0


def test_answers_between_writes_are_written_at_the_next_round() -> None:
    chunks, live = Chunks(), dict[str, Pending]()
    (key,) = _sent(chunks, live, 8)
    chunks.snapshot(key, live)
    del live["n0003"]
    assert chunks.removed("n0003") is None
    assert chunks.unwritten() == [key]
    assert chunks.unwritten() == []  # taken once
    assert [p.notice_id for p in chunks.snapshot(key, live) or []] == [
        f"n{n:04d}" for n in range(8) if n != 3
    ]


def test_a_notice_answered_before_its_chunk_was_first_written_is_not_written() -> None:
    chunks, live = Chunks(), dict[str, Pending]()
    (key,) = _sent(chunks, live, 2)
    del live["n0000"]
    assert chunks.removed("n0000") is None  # the first write is still to come
    assert [p.notice_id for p in chunks.snapshot(key, live) or []] == ["n0001"]
    both, live2 = Chunks(), dict[str, Pending]()
    (key2,) = _sent(both, live2, 1)
    live2.clear()
    assert both.removed("n0000") is None
    assert both.snapshot(key2, live2) is None  # never written, nothing to remove


def test_a_value_from_before_chunks_reads_as_a_chunk_of_one() -> None:
    decoder = msgspec.json.Decoder(Stored)
    old = decoder.decode(msgspec.json.encode(_pending("legacy")))
    new = decoder.decode(msgspec.json.encode([_pending("a"), _pending("b")]))
    assert [p.notice_id for p in notices_of(old)] == ["legacy"]
    assert [p.notice_id for p in notices_of(new)] == ["a", "b"]
    chunks, live = Chunks(), dict[str, Pending]()
    taken = chunks.restore("legacy", notices_of(old))
    live.update({p.notice_id: p for p in taken})
    del live["legacy"]
    assert chunks.removed("legacy") == "legacy"
    assert chunks.snapshot("legacy", live) == []  # the old key is removed


def test_a_notice_stored_twice_is_taken_once() -> None:
    chunks = Chunks()
    assert len(chunks.restore("k1", [_pending("a"), _pending("b")])) == 2
    assert [p.notice_id for p in chunks.restore("k2", [_pending("b"), _pending("c")])] == ["c"]
    assert chunks.restore("k1", [_pending("d")]) == []  # a key already held


def test_only_chunks_no_notifier_tends_are_orphaned() -> None:
    stored = {
        "mine": [_pending("m", deadline=101.0)],
        "tended": [_pending("t", deadline=101.0)],
        "alive": [_pending("x", deadline=101.0), _pending("y", deadline=110.0)],
        "dead": [_pending("d1", deadline=101.0), _pending("d2", deadline=102.0)],
        "empty": [],
    }
    tracked = {"t": _pending("t")}
    found = orphaned(stored, tracked, {"mine": ["m"]}, now=110.0, grace_s=3.0)
    assert list(found) == ["dead"]
    assert orphaned(stored, tracked, {}, now=104.5, grace_s=3.0) == {"mine": stored["mine"]}


@settings(max_examples=200, deadline=None)
@given(
    sent=st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(st.integers(0, 10**6), st.booleans(), st.integers(1, 4)), max_size=200
    ),
)
def test_what_is_stored_always_covers_what_is_in_flight(
    sent: list[int], steps: list[tuple[int, bool, int]]
) -> None:
    # a store written as the notifier writes it: every notice in flight is in the store
    # under its chunk's key, and the store holds nothing never sent
    chunks: Chunks = Chunks()
    live: dict[str, Pending] = {}
    store: dict[str, list[Pending]] = {}

    def write(key: str | None) -> None:
        if key is None:
            return
        notices = chunks.snapshot(key, live)
        if notices:
            store[key] = notices
        elif notices == []:
            del store[key]

    serial = 0
    for size in sent:
        notices = [_pending(f"p{serial + i}") for i in range(size)]
        serial += size
        live.update({p.notice_id: p for p in notices})
        for key in chunks.add(notices):
            write(key)
    for pick, answered, together in steps:
        if not live:
            break
        ids = sorted(live)
        notice_id = ids[pick % len(ids)]
        if answered:
            # several may leave flight at once (the retry loop's failures), then be
            # removed one by one, each perhaps writing their chunk
            gone = ids[pick % len(ids) :][:together]
            for n in gone:
                del live[n]
            for n in gone:
                write(chunks.removed(n))
        else:
            write(chunks.changed(notice_id))
        if pick % 7 == 0:
            for key in chunks.unwritten():
                write(key)
        stored_ids = {p.notice_id for notices in store.values() for p in notices}
        assert set(live) <= stored_ids
        assert all(notices for notices in store.values())
    for key in chunks.unwritten():
        write(key)
    assert {p.notice_id for notices in store.values() for p in notices} == set(live)
