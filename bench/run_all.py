"""Run every benchmark (`make bench`, or `make bench QUICK=1`) and print their goals.

Each benchmark runs as its own process, writes ``bench/results/<name>.json``
and prints its table; this prints, last, every goal and whether it was met.
A benchmark that fails is reported and the others still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

ORDER = (
    "detection",
    "fanout",
    "throughput",
    "incident",
    "incident_10k",
    "readmission",
    "freeradius_incident",
    "eap",
    "watching",
    "planner",
    "proxy",
    "takeover",
    "growth",
    "soak",
)

VARIANTS: dict[str, tuple[str, list[str]]] = {"incident_10k": ("incident", ["--scale"])}
"""Entries that run another benchmark's script in another mode: name -> (script, arguments)."""


def main() -> int:
    args = common.arguments(__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    script = {n: VARIANTS.get(n, (n, []))[0] for n in ORDER}
    names = [n for n in ORDER if (here / f"{script[n]}.py").exists()]
    failed: list[str] = []
    took: dict[str, float] = {}
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        extra = VARIANTS.get(name, (name, []))[1]
        argv = [sys.executable, str(here / f"{script[name]}.py"), *extra, "--out", str(args.out)]
        start = time.monotonic()
        done = subprocess.run([*argv, *(["--quick"] if args.quick else [])], check=False)
        took[name] = time.monotonic() - start
        if done.returncode != 0:
            failed.append(name)
    print("\n=== goals ===")
    for name in names:
        path = args.out / f"{name}.json"
        if name in failed or not path.exists():
            print(f"{name:>12}: no results ({'failed' if name in failed else 'missing'})")
            continue
        for goal in json.loads(path.read_text()).get("goals", []):
            state = "met" if goal["met"] else "NOT met"
            print(f"{name:>12}: {goal['name']} {goal['target']}: {state} ({goal['value']:.4g})")
    print(
        f"\ntook {sum(took.values()):.0f}s: " + ", ".join(f"{n} {t:.0f}s" for n, t in took.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
