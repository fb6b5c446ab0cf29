"""What every benchmark shares: its command line, its results file, its statistics, its plots.

Each benchmark measures its subject beside a baseline in the same run and
reports ratios, medians and percentiles; none asserts a time. Results go to
``bench/results/<name>.json`` with the machine, versions, commit, parameters,
raw samples and summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.launch.supervisor import LogSink, ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": commit or "unknown",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, min and max of ``values``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "min": min(values),
        "max": max(values),
    }


def arguments(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    quick: str = "the small, fast version",
) -> argparse.Namespace:
    """``--quick`` and ``--out DIR``, as every benchmark takes them (``argv``: sys.argv)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def write(out: Path, name: str, results: Mapping[str, Any]) -> Path:
    """Write ``out/<name>.json`` with the machine added; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **results}, indent=2))
    return path


def lacking(name: str, programs: Mapping[str, str]) -> bool:
    """Whether a program the benchmark needs is not installed (program -> its Debian
    package); if so, say that the benchmark is skipped."""
    for program, package in programs.items():
        if shutil.which(program) is None:
            print(f"{name}: skipped, {program} is not installed (apt-get install {package})")
            return True
    return False


def report(
    out: Path,
    name: str,
    parameters: Mapping[str, Any],
    runs: Mapping[str, Any],
    goals: Sequence[Mapping[str, Any]],
) -> None:
    """Write a benchmark's runs (its samples and summary) and goals, print the goals."""
    path = write(
        out, name, {"parameters": parameters, "samples": runs, "summary": runs, "goals": goals}
    )
    for goal in goals:
        print(goal_line(goal))
    print(f"wrote {path}")


def goal_line(goal: Mapping[str, Any], value: str | None = None) -> str:
    """One goal of a results file, as every benchmark prints it."""
    state = "met" if goal["met"] else "NOT met"
    shown = value if value is not None else f"{goal['value']:.3g}"
    return f"goal {goal['name']} {goal['target']}: {state} ({shown})"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for row in cells:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def plot_growth(
    path: Path,
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    xlabel: str,
    ylabel: str = "seconds",
) -> Path:
    """A log-log PNG of each series' (size, value) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def process(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running (from the project root, output to ``log_path``) until the block ends.

    Then SIGTERM, and SIGKILL if it has not stopped within 15 s.
    """
    log = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


READY_TIMEOUT_S = 30.0


def start_services(
    plan: Sequence[tuple[str, str, Sequence[str]]],
    config_path: Path,
    bus_url: str,
    sink: LogSink,
    *,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> list[ServiceProcess]:
    """Each ``(name, service, extra argv)`` of ``plan`` as its own ``aaa-failover run``
    process on the bus at ``bus_url``, started and ready within ``ready_timeout_s``;
    RuntimeError if one is not."""
    from services.launch.registry import run_argv
    from services.launch.supervisor import ServiceProcess

    processes: list[ServiceProcess] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for name, service, extra in plan:
        argv = run_argv(service, config_path, bus_url=bus_url, args=extra)
        process = ServiceProcess(name, argv, sink=sink, env=env)
        process.start()
        processes.append(process)
    deadline = time.monotonic() + ready_timeout_s
    for process in processes:
        if not process.ready.wait(max(0.0, deadline - time.monotonic())):
            stop_services(processes)
            raise RuntimeError(f"{process.name} did not start (exit {process.exited})")
    return processes


def stop_services(processes: Sequence[ServiceProcess], timeout_s: float = 10.0) -> dict[str, int]:
    """Stop every process (SIGTERM, then SIGKILL after ``timeout_s``); their exit statuses."""
    for process in reversed(processes):
        process.terminate()
    return {p.name: p.wait(timeout_s) for p in reversed(processes)}


def cpu_s(pid: int) -> float:
    """CPU seconds the threads of process ``pid`` have run so far: the scheduler's count in
    nanoseconds of each live thread (``/proc/<pid>/task/*/schedstat``), else, on a kernel
    without it, the process's count in clock ticks (``/proc/<pid>/stat``, 10 ms: too coarse
    for rounds of tens of milliseconds); NaN where /proc has neither."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return float("nan")
    total, read = 0, 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
            read += 1
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    if read:
        return total / 1e9
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_of(pids: Mapping[str, int]) -> dict[str, float]:
    """:func:`cpu_s` of each named process."""
    return {name: cpu_s(pid) for name, pid in pids.items()}


def cpu_since(before: Mapping[str, float], pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds each named process used since ``before`` (:func:`cpu_of`)."""
    return {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
