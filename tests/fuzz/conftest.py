"""The fuzz suite's budget and seed: ``fuzz`` gives each test its random source and how
many cases to run, and counts them; the run ends by printing the cases run per target.

``AAA_FUZZ_CASES`` is the number of cases per target (default 400: the whole folder in a
few seconds in the ordinary suite); ``make fuzz`` sets 100000. ``AAA_FUZZ_SEED`` (default
a fixed one, so the ordinary suite is repeatable) seeds every target; a failure names its
seed and case, and ``AAA_FUZZ_SEED=<seed>`` with the same budget finds that case again.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

DEFAULT_CASES = 400
DEFAULT_SEED = 20261130

_run: Counter[str] = Counter()
_seconds: Counter[str] = Counter()


def budget() -> int:
    """Cases per target, from ``AAA_FUZZ_CASES``."""
    text = os.environ.get("AAA_FUZZ_CASES", "")
    return int(text) if text.strip() else DEFAULT_CASES


def seed() -> int:
    text = os.environ.get("AAA_FUZZ_SEED", "")
    return int(text) if text.strip() else DEFAULT_SEED


@dataclass
class Fuzz:
    """One target's random source and budget. ``cases()`` yields the case numbers; each
    one run is counted, and the case being run is named if the test fails."""

    target: str
    rng: random.Random
    cases_per_target: int
    case: int = -1
    done: int = field(default=0)

    def cases(self, share: float = 1.0) -> Iterator[int]:
        """``share`` of the budget (at least one case), counted as they run."""
        for case in range(max(1, int(self.cases_per_target * share))):
            self.case = case
            yield case
            self.done += 1
            _run[self.target] += 1

    def where(self) -> str:
        return f"{self.target}: case {self.case}, AAA_FUZZ_SEED={seed()}"


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> Iterator[Fuzz]:
    target = request.node.name
    rng = random.Random(f"{seed()}:{target}")
    state = Fuzz(target, rng, budget())
    started = time.perf_counter()
    yield state
    _seconds[target] += time.perf_counter() - started


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Name the failing case (seed and number) in the report of a failed fuzz test."""
    outcome = yield
    report = outcome.get_result()
    state = getattr(item, "funcargs", {}).get("fuzz")
    if report.failed and isinstance(state, Fuzz):
        report.sections.append(("fuzz case", state.where()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _run:
        return
    total = sum(_run.values())
    seconds = sum(_seconds.values())
    terminalreporter.write_sep("-", "fuzz cases")
    for target, count in sorted(_run.items()):
        terminalreporter.write_line(f"{count:>9}  {target} ({_seconds[target]:.1f} s)")
    terminalreporter.write_line(
        f"{total:>9}  in all, {len(_run)} targets, {seconds:.1f} s "
        f"(AAA_FUZZ_CASES={budget()} per target, AAA_FUZZ_SEED={seed()})"
    )
