"""Let's Wait Awhile's problems (Wiesner et al., Middleware '21): its 2020 carbon-intensity traces and job shapes,
solved by gsched's planner within a time limit, against the peer's optimum.

    .venv/bin/python bench/lwa.py                      # every problem at --time-limit 10 (about 10 minutes)
    .venv/bin/python bench/lwa.py --regions ger --scenarios II --flex-hours 8 --capacity 16

Signals: ../shared/data/traces/lets-wait-awhile/{ger,gb,fr}_ci.csv (production-based gCO2/kWh; the repository has
no licence file: read here, never vendored), on 30-minute slots from 2019-12-20 to 2021-01-09 (about 18,500 slots;
Germany's 15-minute values are averaged in pairs). Objective: carbon. Jobs (seeded), in the shapes of the paper's
scenarios: I, a nightly job released at 01:00 every day of 2020 (30 minutes of work); II, 3,387 ad-hoc jobs
released in 2020's working hours (Monday-Friday 09:00-17:00), lognormal work (median 1 h, 0.5-8 h). Each job may
finish up to ``flex`` hours after its earliest end. One mode, one GPU; no capacity limit unless --capacity, so the
peer's optimum is each job's own cheapest window (the lwa baseline), which the planner must equal.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduler.planner.baselines import lwa  # noqa: E402
from scheduler.planner.problem import Mode, PJob, Problem, evaluate, lateness  # noqa: E402
from scheduler.planner.solve import solve  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "traces" / "lets-wait-awhile"
START = datetime(2019, 12, 20, tzinfo=timezone.utc)
SLOT_MINUTES = 30


def signal(region: str) -> list[float]:
    values: dict[datetime, list[float]] = {}
    with (DATA / f"{region}_ci.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = datetime.fromisoformat(row["Time"]).replace(tzinfo=timezone.utc)
            values.setdefault(t.replace(minute=30 * (t.minute // 30)), []).append(float(row["Carbon Intensity"]))
    out, last = [], None
    t = START
    while t <= max(values):
        last = sum(values[t]) / len(values[t]) if t in values else last
        out.append(last)
        t += timedelta(minutes=SLOT_MINUTES)
    return out


def jobs(scenario: str, flex_h: float, horizon: int, seed: int) -> list[PJob]:
    rnd = random.Random(seed)
    per_h = 60 // SLOT_MINUTES
    year0 = round((datetime(2020, 1, 1, tzinfo=timezone.utc) - START) / timedelta(minutes=SLOT_MINUTES))
    out = []
    if scenario == "I":
        releases = [(year0 + d * 24 * per_h + 1 * per_h, 0.5) for d in range(366)]
    else:
        releases = []
        while len(releases) < 3387:
            day = rnd.randrange(366)
            if (datetime(2020, 1, 1) + timedelta(days=day)).weekday() < 5:
                slot = year0 + day * 24 * per_h + rnd.randrange(9 * per_h, 17 * per_h)
                releases.append((slot, min(8.0, max(0.5, rnd.lognormvariate(0.0, 0.8)))))
        releases.sort()
    for i, (release, work_h) in enumerate(releases):
        deadline = min(horizon, release + math.ceil((work_h + flex_h) * per_h))
        out.append(PJob(f"{scenario}{i}", release, deadline, work_h, (Mode(1, 1.0, 1.0),)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", nargs="*", default=["ger", "gb", "fr"])
    parser.add_argument("--scenarios", nargs="*", default=["I", "II"])
    parser.add_argument("--flex-hours", type=float, nargs="*", default=[2, 4, 8, 16, 24])
    parser.add_argument("--capacity", type=int, default=0, help="GPUs (0: one per job, no limit)")
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| region | scenario | flex h | jobs | GPUs | solve s | method | gsched gCO2 | LWA gCO2 | vs LWA | "
          "late: gsched / LWA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for region in args.regions:
        carbon = signal(region)
        for scenario in args.scenarios:
            for flex_h in args.flex_hours:
                js = jobs(scenario, flex_h, len(carbon), args.seed)
                gpus = args.capacity or len(js)
                problem = Problem(START, SLOT_MINUTES, gpus, 0.0, tuple([0.0] * len(carbon)), tuple(carbon),
                                  tuple(js), "carbon")
                t0 = time.monotonic()
                solution = solve(problem, args.time_limit)
                took_s = time.monotonic() - t0
                ours, peer = evaluate(problem, solution.plan), evaluate(problem, lwa(problem))
                gap = 100 * (ours.objective - peer.objective) / peer.objective
                print(f"| {region} | {scenario} | {flex_h:g} | {len(js)} | {gpus} | {took_s:.1f} | "
                      f"{solution.stats['method']} | {ours.objective:.0f} | {peer.objective:.0f} | {gap:+.2f}% | "
                      f"{lateness(problem, ours)[0]} / {lateness(problem, peer)[0]} |", flush=True)


if __name__ == "__main__":
    main()
