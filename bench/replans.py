"""Anytime across replans: the daemon's replans chained on one problem, each from the plan before it.

    .venv/bin/python bench/replans.py sweep           # 500 jobs submitted at once, 24 GPUs (docs/benchmarks.md)
    .venv/bin/python bench/replans.py burst           # 250 of 600 jobs within 30 minutes, 45 GPUs
    .venv/bin/python bench/replans.py sweep --yardstick 300 --limit 5 --replans 12
    .venv/bin/python bench/replans.py daemon --yardstick 300  # the sweep through Planning.replan and a store

Each replan is what Planning.replan does: solve() at the daemon's limit (planner.time_limit_s, default 5 s) and
hysteresis (2%), given the last plan as ``previous`` and its GPU-slot prices; the daemon replans again until two replans in a row did not
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
import math
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


def daemon_sweep(n_jobs: int, gpus: int, limit_s: float, max_replans: int, yardstick_s: float, seed: int) -> None:
    """The sweep through the daemon's own planning step: job files parsed and stored in a real SQLite store,
    Planning.replan (modes from the default scaling model, the previous plans read back from the store, hysteresis),
    jobs due started as the daemon's dispatch would start them, and the next replan taken while planning.improving
    says so, on a clock that advances by each replan's time and a tick."""
    import random
    import tempfile
    from datetime import timedelta

    from scheduler.config import Config, PlannerSettings
    from scheduler.devices import Device
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.outcomes import QUEUED
    from scheduler.planning import Planning, busy_per_slot
    from scheduler.profiles import Profiles
    from scheduler.store import Store
    from scheduler.timeutil import rfc3339

    home = Path(tempfile.mkdtemp(prefix="gsched-bench-"))
    store = Store(home / "g.db")
    config = Config(planner=PlannerSettings(time_limit_s=limit_s, horizon_hours=168))
    devices = [Device(i, f"GPU-{i}", "simulated H100", "gpu", 80 * 1024, 700.0, 200.0, 700.0) for i in range(gpus)]
    planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)  # a Monday: the embedded trace's June week
    slot = timedelta(minutes=config.planner.slot_minutes)
    horizon = config.planner.horizon_hours * 60 // config.planner.slot_minutes
    rnd = random.Random(seed)
    drafts = []
    for k in range(n_jobs):
        gpus_min = rnd.choice([1, 1, 2, 2, 4, 8])
        elastic = rnd.random() < 0.5
        drafts.append((gpus_min, min(8, 2 * gpus_min) if elastic else gpus_min, rnd.random() < 0.5,
                       min(30.0, max(0.25, rnd.lognormvariate(math.log(2.0), 0.9)))))
    busy_h = sum(g * h for g, _m, _p, h in drafts)
    scale = 0.6 * gpus * 168 / busy_h  # load 0.6 of the pool's week in the requested (smallest) modes
    for k, (gpus_min, gpus_max, preemptible, hours) in enumerate(drafts):
        due = now + timedelta(hours=168 * (0.7 + 0.3 * k / n_jobs))
        text = (f'name = "sweep-{k}"\ncommand = ["true"]\nduration = "{round(hours * scale * 3600)}s"\n'
                f'gpus = {{ min = {gpus_min}, max = {gpus_max} }}\npreemptible = {str(preemptible).lower()}\n'
                f'deadline = "{rfc3339(due)}"\n[optimisations]\nprecision = ["fp32", "bf16"]\npower_cap_w = [525]\n')
        spec = parse_job(text, source=f"sweep-{k}.toml", base_dir=home, now=now)
        store.add_job(spec, owner_uid=1000, owner_name="sweeper", urgent=False, now=now)
    grid0 = now
    started: dict[str, object] = {}  # job id -> the option it started with (slots on grid0)
    first = None
    print(f"daemon sweep: {n_jobs} jobs on {gpus} GPUs, limit {limit_s:g} s")
    print("| replan | at | solve s | method | queued | started | objective (all jobs) | vs yardstick | late |")
    print("|---|---|---|---|---|---|---|---|---|")
    stale_ok, r = True, 0
    yard = None
    while stale_ok and r < max_replans:
        r += 1
        queued = store.jobs(QUEUED)
        running = store.jobs([JobState.RUNNING])
        held = busy_per_slot(running, now, grid0, slot, horizon)
        planning.replan(now, grid0, queued, {"pool": [gpus - h for h in held]}, {})
        problem, solution = planning.last_problem, planning.last_solution
        if first is None:
            first = problem
            if yardstick_s:
                long_run = solve(problem, yardstick_s)
                yard = evaluate(problem, long_run.plan)
                print(json.dumps({"yardstick_s": yardstick_s, "objective": yard.objective,
                                  "late": lateness(problem, yard)[0]}), flush=True)
        whole = {**{k: v for k, v in started.items()}, **solution.plan}
        e = evaluate(first, whole)
        gap = f"{100 * (e.objective - yard.objective) / abs(yard.objective):+.2f}%" if yard else "n/a"
        print(f"| {r} | +{(now - grid0).total_seconds():.0f} s | {solution.stats['solve_s']:.1f} | "
              f"{solution.stats['method']} | {len(queued)} | {len(started)} | {e.objective:.2f} | {gap} | "
              f"{lateness(first, e)[0]} |", flush=True)
        now += timedelta(seconds=solution.stats["solve_s"] + config.daemon.tick_s)
        for job in store.jobs([JobState.PLANNED]):  # the daemon's dispatch: a planned start that is due
            if job.planned_start is not None and job.planned_start <= now and job.id is not None:
                started[str(job.id)] = solution.plan[str(job.id)]
                store.transition(job.id, JobState.RUNNING, at=now, reason="started (bench)", gpus=job.planned_gpus,
                                 started_at=now)
        soon = now + timedelta(seconds=limit_s + 2 * config.daemon.tick_s)
        stale_ok = planning.improving and not any(j.planned_start is not None and j.planned_start <= soon
                                                  for j in store.jobs(QUEUED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sweep", "burst", "daemon"],
                        help="daemon: the sweep through the daemon's own planning step (Planning.replan, a store)")
    parser.add_argument("--limit", type=float, default=5.0, help="each replan's time limit (the daemon's default)")
    parser.add_argument("--replans", type=int, default=12, help="at most this many replans")
    parser.add_argument("--yardstick", type=float, default=0.0, help="also solve once for this long (300 or 60)")
    parser.add_argument("--hysteresis", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.kind == "daemon":
        daemon_sweep(500, 24, args.limit, args.replans, args.yardstick, args.seed)
        return
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
    prices = None
    stale = 0
    for r in range(1, args.replans + 1):
        t0 = time.monotonic()
        solution = solve(p, args.limit, previous, args.hysteresis, prices=prices)
        prices = solution.prices
        took_s = time.monotonic() - t0
        e = evaluate(p, solution.plan)
        late = lateness(p, e)
        gap = f"{100 * (e.objective - yard.objective) / abs(yard.objective):+.2f}%" if yard else "n/a"
        more = improving(solution.stats, args.limit)
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
