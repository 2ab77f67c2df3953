"""A partition of many nodes: the planner's size and time with capacity per node, against the same problem pooled.

    .venv/bin/python bench/nodes.py                    # 100 nodes of 8 GPUs, 2,000 jobs, a week, 10 s (docs/benchmarks.md)
    .venv/bin/python bench/nodes.py --nodes 10 --jobs 200 --limit 5

The same jobs and signals are solved twice at the same time limit: once as one pool of GPUs (what the planner did
before it knew nodes) and once with free GPUs per node per slot, each node partly busy with a running job of its own
at the start. Per run: the problem's size (jobs, slots, numbers of capacity it holds), the solve's phases
(relaxation, greedy, placing on nodes), the jobs moved to fit a node, the objective and late jobs. Every plan is
checked by problem.evaluate, which rejects a segment on a node without room; a pooled plan is also checked against
the nodes, to count how many of its runs Slurm could not have started when planned.

Jobs: scheduler/planner/synthetic.py's heavy mix (1-8 GPUs, half of them preemptible, up to 8 GPUs per job, so
every mode fits on one node) on a real week (DE-LU, 2023-06-05).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from planner import load_signals  # noqa: E402

from scheduler.errors import GschedError  # noqa: E402
from scheduler.planner.baselines import run_now  # noqa: E402
from scheduler.planner.problem import Problem, evaluate, lateness  # noqa: E402
from scheduler.planner.solve import solve  # noqa: E402
from scheduler.planner.synthetic import heavy_jobs  # noqa: E402

WEEK = "DE-LU:2023-06-05"


def partition(n_nodes: int, per_node: int, horizon: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """Each node with a running job of 0-per_node GPUs that ends within the first day."""
    rnd = random.Random(seed)
    nodes = []
    for _ in range(n_nodes):
        busy, until = rnd.randint(0, per_node), rnd.randint(1, 96)
        nodes.append(tuple(per_node - busy if t < until else per_node for t in range(horizon)))
    return tuple(nodes)


def not_startable(problem: Problem, plan: dict) -> int:
    """Runs of a plan that no node could take at their planned time, first come first placed (best fit)."""
    free = [list(n) for n in problem.nodes]
    by_id = {j.id: j for j in problem.jobs}
    misses = 0
    runs = sorted((seg.start_slot, job_id, seg) for job_id, segments in plan.items() for seg in segments)
    for _start, job_id, seg in runs:
        gpus, a, b = by_id[job_id].modes[seg.mode].gpus, seg.start_slot, seg.end_slot
        fits = [k for k, f in enumerate(free) if min(f[a:b]) >= gpus]
        if not fits:
            misses += 1
            continue
        k = min(fits, key=lambda k: min(free[k][a:b]))
        for t in range(a, b):
            free[k][t] -= gpus
    return misses


def run(problem: Problem, limit_s: float) -> tuple[dict, dict]:
    t0 = time.monotonic()
    solution = solve(problem, limit_s)
    took_s = time.monotonic() - t0
    try:
        e = evaluate(problem, solution.plan)
        valid, objective, late = True, e.objective, lateness(problem, e)[0]
    except GschedError as exc:  # a plan the nodes cannot hold
        valid, objective, late = False, float("nan"), -1
        print(f"invalid plan: {exc}", file=sys.stderr)
    s = solution.stats
    return {"wall_s": round(took_s, 2), "method": s["method"], "lp_s": round(float(s.get("lp_s", 0.0)), 2),
            "greedy_s": round(float(s.get("greedy_s", 0.0)), 2), "place_s": round(float(s.get("place_s", 0.0)), 3),
            "moved_to_fit_nodes": s.get("moved_to_fit_nodes", 0), "valid": valid, "objective": round(objective, 2),
            "late_jobs": late, "planned": len(solution.plan)}, solution.plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--load", type=float, default=0.6)
    parser.add_argument("--limit", type=float, default=10.0, help="each solve's time limit, s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    zone, day = WEEK.split(":")
    monday = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    price, carbon = load_signals(zone, monday)
    horizon = len(price)
    gpus = args.nodes * args.gpus_per_node
    jobs = [dataclasses.replace(j, modes=tuple(m for m in j.modes if m.gpus <= args.gpus_per_node))
            for j in heavy_jobs(args.jobs, gpus, args.load, 0.5, args.seed, horizon)]
    nodes = partition(args.nodes, args.gpus_per_node, horizon, args.seed)
    per_node = Problem(monday, 15, gpus, 100.0, tuple(price), tuple(carbon), tuple(jobs), nodes=nodes)
    pooled = dataclasses.replace(per_node, nodes=(), capacity=tuple(per_node.free()))
    size = {"jobs": len(jobs), "slots": horizon, "nodes": args.nodes, "gpus": gpus,
            "capacity_numbers_pooled": horizon, "capacity_numbers_per_node": args.nodes * horizon}
    print(json.dumps(size), flush=True)
    runnow = evaluate(pooled, run_now(pooled)).objective
    print(json.dumps({"run_now_objective": round(runnow, 2)}), flush=True)
    out_pooled, pooled_plan = run(pooled, args.limit)
    out_pooled["runs_no_node_could_start"] = not_startable(per_node, pooled_plan)
    print(json.dumps({"pooled": out_pooled}), flush=True)
    print(json.dumps({"per_node": run(per_node, args.limit)[0]}), flush=True)


if __name__ == "__main__":
    main()
