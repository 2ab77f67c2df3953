"""Anytime across replans: the daemon's replans chained on one problem, each from the plan before it.

    .venv/bin/python bench/replans.py sweep           # 500 jobs submitted at once, 24 GPUs (docs/benchmarks.md)
    .venv/bin/python bench/replans.py burst           # 250 of 600 jobs within 30 minutes, 45 GPUs
    .venv/bin/python bench/replans.py sweep --yardstick 300 --limit 5 --replans 12

Each replan is what Planning.replan does: solve() at the daemon's limit (planner.time_limit_s, default 5 s) and
hysteresis (2%), given the last plan as ``previous``; the daemon replans again until two replans in a row did not
improve on the plan they started from (planning.improving), while nothing is due. The clock is simulated: a replan's minute of wall time is
nothing on 15-minute slots, so every replan sees the same problem. Per replan: its cost against the yardstick (one
solve of --yardstick seconds), late jobs against FIFO/EDF and the yardstick, its solve time against the limit.

Jobs: scheduler/planner/synthetic.py's heavy mix on a real week (DE-LU, 2023-06-05), half of them preemptible.
sweep: 500 jobs released together at the start, load 0.6 of 24 GPUs over the week, due over its last third. burst: 600 jobs on 45 GPUs at
load 0.6, 350 spread over the week and 250 released within the same 30 minutes on its second day.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from planner import load_signals  # noqa: E402

from scheduler.planner.baselines import edf, run_now  # noqa: E402
from scheduler.planner.problem import Problem, evaluate, lateness  # noqa: E402
from scheduler.planner.solve import Previous, Solution, solve  # noqa: E402
from scheduler.planner.synthetic import heavy_jobs  # noqa: E402
from scheduler.planning import STALE_REPLANS, improving  # noqa: E402

WEEK = "DE-LU:2023-06-05"


def problem(kind: str, seed: int) -> Problem:
    zone, day = WEEK.split(":")
    monday = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    price, carbon = load_signals(zone, monday)
    horizon = len(price)
    if kind == "sweep":  # due over the week's last third, as a sweep wanted by the end of the week would be
        gpus = 24
        jobs = [dataclasses.replace(j, deadline_slot=max(j.deadline_slot, int(horizon * (0.7 + 0.3 * k / 500))))
                for k, j in enumerate(heavy_jobs(500, gpus, 0.6, 0.5, seed, horizon, release_share=0.0))]
    else:
        gpus = 45
        spread = heavy_jobs(350, gpus, 0.6 * 350 / 600, 0.5, seed, horizon)
        burst = heavy_jobs(250, gpus, 0.6 * 250 / 600, 0.5, seed + 1, horizon, release_share=0.0)
        day2 = 96
        jobs = spread + [dataclasses.replace(j, id=f"b{j.id}", release_slot=day2 + k % 2,
                                             deadline_slot=min(horizon, j.deadline_slot + day2 + k % 2))
                         for k, j in enumerate(burst)]
    return Problem(monday, 15, gpus, 100.0, tuple(price), tuple(carbon), tuple(jobs))


def previous_of(solution: Solution) -> Previous:
    return {job_id: (o.mode, o.segments, o.seg_modes) for job_id, o in solution.options.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sweep", "burst"])
    parser.add_argument("--limit", type=float, default=5.0, help="each replan's time limit (the daemon's default)")
    parser.add_argument("--replans", type=int, default=12, help="at most this many replans")
    parser.add_argument("--yardstick", type=float, default=0.0, help="also solve once for this long (300 or 60)")
    parser.add_argument("--hysteresis", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    p = problem(args.kind, args.seed)
    fifo, edf_late = lateness(p, evaluate(p, run_now(p))), lateness(p, evaluate(p, edf(p)))
    queue = min(fifo, edf_late)
    yard = None
    if args.yardstick:
        long_run = solve(p, args.yardstick)
        yard = evaluate(p, long_run.plan)
        print(json.dumps({"yardstick_s": args.yardstick, "objective": yard.objective,
                          "late": lateness(p, yard)[0]}), flush=True)
    print(f"{args.kind}: {len(p.jobs)} jobs, {p.gpus} GPUs; late jobs: FIFO {fifo[0]}, EDF {edf_late[0]}")
    print("| replan | solve s | start | method | objective | vs yardstick | late (yardstick) | improving |")
    print("|---|---|---|---|---|---|---|---|")
    previous: Previous | None = None
    stale = 0
    for r in range(1, args.replans + 1):
        t0 = time.monotonic()
        solution = solve(p, args.limit, previous, args.hysteresis)
        took_s = time.monotonic() - t0
        e = evaluate(p, solution.plan)
        late = lateness(p, e)
        gap = f"{100 * (e.objective - yard.objective) / abs(yard.objective):+.2f}%" if yard else "n/a"
        more = improving(solution.stats)
        worse = " (later than a queue!)" if (late[0], late[1]) > queue else ""
        print(f"| {r} | {took_s:.1f} | {solution.stats.get('start')} | {solution.stats['method']} | "
              f"{e.objective:.2f} | {gap} | {late[0]}{worse} ({lateness(p, yard)[0] if yard else '-'}) | {more} |",
              flush=True)
        previous = previous_of(solution)
        stale = 0 if more else stale + 1
        if stale >= STALE_REPLANS:
            break


if __name__ == "__main__":
    main()
