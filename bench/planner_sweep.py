"""Planner sweep under load: solve time, objective against a long run and the LP bound, and deadlines against
FIFO (run-now) and EDF, per cell of load x pool x jobs x preemptible share x week x seed.

    .venv/bin/python bench/planner_sweep.py                     # docs/benchmarks.md's sweep (see --help for the grid)
    .venv/bin/python bench/planner_sweep.py --jobs 2000 --pools 64 --loads 0.85 --time-limit 30
    .venv/bin/python bench/planner_sweep.py --jobs 150 500 --yardstick 300   # also a 300 s run per row

Jobs: scheduler/planner/synthetic.py (the mix of bench/planner.py; the load set directly as the share of the
pool's GPU-hours the jobs keep busy in their requested modes; deadlines 4-9x the requested run time). Signals:
real weeks from ../shared/data/traces, as bench/planner.py loads them. Rows print as they finish (one per run);
the summary gives each cell's median and worst. "late" counts late or unplanned jobs by the exact evaluator;
lateness is in hours (an unplanned job counts the whole horizon).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from planner import load_signals  # noqa: E402

from scheduler.planner.baselines import edf, run_now  # noqa: E402
from scheduler.planner.problem import Problem, evaluate  # noqa: E402
from scheduler.planner.problem import lateness as late  # noqa: E402
from scheduler.planner.solve import solve  # noqa: E402
from scheduler.planner.synthetic import heavy_problem  # noqa: E402

WEEKS = ["DE-LU:2023-01-09", "DE-LU:2023-06-05", "ES:2023-04-03", "US-CAL-CISO:2024-05-06"]


def lateness(problem: Problem, plan: dict) -> tuple[int, float]:
    return late(problem, evaluate(problem, plan))


def row(week: str, n_jobs: int, gpus: int, load: float, share: float, seed: int, limit_s: float,
        yardstick_s: float | None) -> dict[str, object]:
    zone, day = week.split(":")
    monday = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    price, carbon = load_signals(zone, monday)
    problem = heavy_problem(n_jobs, gpus, load, share, seed, monday, price, carbon)
    t0 = time.monotonic()
    solution = solve(problem, limit_s)
    solve_s = time.monotonic() - t0
    ours = evaluate(problem, solution.plan)
    out: dict[str, object] = {
        "week": week, "jobs": n_jobs, "gpus": gpus, "load": load, "preemptible": share, "seed": seed,
        "limit_s": limit_s, "solve_s": round(solve_s, 2), "method": solution.stats["method"],
        "objective": ours.objective, "late": lateness(problem, solution.plan),
        "fifo_late": lateness(problem, run_now(problem)), "edf_late": lateness(problem, edf(problem)),
        "bound": solution.bound,
    }
    if yardstick_s:
        long_run = solve(problem, yardstick_s)
        out["yardstick"] = evaluate(problem, long_run.plan).objective
        out["yardstick_late"] = lateness(problem, long_run.plan)
    return out


def pct(a: float, b: float | None) -> float | None:
    return None if b is None or not b else 100 * (a - b) / abs(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=float, nargs="*", default=[0.3, 0.5, 0.7, 0.85])
    parser.add_argument("--pools", type=int, nargs="*", default=[8, 24])
    parser.add_argument("--jobs", type=int, nargs="*", default=[150, 500])
    parser.add_argument("--shares", type=float, nargs="*", default=[0.0, 0.5, 1.0])
    parser.add_argument("--weeks", nargs="*", default=WEEKS[:1])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--yardstick", type=float, default=None, help="also solve each problem this long")
    parser.add_argument("--out", type=Path, help="append the rows here as JSON lines")
    args = parser.parse_args()
    rows = []
    grid = itertools.product(args.jobs, args.pools, args.loads, args.shares, args.weeks, args.seeds)
    for n_jobs, gpus, load, share, week, seed in grid:
        r = row(week, n_jobs, gpus, load, share, seed, args.time_limit, args.yardstick)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    summarise(rows)


def summarise(rows: list[dict]) -> None:
    print("\n| jobs | GPUs | load | preemptible | runs | solve s (median / worst) | vs LP bound | vs long run | "
          "late: gsched / FIFO / EDF (worst) | rows worse than FIFO or EDF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    key = lambda r: (r["jobs"], r["gpus"], r["load"], r["preemptible"])  # noqa: E731
    for cell, group in itertools.groupby(sorted(rows, key=key), key=key):
        group = list(group)
        solve_s = [r["solve_s"] for r in group]
        gaps = [g for g in (pct(r["objective"], r["bound"]) for r in group) if g is not None]
        longs = [g for g in (pct(r["objective"], r.get("yardstick")) for r in group) if g is not None]
        worse = sum(1 for r in group if r["late"][0] > min(r["fifo_late"], r["edf_late"])[0]
                    or r["late"][1] > min(r["fifo_late"], r["edf_late"])[1] + 1e-6)

        def mw(values: list[float], fmt: str = "{:+.2f}%") -> str:
            return "n/a" if not values else f"{fmt.format(statistics.median(values))} / {fmt.format(max(values))}"

        print(f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | {len(group)} | {mw(solve_s, '{:.1f}')} | "
              f"{mw(gaps)} | {mw(longs)} | {max(r['late'][0] for r in group)} / "
              f"{max(r['fifo_late'][0] for r in group)} / {max(r['edf_late'][0] for r in group)} | {worse} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--summarise":
        summarise([json.loads(line) for path in sys.argv[2:] for line in Path(path).read_text().splitlines()])
    else:
        main()
