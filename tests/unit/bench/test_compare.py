"""bench/compare.py: goals of two runs matched by name, side by side with their ratio."""

from __future__ import annotations

from bench.compare import rows


def goal(name: str, value: float, met: bool = True) -> dict[str, object]:
    return {"name": name, "target": "", "value": value, "met": met}


def test_goals_are_matched_by_name_and_a_missing_side_shows_as_a_dash() -> None:
    base = [goal("p50 ratio", 2.0, met=False), goal("lost", 0), goal("gone", 1.0)]
    head = [goal("lost", 0), goal("p50 ratio", 1.5), goal("new", 3.0)]
    assert rows(base, head) == [
        ("lost", "0 (met)", "0 (met)", "-"),  # no ratio to a zero
        ("p50 ratio", "2 (not met)", "1.5 (met)", "0.75"),
        ("new", "-", "3 (met)", "-"),
        ("gone", "1 (met)", "-", "-"),
    ]
