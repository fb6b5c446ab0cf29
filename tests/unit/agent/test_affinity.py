"""EAP conversation affinity: which upstream holds each State it issued (pure)."""

from __future__ import annotations

import pytest

from services.agent.affinity import Conversations


def test_a_round_goes_to_the_upstream_that_issued_its_state_until_the_end() -> None:
    talks = Conversations(ttl_s=60.0)
    talks.issued(b"s1", "A", now=0.0)
    assert talks.holder(b"s1", now=1.0) == "A" and talks.held_by("A", 1.0) == 1
    # the next round: s1 answered with a new challenge, s2
    talks.answered(b"s1")
    talks.issued(b"s2", "A", now=1.1)
    assert talks.holder(b"s1", 1.2) is None and talks.holder(b"s2", 1.2) == "A"
    assert talks.held_by("A", 1.2) == 1
    # Access-Accept: over
    talks.answered(b"s2")
    assert talks.holder(b"s2", 1.3) is None and talks.held_by("A", 1.3) == 0
    assert talks.holder(b"never", 1.3) is None


def test_entries_expire_and_are_bounded() -> None:
    talks = Conversations(ttl_s=10.0, max_entries=3)
    for i, server in enumerate(("A", "A", "B", "B")):
        talks.issued(bytes([i]), server, now=float(i))
    assert len(talks) == 3 and talks.holder(b"\x00", 3.0) is None  # the oldest went first
    assert talks.held_by("A", 3.0) == 1 and talks.held_by("B", 3.0) == 2
    assert talks.holder(b"\x03", 13.5) is None and len(talks) == 0  # not used for 10 s
    assert talks.held_by("B", 13.5) == 0


def test_the_same_state_issued_again_moves_with_it() -> None:
    talks = Conversations()
    talks.issued(b"s", "A", 0.0)
    talks.issued(b"s", "B", 1.0)
    assert talks.holder(b"s", 2.0) == "B"
    assert (talks.held_by("A", 2.0), talks.held_by("B", 2.0)) == (0, 1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Conversations(ttl_s=0)
    with pytest.raises(ValueError):
        Conversations(max_entries=0)
