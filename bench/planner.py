"""Planner benchmark on real grid data: savings against run-now, Let's Wait Awhile and a CarbonScaler-style
greedy, the gap to the LP lower bound, and solve time.

    .venv/bin/python bench/planner.py                 # docs/benchmarks.md's table (about 3 minutes on 2 cores)
    .venv/bin/python bench/planner.py --jobs 500 --work-scale 0.3 --windows DE-LU:2023-06-05 --time-limit 60
    .venv/bin/python bench/planner.py --windows ES:2023-04-03 US-CAL-CISO:2024-05-06 DE-LU:2023-01-09 \
        --time-limit 300 [--milp-only]             # the yardsticks: the planner, or the MILP alone, for 300 s
    .venv/bin/python bench/planner.py --write-problems DIR   # also save each problem file (for gsched plan)

Signals: hourly day-ahead prices (../shared/data/traces/sustain-cluster-prices; EPEX DE-LU and OMIE ES in
EUR/MWh, Europe/Paris time converted to UTC; CAISO DAM LMP in USD/MWh at 0.92 EUR/USD) and hourly
lifecycle carbon intensity (../shared/data/traces/electricitymaps-hourly), on 15-minute slots over 7 days.

Jobs (seeded): Poisson arrivals over the first 5 days; one-GPU work lognormal (median 2 h, 0.25-30 h; about 40% of the 8 GPUs);
requested 1, 2, 4 or 8 GPUs; half of them elastic (any power-of-two count up to 8); each job its own
scaling exponent (rate ~ n^a, a in 0.70-0.95); 60% may use bf16 (1.3-2.0x faster); power caps at 100%
and 75% of a 400 W or 700 W GPU (throughput ~ cap^0.35), plus 100 W host share per GPU; 40% preemptible
with a 5-10 minute resume overhead; deadline = release + 3-8x the requested mode's run time (at least
2 h later), inside the week. Carbon price 100 EUR/t.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduler.planner.baselines import BASELINES  # noqa: E402
from scheduler.planner.options import Costing  # noqa: E402
from scheduler.planner.problem import Evaluation, PJob, Problem, evaluate, lateness, problem_to_json  # noqa: E402
from scheduler.planner.synthetic import job_modes  # noqa: E402
from scheduler.planner.relax import lp_bound  # noqa: E402
from scheduler.planner.solve import solve  # noqa: E402

TRACES = ROOT.parent / "shared" / "data" / "traces"
USD_TO_EUR = 0.92
WINDOWS = ["DE-LU:2023-01-09", "DE-LU:2023-06-05", "DE-LU:2024-03-04", "DE-LU:2024-09-02", "ES:2023-04-03",
           "US-CAL-CISO:2024-05-06"]
SLOT_MINUTES, DAYS, GPUS = 15, 7, 8


def load_signals(zone: str, monday: datetime) -> tuple[list[float], list[float]]:
    hours = DAYS * 24
    wanted = [monday + timedelta(hours=h) for h in range(hours)]
    carbon: dict[datetime, float] = {}
    with (TRACES / f"electricitymaps-hourly/{zone}/{zone}_{monday.year}_hourly.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = datetime.fromisoformat(row["Datetime (UTC)"]).replace(tzinfo=timezone.utc)
            carbon[t] = float(row["Carbon Intensity gCO₂eq/kWh (LCA)"])
    price: dict[datetime, float] = {}
    path = TRACES / f"sustain-cluster-prices/{zone}/{zone}_electricity_prices_{monday.year}.csv"
    with path.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        usd = "USD" in header[1] and zone.startswith("US")
        for stamp, value in reader:
            if zone.startswith("US"):  # naive UTC (CAISO, NYISO)
                t = datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)
            else:  # Europe/Paris market time
                t = datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo("Europe/Paris")).astimezone(timezone.utc)
            price[t] = float(value) * (USD_TO_EUR if usd else 1.0)
    out_price, out_carbon, last_price = [], [], None
    for t in wanted:
        last_price = price.get(t, last_price)  # DST and missing hours: carry the last price forward
        if last_price is None:
            raise SystemExit(f"{zone}: no price at {t}")
        out_price.append(last_price)
        out_carbon.append(carbon[t])
    per_hour = 60 // SLOT_MINUTES
    return ([p for p in out_price for _ in range(per_hour)], [c for c in out_carbon for _ in range(per_hour)])


def make_jobs(n_jobs: int, seed: int, work_scale: float = 1.0) -> list[PJob]:
    rnd = random.Random(seed)
    slots_per_h = 60 // SLOT_MINUTES
    horizon = DAYS * 24 * slots_per_h
    jobs = []
    for i in range(n_jobs):
        release = int(rnd.uniform(0, 5 * 24) * slots_per_h)
        work = work_scale * min(30.0, max(0.25, rnd.lognormvariate(math.log(2.0), 0.9)))  # one-GPU h, fp32, full power
        requested_gpus = rnd.choice([1, 1, 2, 2, 4, 8])
        elastic = rnd.random() < 0.5
        counts = [g for g in (1, 2, 4, 8) if elastic or g == requested_gpus]
        modes, requested = job_modes(rnd, counts, requested_gpus)
        run_h = work / modes[requested].rate
        window = max(2 * slots_per_h, math.ceil(rnd.uniform(3.0, 8.0) * run_h * slots_per_h))
        release = max(0, min(release, horizon - window))  # every deadline falls inside the week
        preemptible = rnd.random() < 0.4
        jobs.append(PJob(f"job{i}", release, release + window, work, tuple(modes), requested, preemptible,
                         rnd.choice([5.0, 10.0]) if preemptible else 0.0))
    return jobs


def late_jobs(problem: Problem, evaluation: Evaluation) -> int:
    return lateness(problem, evaluation)[0]


def run(window: str, n_jobs: int, seed: int, time_limit_s: float, write: Path | None, work_scale: float,
        use_lns: bool = True) -> dict[str, object]:
    zone, day = window.split(":")
    monday = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    price, carbon = load_signals(zone, monday)
    problem = Problem(monday, SLOT_MINUTES, GPUS, 100.0, tuple(price), tuple(carbon),
                      tuple(make_jobs(n_jobs, seed, work_scale)))
    if write is not None:
        write.mkdir(parents=True, exist_ok=True)
        (write / f"{zone}_{day}_{n_jobs}.json").write_text(json.dumps(problem_to_json(problem)))
    t0 = time.monotonic()
    solution = solve(problem, time_limit_s, use_lns=use_lns)
    solve_s = time.monotonic() - t0
    ours = evaluate(problem, solution.plan)
    bound, status = lp_bound(Costing(problem))
    row: dict[str, object] = {"window": window, "jobs": n_jobs, "solve_s": solve_s, "method": solution.stats["method"],
                              "objective": ours.objective, "cost_eur": ours.cost_eur, "co2_kg": ours.co2_g / 1000,
                              "late": late_jobs(problem, ours), "bound": bound if status == "Optimal" else None}
    for name, policy in BASELINES.items():
        other = evaluate(problem, policy(problem))
        row[name] = {"objective": other.objective, "cost_eur": other.cost_eur, "co2_kg": other.co2_g / 1000,
                     "late": late_jobs(problem, other)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--windows", nargs="*", default=WINDOWS)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-scale", type=float, default=1.0,
                        help="scale every job's work (0.3 keeps 500 jobs at the load of 150)")
    parser.add_argument("--write-problems", type=Path)
    parser.add_argument("--milp-only", action="store_true",
                        help="no neighbourhood search: the MILP alone for the whole limit (the long-run yardstick)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    args = parser.parse_args()
    print("| window (Monday, 7 days) | jobs | solve s | gsched EUR | kgCO2 | vs run-now EUR | kgCO2 | vs LWA | "
          "vs CarbonScaler | gap to LP bound | late: gsched / run-now / LWA / CS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for window in args.windows:
        r = run(window, args.jobs, args.seed, args.time_limit, args.write_problems, args.work_scale,
                not args.milp_only)
        now, lwa, cs = r["run-now"], r["lwa"], r["carbonscaler"]

        def pct(base: dict, r: dict = r) -> str:
            return f"{100 * (base['objective'] - r['objective']) / abs(base['objective']):+.1f}%"

        gap = (f"{100 * (r['objective'] - r['bound']) / abs(r['bound']):.2f}%" if r["bound"] and not r["late"]
               else "n/a")  # a plan with a late job is not comparable with an on-time bound
        print(f"| {window} | {r['jobs']} | {r['solve_s']:.1f} | {r['cost_eur']:.2f} | {r['co2_kg']:.0f} | "
              f"-{now['cost_eur'] - r['cost_eur']:.2f} ({pct(now)}) | -{now['co2_kg'] - r['co2_kg']:.0f} | {pct(lwa)} | "
              f"{pct(cs)} | {gap} | {r['late']} / {now['late']} / {lwa['late']} / {cs['late']} |", flush=True)
        if args.json:
            print(json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
