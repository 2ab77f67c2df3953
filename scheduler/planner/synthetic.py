"""Seeded job mixes for the planner's benchmark and tests: pure, given the signals.

The mix follows bench/planner.py's (which documents it): lognormal one-GPU work, requested 1-8 GPUs, half of
the jobs elastic over power-of-two counts, per-job scaling exponents, bf16 for 60%, two power caps. Here the
load is set directly: the work is scaled so that the jobs in their requested modes keep ``load`` of the pool's
GPU-hours over the horizon busy, and each deadline is 4-9x the job's run time in its requested mode (at least
2 h) after its release, inside the horizon; arrivals are spread over the horizon.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import datetime

from scheduler.planner.problem import Mode, PJob, Problem


def job_modes(rnd: random.Random, counts: list[int], requested_gpus: int) -> tuple[tuple[Mode, ...], int]:
    """One job's modes, as bench/planner.py documents them, and the index of the requested one."""
    alpha = rnd.uniform(0.70, 0.95)
    precisions = [("fp32", 1.0)] + ([("bf16", rnd.uniform(1.3, 2.0))] if rnd.random() < 0.6 else [])
    gpu_kw = rnd.choice([0.4, 0.7])
    modes: list[Mode] = []
    requested = 0
    for g in counts:
        for name, speed in precisions:
            for cap in (1.0, 0.75):
                if g == requested_gpus and name == "fp32" and cap == 1.0:
                    requested = len(modes)
                modes.append(Mode(g, g ** alpha * speed * cap ** 0.35, g * (gpu_kw * cap + 0.1),
                                  f"{g}x {name} {int(cap * 100)}%"))
    return tuple(modes), requested


def heavy_jobs(n_jobs: int, gpus: int, load: float, preemptible_share: float, seed: int, horizon_slots: int,
               slot_minutes: int = 15, release_share: float = 1.0) -> list[PJob]:
    rnd = random.Random(seed)
    per_h = 60 / slot_minutes
    horizon_h = horizon_slots / per_h
    sizes = [g for g in (1, 1, 2, 2, 4, 8) if g <= gpus]
    drafts = []
    for i in range(n_jobs):
        release = rnd.random()  # where in its feasible range it arrives, drawn now for a stable seed
        work = min(30.0, max(0.25, rnd.lognormvariate(math.log(2.0), 0.9)))
        requested_gpus = rnd.choice(sizes)
        counts = [g for g in (1, 2, 4, 8) if g <= gpus and (rnd.random() < 0.5 or g == requested_gpus)]
        if requested_gpus not in counts:
            counts = sorted({*counts, requested_gpus})
        modes, requested = job_modes(rnd, counts, requested_gpus)
        preemptible = rnd.random() < preemptible_share
        drafts.append((i, release, work, modes, requested, preemptible, rnd.uniform(4.0, 9.0),
                       rnd.choice([5.0, 10.0])))
    busy_h = sum(modes[req].gpus * work / modes[req].rate for _i, _r, work, modes, req, *_ in drafts)
    scale = load * gpus * horizon_h / busy_h
    jobs = []
    for i, release, work, modes, requested, preemptible, stretch, overhead in drafts:
        work *= scale
        # No job longer than a third of the horizon in its requested mode: it must fit with its deadline.
        work = min(work, modes[requested].rate * horizon_h / 3)
        run_h = work / modes[requested].rate
        window = min(horizon_slots, max(math.ceil(2 * per_h), math.ceil(stretch * run_h * per_h)))
        release = int(release * release_share * (horizon_slots - window))  # arrivals spread over the horizon
        jobs.append(PJob(f"job{i}", release, release + window, work, modes, requested, preemptible,
                         overhead if preemptible else 0.0))
    return jobs


def heavy_problem(n_jobs: int, gpus: int, load: float, preemptible_share: float, seed: int, start: datetime,
                  price: Sequence[float], carbon: Sequence[float], slot_minutes: int = 15,
                  carbon_price_eur_per_t: float = 100.0) -> Problem:
    """A problem over the whole of ``price``/``carbon`` (one value per slot)."""
    jobs = heavy_jobs(n_jobs, gpus, load, preemptible_share, seed, len(price), slot_minutes)
    return Problem(start, slot_minutes, gpus, carbon_price_eur_per_t, tuple(price), tuple(carbon), tuple(jobs))
