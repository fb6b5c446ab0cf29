"""Every benchmark at two commits, side by side in one run: is a change no worse?

``bench/compare.py --base REV [--quick] [--only a,b] [--out DIR]`` checks REV out
into a temporary git worktree and runs each benchmark of ``bench/run_all.py``
that both trees have, at REV and in this tree, one right after the other, so
that both meet the machine in the same state. It prints every goal's value at
both and their ratio. A goal's value is what the benchmark measured against its
own baseline in the same process (a ratio to a bare relay, a count of lost
requests, ...), so the two columns compare like with like. Each side's JSON
results are kept under ``DIR/base`` and ``DIR/head``.

It asserts nothing; read the table (a ratio goal that should be high, such as
throughput against a bare subscriber, is better above 1; one that should be
low, such as detection against a bare relay, better below 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, table  # noqa: E402
from bench.run_all import ORDER  # noqa: E402


def run(tree: Path, name: str, out: Path, quick: bool) -> tuple[float, list[dict[str, Any]]]:
    """Run benchmark ``name`` of ``tree`` with the code of ``tree``; seconds and goals."""
    argv = [sys.executable, str(tree / "bench" / f"{name}.py"), "--out", str(out)]
    start = time.monotonic()
    done = subprocess.run(
        [*argv, *(["--quick"] if quick else [])],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=False,
    )
    took = time.monotonic() - start
    path = out / f"{name}.json"
    if done.returncode != 0 or not path.exists():
        return took, []
    return took, list(json.loads(path.read_text()).get("goals", []))


def rows(base: list[dict[str, Any]], head: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per goal of either side, matched by name: values, their ratio, met or not."""
    at_base = {g["name"]: g for g in base}
    out = []
    for goal in head:
        old = at_base.pop(goal["name"], None)
        ratio = None
        if old is not None and old["value"] not in (0, None) and goal["value"] is not None:
            ratio = goal["value"] / old["value"]
        out.append((goal["name"], _value(old), _value(goal), _ratio(ratio)))
    out += [(name, _value(old), "-", "-") for name, old in at_base.items()]
    return out


def _value(goal: dict[str, Any] | None) -> str:
    if goal is None:
        return "-"
    return f"{goal['value']:.4g} ({'met' if goal['met'] else 'not met'})"


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--quick", action="store_true", help="the benchmarks' small versions")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=RESULTS / "compare", help="results folder")
    args = parser.parse_args(argv)
    only = {n for n in args.only.split(",") if n}
    with tempfile.TemporaryDirectory(prefix="aaa-bench-base-") as scratch:
        base_tree = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
            check=True,
            capture_output=True,
        )
        try:
            names = [
                n
                for n in ORDER
                if (base_tree / "bench" / f"{n}.py").exists() and (not only or n in only)
            ]
            print(f"compare: {args.base} against this tree: {', '.join(names)}", flush=True)
            for name in names:
                print(f"\n=== {name}: base ===", flush=True)
                t_base, base = run(base_tree, name, args.out / "base", args.quick)
                print(f"\n=== {name}: head ===", flush=True)
                t_head, head = run(ROOT, name, args.out / "head", args.quick)
                title = f"\n{name} (base {t_base:.0f}s, head {t_head:.0f}s)"
                print(table(title, ("goal", "base", "head", "head/base"), rows(base, head)))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
