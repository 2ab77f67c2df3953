"""Online vs hindsight: the README's benchmark weeks (bench/planner.py's 150-job mixes on real signals, 8 GPUs)
replayed through `gsched simulate`: the daemon's own replans as the jobs arrive, against run-now and against the
hindsight plan with every job known in advance.

    .venv/bin/python bench/simulate.py                              # the six weeks, perfect forecast, 1 s replans
    .venv/bin/python bench/simulate.py --forecast noise:11:1 --windows DE-LU:2023-06-05
    .venv/bin/python bench/simulate.py --time-limit 5 --windows DE-LU:2023-06-05   # the daemon's default limit

Each job of the mix becomes a history row: submitted at its release, on its requested GPUs for the requested
mode's run time, due at its deadline, preemptible as drawn, elastic ones up to 8 GPUs. The simulation's modes are
the daemon's default scaling model (docs/planner.md), not the bench's own per-job curves, so the figures are not
those of bench/planner.py's table; run-now, gsched and hindsight are all priced on the same jobs and signals.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from planner import GPUS, SLOT_MINUTES, WINDOWS, load_signals, make_jobs  # noqa: E402

from scheduler.config import Config, PlannerSettings  # noqa: E402
from scheduler.forecasts.trace import TraceProvider  # noqa: E402
from scheduler.history import DeadlinePolicy, load_history  # noqa: E402
from scheduler.simulation import Capacity, ForecastMode, say, simulate  # noqa: E402


def week_files(window: str, n_jobs: int, seed: int, directory: Path) -> tuple[Path, Path]:
    zone, day = window.split(":")
    monday = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    price, carbon = load_signals(zone, monday)
    per_hour = 60 // SLOT_MINUTES
    trace = directory / f"{zone}_{day}.csv"
    rows = ["start_utc,price_eur_per_mwh,carbon_g_per_kwh,renewable_share_pct"]
    for h in range(len(price) // per_hour):
        at = (monday + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(f"{at},{price[h * per_hour]},{carbon[h * per_hour]},")
    trace.write_text(f"# {window}: bench/planner.py's signals\n" + "\n".join(rows) + "\n")
    history = directory / f"{zone}_{day}_history.csv"
    slot = timedelta(minutes=SLOT_MINUTES)
    lines = ["id,submit,user,gpus,run_time,deadline,preemptible,gpus_max"]
    for k, job in enumerate(make_jobs(n_jobs, seed)):
        mode = job.modes[job.requested_mode]
        widest = max(m.gpus for m in job.modes)
        run_s = job.work / mode.rate * 3600
        lines.append(f"{job.id},{(monday + job.release_slot * slot):%Y-%m-%dT%H:%M:%SZ},user{k % 5},{mode.gpus},"
                     f"{run_s:.0f},{(monday + job.deadline_slot * slot):%Y-%m-%dT%H:%M:%SZ},"
                     f"{str(job.preemptible).lower()},{widest if widest > mode.gpus else ''}")
    history.write_text("\n".join(lines) + "\n")
    return history, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", nargs="*", default=WINDOWS)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=1.0, help="each replan's limit (the daemon's is 5 s)")
    parser.add_argument("--hindsight-limit", type=float, default=60.0)
    parser.add_argument("--forecast", default="perfect")
    parser.add_argument("--progress", action="store_true", help="progress lines on stderr")
    args = parser.parse_args()
    mode = ForecastMode.parse(args.forecast)
    config = Config(planner=PlannerSettings(time_limit_s=args.time_limit))
    print(f"{args.jobs} jobs a week on {GPUS} GPUs, forecast {mode.label}, replans of at most {args.time_limit:g} s, "
          f"hindsight {args.hindsight_limit:g} s")
    print("| window | replans | sim s | run-now EUR | gsched EUR (saved) | hindsight EUR (saved) | gsched vs hindsight "
          "| late: run-now / gsched / hindsight | wait median / p95 h |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for window in args.windows:
            history_path, trace = week_files(window, args.jobs, args.seed, Path(scratch))
            history = load_history(history_path, DeadlinePolicy())
            t0 = time.monotonic()
            result = simulate(history, config, TraceProvider(trace), mode, Capacity.constant(GPUS),
                              args.hindsight_limit, say if args.progress else None)
            r = result.report
            g, now, h = r["gsched"], r["run_now"], r["hindsight"]
            print(f"| {window} | {r['replans']} | {time.monotonic() - t0:.0f} | {now['cost_eur']:.2f} | "
                  f"{g['cost_eur']:.2f} ({r['saved_vs_run_now']['cost_pct'] or 0:.1f}%) | {h['cost_eur']:.2f} "
                  f"({100 * (now['cost_eur'] - h['cost_eur']) / now['cost_eur']:.1f}%) | "
                  f"{100 * (g['cost_eur'] - h['cost_eur']) / h['cost_eur']:+.1f}% | {now['late_jobs']} / "
                  f"{g['late_jobs']} / {h['late_jobs']} | {g['wait_median_h']:.1f} / {g['wait_p95_h']:.1f} |",
                  flush=True)
            if not r["valid"]:
                print(f"  invalid: {r['errors'][:3]}", flush=True)


if __name__ == "__main__":
    main()
