"""A job's candidate schedules ("options") and their exact costs: what the solvers choose between.

A rigid option is one contiguous segment in one mode. A preemptible job also gets split options: the
cheapest slots in its window for one mode, with each resume's overhead counted. Costs follow
``problem.evaluate`` exactly (partial last slot, overhead at each resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.planner.problem import EPS, PJob, Problem


@dataclass(frozen=True)
class Option:
    job: int  # index into problem.jobs
    mode: int
    segments: tuple[tuple[int, int], ...]  # (start_slot, end_slot exclusive), sorted
    cost: float  # objective units
    late: bool = False  # ends past the job's deadline (its deadline cannot be met)

    @property
    def start(self) -> int:
        return self.segments[0][0]

    @property
    def end(self) -> int:
        return self.segments[-1][1]

    def slots(self) -> np.ndarray:
        return np.concatenate([np.arange(a, b) for a, b in self.segments])


class Costing:
    """Per-problem precomputation: slot weights and their prefix sums."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.slot_h = problem.slot_h
        self.w = np.asarray(problem.weights(), dtype=float)
        self.prefix = np.concatenate([[0.0], np.cumsum(self.w)])
        self.horizon = problem.horizon_slots
        self.capacity = np.asarray(problem.free(), dtype=np.int64)
        # A late slot must cost more than any plan of on-time jobs can save: 100x the dearest conceivable job.
        top_kw = max((m.power_kw for job in problem.jobs for m in job.modes), default=0.0)
        self.late_penalty = 100 * (1 + top_kw * float(np.abs(self.w).sum()) * self.slot_h)
        # Equal windows must not be a coin toss between LP vertices: in the solvers' price (not in the LP bound)
        # each slot of delay costs this much more, so the earliest of equal options wins and stays chosen.
        self.tiebreak = 1e-7 * (1 + top_kw * float(np.abs(self.w).max(initial=0.0)) * self.slot_h)

    def slots_needed(self, job: PJob, mode: int) -> tuple[int, float]:
        """(whole slots, fraction of the last slot used) for one contiguous run."""
        slots_f = job.work / job.modes[mode].rate / self.slot_h
        n = max(1, math.ceil(slots_f - EPS))
        return n, slots_f - (n - 1)

    def rigid_costs(self, job: PJob, mode: int, last_end: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(starts, costs, n) of every contiguous run from the job's release ending by ``last_end``."""
        n, frac = self.slots_needed(job, mode)
        first, last = job.release_slot, min(last_end, self.horizon) - n
        if last < first:
            return np.empty(0, dtype=np.int64), np.empty(0), n
        starts = np.arange(first, last + 1)
        full = self.prefix[starts + n - 1] - self.prefix[starts]
        costs = job.modes[mode].power_kw * self.slot_h * (full + frac * self.w[starts + n - 1])
        return starts, costs, n

    def simulate(self, job: PJob, mode: int, segments: tuple[tuple[int, int], ...]) -> tuple[float, bool]:
        """(exact cost, finished) of running ``segments`` in ``mode`` (the evaluate() semantics)."""
        m = job.modes[mode]
        remaining, cost = job.work, 0.0
        for i, (a, b) in enumerate(segments):
            overhead_h = job.resume_overhead_minutes / 60 if i else 0.0
            for t in range(a, b):
                if remaining <= EPS:
                    return cost, True
                idle_h = min(overhead_h, self.slot_h)
                overhead_h -= idle_h
                progress_h = self.slot_h - idle_h
                powered_h = self.slot_h
                if m.rate * progress_h >= remaining - EPS:
                    powered_h = idle_h + remaining / m.rate
                    remaining = 0.0
                else:
                    remaining -= m.rate * progress_h
                cost += m.power_kw * powered_h * self.w[t]
        return cost, remaining <= EPS

    def split_option(self, j: int, mode: int, free: np.ndarray, price: np.ndarray | None = None) -> Option | None:
        """The cheapest slots (by ``price``, default the weights) in the window with room for this mode."""
        job = self.problem.jobs[j]
        g = job.modes[mode].gpus
        lo, hi = job.release_slot, min(job.deadline_slot, self.horizon)
        if hi <= lo:
            return None
        window = np.arange(lo, hi)
        window = window[free[lo:hi] >= g]
        n, _ = self.slots_needed(job, mode)
        if len(window) < n:
            return None
        key = (self.w if price is None else price)[window]
        order = window[np.lexsort((window, key))]
        overhead_h = job.resume_overhead_minutes / 60
        k = n
        for _ in range(50):
            chosen = np.sort(order[:k])
            runs = 1 + int(np.count_nonzero(np.diff(chosen) != 1))
            needed = max(n, math.ceil((job.work / job.modes[mode].rate + (runs - 1) * overhead_h) / self.slot_h - EPS))
            if needed <= k:
                break
            if needed > len(order):
                return None
            k = needed
        segments = _runs(chosen)
        cost, done = self.simulate(job, mode, segments)
        if not done:
            return None
        return Option(j, mode, _trim(self, job, mode, segments), cost)


def _runs(slots: np.ndarray) -> tuple[tuple[int, int], ...]:
    breaks = np.flatnonzero(np.diff(slots) != 1)
    starts = np.concatenate([[slots[0]], slots[breaks + 1]])
    ends = np.concatenate([slots[breaks], [slots[-1]]]) + 1
    return tuple((int(a), int(b)) for a, b in zip(starts, ends))


def _trim(costing: Costing, job: PJob, mode: int, segments: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Drop slots after the work is done (more were taken than needed when overheads were overestimated)."""
    m = job.modes[mode]
    remaining = job.work
    out = []
    for i, (a, b) in enumerate(segments):
        overhead_h = job.resume_overhead_minutes / 60 if i else 0.0
        for t in range(a, b):
            idle_h = min(overhead_h, costing.slot_h)
            overhead_h -= idle_h
            remaining -= m.rate * (costing.slot_h - idle_h)
            if remaining <= EPS:
                out.append((a, t + 1))
                return tuple(out)
        out.append((a, b))
    return tuple(out)
