"""Benchmark of the failover planner beside its floor: sorting the same clients once.

Builds a registry of 100,000 clients (500 device groups, 50 sites, 10
servers of about 10,000 clients each; ``--quick``: 2,000 clients), then, in
the same run and interleaved, times ``plan_failover`` for the busiest server
under policy ``["group", "topology"]`` and the floor: one ``sorted`` of the
whole client list by ``(priority, id)``. Writes ``planner.json`` (machine,
parameters, raw samples, summary) to ``bench/results/`` or ``--out DIR`` and
prints a table. It measures; it asserts nothing about the timings.

Run: ``.venv/bin/python bench/planner.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from services.runtime.config import TargeterConfig  # noqa: E402
from services.targeter.planning import Pressure, ServerView, plan_failover  # noqa: E402
from services.targeter.registry import ClientRecord  # noqa: E402

logger = logging.getLogger(__name__)

GOAL = 5.0
"""The planner should take at most this many times the floor."""

FULL = {"clients": 100_000, "groups": 500, "sites": 50, "servers": 10, "repeats": 15}
QUICK = {"clients": 2_000, "groups": 500, "sites": 50, "servers": 10, "repeats": 3}
SEED = 20240601
POLICY: list[Any] = ["group", "topology"]


def build(
    clients: int, groups: int, sites: int, servers: int, seed: int = SEED
) -> tuple[list[ClientRecord], dict[str, ServerView], str]:
    """A registry, the servers' views and the busiest server's id."""
    rng = random.Random(seed)
    ids = [f"srv-{i:02d}" for i in range(servers)]
    site_names = [f"site-{i:02d}" for i in range(sites)]
    views: dict[str, ServerView] = {}
    for i, sid in enumerate(ids):
        health: float | None = round(rng.uniform(0.3, 0.95), 2)
        if i == 0:
            health = 0.1
        elif i == 1:
            health = None
        views[sid] = ServerView(
            id=sid,
            site=site_names[(i * sites) // servers],
            health=health,
            failover_threshold=0.2,
            in_incident=i == 2,
            capacity_rps=rng.choice([None, 20_000.0, 40_000.0]),
        )
    weights = [1.2 if i == 0 else 1.0 for i in range(servers)]
    records = []
    for n in range(clients):
        home = rng.choices(ids, weights)[0]
        others = [s for s in ids if s != home]
        records.append(
            ClientRecord(
                id=f"nas-{n:06d}",
                ip=f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
                home=home,
                current=home,
                group=f"group-{rng.randrange(groups):03d}",
                site=rng.choice(site_names),
                priority=rng.choice((10, 50, 100, 100, 200)),
                alternates=tuple(rng.sample(others, 3)),
                alternates_from="notice" if rng.random() < 0.2 else "client",
                rate=rng.uniform(0.5, 5.0),
                measured_rate=rng.uniform(0.5, 5.0) if rng.random() < 0.5 else None,
            )
        )
    rng.shuffle(records)
    busiest = Counter(r.current for r in records).most_common(1)[0][0]
    return records, views, busiest


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {
        "median_s": statistics.median(ordered),
        "p90_s": p90,
        "min_s": ordered[0],
        "max_s": ordered[-1],
    }


def run(params: dict[str, int]) -> dict[str, Any]:
    """Build the registry, time plan and floor interleaved; the results as a dict."""
    records, views, busiest = build(
        params["clients"], params["groups"], params["sites"], params["servers"]
    )
    groups = sorted({r.group for r in records})
    sites = sorted({r.site for r in records})
    cfg = TargeterConfig(
        policy=POLICY,
        groups=groups[::2],
        sites=sites,
        topology="nearest",
        max_share=0.5,
        gain=1.0,
    )
    pressure = Pressure(health=0.1, failover_threshold=0.2, limiting="threads")

    def plan() -> object:
        return plan_failover(busiest, "bench", pressure, records, views, cfg)

    key = attrgetter("priority", "id")

    def floor() -> object:
        return sorted(records, key=key)

    result = plan_failover(busiest, "bench", pressure, records, views, cfg)
    floor()
    plan_samples: list[float] = []
    floor_samples: list[float] = []
    for i in range(params["repeats"]):
        if i % 2 == 0:
            plan_samples.append(_timed(plan))
            floor_samples.append(_timed(floor))
        else:
            floor_samples.append(_timed(floor))
            plan_samples.append(_timed(plan))

    plan_summary = _summary(plan_samples)
    floor_summary = _summary(floor_samples)
    ratio = plan_summary["median_s"] / floor_summary["median_s"]
    return {
        "benchmark": "planner",
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "parameters": {
            **params,
            "policy": POLICY,
            "topology": cfg.topology,
            "max_share": cfg.max_share,
            "gain": cfg.gain,
            "server": busiest,
            "candidates": sum(1 for r in records if r.current == busiest),
            "seed": SEED,
            "floor": "sorted(all clients, key=(priority, id))",
        },
        "plan": {
            "moves": len(result.moves),
            "unplaced": len(result.unplaced),
            "moved_load": result.moved_load,
            "reason": result.reason,
        },
        "samples": {"plan_s": plan_samples, "floor_s": floor_samples},
        "summary": {
            "plan": plan_summary,
            "floor": floor_summary,
            "ratio_median": ratio,
            "goal_ratio": GOAL,
            "within_goal": ratio <= GOAL,
        },
        "goals": [
            {
                "name": "plan / one sort of the registry (medians)",
                "target": f"<= {GOAL:g}x",
                "value": ratio,
                "met": ratio <= GOAL,
            }
        ],
    }


def table(results: dict[str, Any]) -> str:
    """The summary as a small text table."""
    p = results["parameters"]
    s = results["summary"]
    lines = [
        f"planner: {p['clients']} clients, {p['groups']} groups, {p['sites']} sites, "
        f"{p['servers']} servers; {p['candidates']} on {p['server']}; "
        f"{p['repeats']} repeats",
        f"{'':8}{'median ms':>12}{'p90 ms':>10}{'min ms':>10}",
    ]
    for name in ("plan", "floor"):
        row = s[name]
        lines.append(
            f"{name:8}{row['median_s'] * 1e3:12.2f}{row['p90_s'] * 1e3:10.2f}"
            f"{row['min_s'] * 1e3:10.2f}"
        )
    verdict = "within" if s["within_goal"] else "NOT within"
    lines.append(f"ratio plan/floor (medians): {s['ratio_median']:.2f} ({verdict} {GOAL:g}x)")
    lines.append(f"plan: {results['plan']['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``planner.json`` and print the table."""
    args = common.arguments(__doc__.splitlines()[0], argv, quick="2,000 clients, 3 repeats")
    results = run(QUICK if args.quick else FULL)
    results["parameters"]["quick"] = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "planner.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
