"""How fan-out and the planner grow with size, each beside its floor, with log-log plots.

- **fan-out** (the measurement of ``bench/fanout.py``): seconds from
  publishing a FailoverPlan that moves N clients until all N have a verified
  notice, beside N raw nats-py messages to N subjects;
- **planner** (the measurement of ``bench/planner.py``): ``plan_failover``
  for the busiest server of a registry of N clients, beside one ``sorted``
  of the registry.

Writes ``growth.json`` (the points, raw samples, the log-log slope of each
series) and the plots ``growth_fanout.png`` and ``growth_planner.png`` to
``bench/results/`` or ``--out DIR``, and prints a table. It measures; it
asserts nothing about the timings.

Run: ``.venv/bin/python bench/growth.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fanout, planner  # noqa: E402
from bench.common import arguments, goal_line, plot_growth, table, write  # noqa: E402

logger = logging.getLogger(__name__)

FULL: dict[str, Any] = {
    "fanout_sizes": [100, 300, 1_000, 3_000, 10_000],
    "fanout_repeats": 3,
    "planner_sizes": [1_000, 3_000, 10_000, 30_000, 100_000],
    "planner_repeats": 7,
}
QUICK: dict[str, Any] = {
    "fanout_sizes": [100, 300, 1_000],
    "fanout_repeats": 2,
    "planner_sizes": [500, 2_000, 5_000],
    "planner_repeats": 3,
}
PLANNER_GOAL = planner.GOAL
"""The planner's goal: at most this many times its floor."""

Points = list[tuple[int, float]]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of log(value) against log(size): 1 is linear growth."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def fanout_growth(sizes: list[int], repeats: int) -> dict[str, dict[int, list[float]]]:
    """Seconds of each notices and raw round, by size (``bench/fanout.py``'s measurement)."""
    samples = fanout.collect(sizes, repeats)
    return {"notices": samples["notices"], "raw": samples["raw"]}


def planner_growth(sizes: list[int], repeats: int) -> dict[str, dict[int, list[float]]]:
    """Seconds of each plan and floor run, by registry size (``bench/planner.py``'s)."""
    out: dict[str, dict[int, list[float]]] = {"plan": {}, "floor": {}}
    for size in sizes:
        results = planner.run({**planner.FULL, "clients": size, "repeats": repeats})
        out["plan"][size] = results["samples"]["plan_s"]
        out["floor"][size] = results["samples"]["floor_s"]
    return out


def medians(samples: dict[int, list[float]]) -> Points:
    """(size, median seconds) of each size."""
    return [(size, statistics.median(values)) for size, values in sorted(samples.items())]


def describe(subject: Points, floor: Points) -> dict[str, Any]:
    """The points of a subject and its floor, their ratios and log-log slopes."""
    return {
        "subject": [list(p) for p in subject],
        "floor": [list(p) for p in floor],
        "ratio": [[s[0], s[1] / f[1]] for s, f in zip(subject, floor, strict=True)],
        "slope_subject": slope(subject),
        "slope_floor": slope(floor),
    }


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """Measure both, draw both plots into ``out``; the results."""
    fan = fanout_growth(params["fanout_sizes"], params["fanout_repeats"])
    plan = planner_growth(params["planner_sizes"], params["planner_repeats"])
    fan_summary = describe(medians(fan["notices"]), medians(fan["raw"]))
    plan_summary = describe(medians(plan["plan"]), medians(plan["floor"]))
    plots = {
        "fanout": plot_growth(
            out / "growth_fanout.png",
            "Fan-out: plan published to every notice verified",
            {
                "notices (notifier, verified per client)": medians(fan["notices"]),
                "raw nats-py messages (floor)": medians(fan["raw"]),
            },
            xlabel="clients moved",
        ),
        "planner": plot_growth(
            out / "growth_planner.png",
            "Planner: plan_failover for the busiest server",
            {
                "plan_failover": medians(plan["plan"]),
                "sorted(registry) (floor)": medians(plan["floor"]),
            },
            xlabel="clients in the registry",
        ),
    }
    fan_size, fan_ratio = fan_summary["ratio"][-1]
    fan_seconds = fan_summary["subject"][-1][1]
    plan_size, plan_ratio = plan_summary["ratio"][-1]
    goals = [
        {
            "name": f"fan-out notices/raw (medians) at {fan_size:,} clients",
            "target": f"<= {fanout.GOAL_RATIO:g}x (stated for {fanout.GOAL_SIZE:,})",
            "value": fan_ratio,
            "met": fan_ratio <= fanout.GOAL_RATIO,
        },
        {
            "name": f"fan-out seconds (median) at {fan_size:,} clients",
            "target": f"< {fanout.GOAL_SECONDS:g} (stated for {fanout.GOAL_SIZE:,})",
            "value": fan_seconds,
            "met": fan_seconds < fanout.GOAL_SECONDS,
        },
        {
            "name": f"planner plan/floor (medians) at {plan_size:,} clients",
            "target": f"<= {PLANNER_GOAL:g}x",
            "value": plan_ratio,
            "met": plan_ratio <= PLANNER_GOAL,
        },
    ]
    return {
        "parameters": {
            **params,
            "fanout": "bench/fanout.py: plan to verified notices vs raw nats-py messages",
            "planner": "bench/planner.py: plan_failover vs sorted(registry)",
        },
        "samples": {
            "fanout": {k: {str(n): v for n, v in by.items()} for k, by in fan.items()},
            "planner": {k: {str(n): v for n, v in by.items()} for k, by in plan.items()},
        },
        "summary": {
            "fanout": fan_summary,
            "planner": plan_summary,
            "plots": {name: path.name for name, path in plots.items()},
        },
        "goals": goals,
    }


def report(results: dict[str, Any]) -> str:
    """Both tables and one line per goal."""
    lines = []
    for name, subject, floor in (
        ("fanout", "notices ms", "raw ms"),
        ("planner", "plan ms", "floor ms"),
    ):
        s = results["summary"][name]
        rows = [
            [int(sp[0]), sp[1] * 1e3, fp[1] * 1e3, r[1]]
            for sp, fp, r in zip(s["subject"], s["floor"], s["ratio"], strict=True)
        ]
        lines.append(
            table(
                f"{name} growth (log-log slope {s['slope_subject']:.2f}, "
                f"floor {s['slope_floor']:.2f})",
                ["size", subject, floor, "ratio"],
                rows,
            )
        )
    for goal in results["goals"]:
        lines.append(goal_line(goal))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, write ``growth.json`` and the plots, print the tables."""
    args = arguments(__doc__.splitlines()[0], argv, quick="smaller sizes, fewer repeats")
    params = dict(QUICK if args.quick else FULL)
    params["quick"] = args.quick
    results = run(params, args.out)
    path = write(args.out, "growth", results)
    print(report(results))
    print(f"wrote {path} and {', '.join(results['summary']['plots'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
