"""A Lagrangian relaxation of the GPU capacity: prices per GPU-slot and a lower bound where the LP is too big.

Priced at lambda per GPU-slot, the jobs no longer share anything: each takes its own cheapest run at cost + the
GPUs x lambda it occupies, and

    L(lambda) = sum over jobs of that cheapest priced run - sum over slots of lambda x capacity

is a lower bound on every plan for any lambda >= 0. Subgradient steps (Polyak's, towards an upper bound from a
known plan) raise the prices where the runs overfill the capacity and lower them where GPUs idle. One step is a
few passes over a flat array of every (job, mode, start): thousands of jobs on a hundred GPUs take well under a
second per step, where the LP would not be built in the time.

Preemptible jobs take their cheapest contiguous run in the steps (it steers the prices); in the bound they count
the cheapest work they could possibly buy: work x their cheapest priced cost per unit of work in any slot and
mode, which no plan beats, however it splits them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from scheduler.planner.options import Costing
from scheduler.planner.prices import RigidBlock, Rounding


@dataclass
class Lagrangian:
    bound: float  # -inf when no step ran
    capacity_price: np.ndarray  # >= 0 per slot
    steps: int
    status: str = "Lagrangian"
    theta: float = 1.0  # the step scale reached: a replan that starts from these prices goes on from it
    # (share of the steps, job, mode, start, end, cost) of every run some step picked, on time, most picked first:
    # the averaged steps approximate the LP's solution, and the greedy places these first, as it rounds the LP's
    rounding: list[Rounding] = field(default_factory=list)
    rigid: list[RigidBlock] = field(default_factory=list)  # no columns: the LP's alone
    preemptible_x: dict[int, np.ndarray] = field(default_factory=dict)


class Runs:
    """Every (job, mode, start) run in flat arrays, grouped by job."""

    def __init__(self, costing: Costing) -> None:
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        gpus: list[np.ndarray] = []
        costs: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        modes: list[np.ndarray] = []
        real: list[np.ndarray] = []
        horizon = costing.horizon
        for j, job in enumerate(costing.problem.jobs):
            for end in (job.deadline_slot, horizon):  # a job that cannot be on time: over the horizon, penalised
                blocks = [(m, *costing.rigid_costs(job, m, end)) for m in range(len(job.modes))]
                if any(len(b[1]) for b in blocks):
                    break
            for m, s, c, n in blocks:
                if not len(s):
                    continue
                e = s + n
                if s[0] == 0:  # a run from a partly elapsed slot 0 may end a slot later
                    e[0] = costing.run_end(job, m, 0, n)
                starts.append(s)
                ends.append(e)
                gpus.append(np.full(len(s), job.modes[m].gpus))
                costs.append(c + costing.late_penalty * np.maximum(0, e - job.deadline_slot))
                real.append(np.where(e > job.deadline_slot, np.inf, c))  # inf: late
                owner.append(np.full(len(s), j))
                modes.append(np.full(len(s), m))
        self.count = sum(len(s) for s in starts)
        cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts  # noqa: E731
               else np.zeros(0, dtype=dtype))
        self.start, self.end = cat(starts, np.int64), cat(ends, np.int64)
        self.gpus, self.cost, self.job = cat(gpus, float), cat(costs, float), cat(owner, np.int64)
        self.mode, self.real = cat(modes, np.int64), cat(real, float)
        # jobs with at least one run, and where their runs begin in the flat arrays
        self.jobs = np.unique(self.job)
        self.offsets = np.searchsorted(self.job, self.jobs)

    def cheapest(self, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each job's cheapest run at GPU-slot prices (``prefix``: their running sum): (priced costs, indices)."""
        key = self.cost + self.gpus * (prefix[self.end] - prefix[self.start])
        low = np.minimum.reduceat(key, self.offsets)
        at_min = np.flatnonzero(key <= low[np.searchsorted(self.jobs, self.job)] + 1e-12 * (1 + np.abs(key)))
        _jobs, first = np.unique(self.job[at_min], return_index=True)
        return low, at_min[first]


def preemptible_floor(costing: Costing, price: np.ndarray) -> float:
    """Per preemptible job, work x its cheapest cost per unit of work over its slots and modes at ``price``."""
    total = 0.0
    for job in costing.problem.jobs:
        if not job.preemptible:
            continue
        lo, hi = job.release_slot, min(job.deadline_slot, costing.horizon)
        if max(m.rate for m in job.modes) * (hi - lo) * costing.slot_h < job.work:
            return float("-inf")  # it will be late: its late slots are not bounded here
        w, p = costing.w[lo:hi], price[lo:hi]
        best = min(float(np.min((m.power_kw * w + m.gpus * p / costing.slot_h) / m.rate)) for m in job.modes)
        total += job.work * best
    return total


def lagrangian(costing: Costing, deadline_s: float, upper: float | None = None, max_steps: int = 200,
               price0: np.ndarray | None = None, theta0: float = 1.0) -> Lagrangian | None:
    """Subgradient ascent on L until ``deadline_s`` (monotonic) or ``max_steps``; None when a job has no run.
    ``price0``, ``theta0``: where a replan's ascent starts (the last replan's prices on this grid), so that the
    replans' short ascents add up to a long one."""
    problem, horizon = costing.problem, costing.horizon
    runs = Runs(costing)
    if len(runs.jobs) < len(problem.jobs) or not runs.count:
        return None
    capacity = costing.capacity.astype(float)
    rigid = np.array([not job.preemptible for job in problem.jobs])
    price = np.zeros(horizon) if price0 is None else np.maximum(0.0, np.asarray(price0, dtype=float))
    best_value, best_price = float("-inf"), price.copy()
    theta, stale, steps = theta0, 0, 0
    tally = np.zeros(runs.count)
    while steps < max_steps and time.monotonic() < deadline_s:
        prefix = np.concatenate([[0.0], np.cumsum(price)])
        low, picked = runs.cheapest(prefix)
        value = float(low[rigid].sum()) - float(price @ capacity)
        use = np.zeros(horizon + 1)
        np.add.at(use, runs.start[picked], runs.gpus[picked])
        np.add.at(use, runs.end[picked], -runs.gpus[picked])
        over = np.cumsum(use)[:horizon] - capacity
        steps += 1
        if steps % 2:  # the early steps, far from the prices, overfill the slots: forget them as the steps go
            tally *= 0.9
        tally[picked] += 1
        surrogate = value + float(low[~rigid].sum())
        if steps == 1 or surrogate > best_value + 1e-9 * max(1.0, abs(best_value)):
            best_value, best_price, stale = surrogate, price.copy(), 0
        else:
            stale += 1
            if stale >= 5:
                theta, stale = theta / 2, 0
        subgradient = np.where((price > 0) | (over > 0), over, 0.0)
        norm = float(subgradient @ subgradient)
        if norm == 0 or theta < 1e-4:
            break  # the cheapest runs fit: these prices are optimal for the relaxation
        target = upper if upper is not None and upper > surrogate else surrogate + 0.05 * abs(surrogate) + 1e-6
        price = np.maximum(0.0, price + theta * (target - surrogate) / norm * subgradient)
    prefix = np.concatenate([[0.0], np.cumsum(best_price)])
    low, _picked = runs.cheapest(prefix)
    bound = float(low[rigid].sum()) - float(best_price @ capacity) + preemptible_floor(costing, best_price)
    share = tally / max(1e-9, float(tally.sum()) / len(problem.jobs))
    used = np.flatnonzero((share >= 0.5) & np.isfinite(runs.real))  # a job's majority run, if it has one
    used = used[np.argsort(-share[used], kind="stable")]
    rounding = [(float(share[i]), int(runs.job[i]), int(runs.mode[i]), int(runs.start[i]), int(runs.end[i]),
                 float(runs.real[i])) for i in used]
    return Lagrangian(bound, best_price, steps, rounding=rounding, theta=theta)
