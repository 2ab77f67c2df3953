"""Policies to compare the planner against, on the same problem and the same evaluator.

- run-now: first come first served, each job in its requested mode from its release, as soon as the
  GPUs allow (what a plain queue does).
- edf: earliest deadline first, each job in its requested mode, as soon as the GPUs allow.
- lwa: Let's Wait Awhile (Wiesner et al., Middleware '21): first come first served, requested mode,
  shifted to the cheapest contiguous window before the deadline.
- carbonscaler: CarbonScaler-style (Hanafy et al., SIGMETRICS '24): one job at a time in arrival order;
  a preemptible job grows slot by slot where the marginal work per marginal cost is highest, over the
  GPU counts of its modes; a rigid job is shifted like lwa in its requested mode.
"""

from __future__ import annotations

import heapq

import numpy as np

from scheduler.planner.options import Costing, _runs
from scheduler.planner.problem import EPS, PJob, Plan, Problem, Segment


def _fifo(problem: Problem) -> list[int]:
    return sorted(range(len(problem.jobs)), key=lambda j: (problem.jobs[j].release_slot, j))


def _contiguous(costing: Costing, job: PJob, mode: int, free: np.ndarray, cheapest: bool) -> tuple[int, int] | None:
    for end in ((job.deadline_slot, costing.horizon) if cheapest else (costing.horizon,)):
        starts, costs, n = costing.rigid_costs(job, mode, end)
        if not len(starts):
            continue
        ok = costing.fits(job, mode, starts, n, free)
        if ok.any():
            s = int(starts[ok][np.argmin(costs[ok])] if cheapest and end == job.deadline_slot else starts[ok][0])
            return s, costing.run_end(job, mode, s, n)
    return None


def _edf(problem: Problem) -> list[int]:
    return sorted(range(len(problem.jobs)), key=lambda j: (problem.jobs[j].deadline_slot, problem.jobs[j].release_slot, j))


def _shifted(problem: Problem, cheapest: bool, order: list[int] | None = None) -> Plan:
    costing = Costing(problem)
    free = costing.capacity.copy()
    plan: Plan = {}
    for j in order if order is not None else _fifo(problem):
        job = problem.jobs[j]
        window = _contiguous(costing, job, job.requested_mode, free, cheapest)
        if window is not None:
            free[window[0]:window[1]] -= job.modes[job.requested_mode].gpus
            plan[job.id] = [Segment(window[0], window[1], job.requested_mode)]
    return plan


def run_now(problem: Problem) -> Plan:
    return _shifted(problem, cheapest=False)


def edf(problem: Problem) -> Plan:
    return _shifted(problem, cheapest=False, order=_edf(problem))


def lwa(problem: Problem) -> Plan:
    return _shifted(problem, cheapest=True)


def carbonscaler(problem: Problem) -> Plan:
    costing = Costing(problem)
    free = costing.capacity.copy()
    plan: Plan = {}
    for j in _fifo(problem):
        job = problem.jobs[j]
        segments = _scale(costing, job, free) if job.preemptible else None
        if segments is None:
            window = _contiguous(costing, job, job.requested_mode, free, True)
            if window is None:
                continue
            segments = [Segment(window[0], window[1], job.requested_mode)]
        for seg in segments:
            free[seg.start_slot:seg.end_slot] -= job.modes[seg.mode].gpus
        plan[job.id] = segments
    return plan


def _scale(costing: Costing, job: PJob, free: np.ndarray) -> list[Segment] | None:
    """Marginal greedy over GPU counts: the fastest mode per count, ascending."""
    best: dict[int, int] = {}
    for m, mode in enumerate(job.modes):
        if mode.gpus not in best or mode.rate > job.modes[best[mode.gpus]].rate:
            best[mode.gpus] = m
    ladder = [best[g] for g in sorted(best)]
    slot_h, w = costing.slot_h, costing.w
    lo, hi = job.release_slot, min(job.deadline_slot, costing.horizon)
    level = {t: -1 for t in range(lo, hi)}

    def push(heap: list[tuple[float, int]], t: int) -> None:
        nxt = level[t] + 1
        if nxt >= len(ladder):
            return
        cur = job.modes[ladder[level[t]]] if level[t] >= 0 else None
        mode = job.modes[ladder[nxt]]
        d_work = (mode.rate - (cur.rate if cur else 0.0)) * slot_h
        d_cost = (mode.power_kw - (cur.power_kw if cur else 0.0)) * slot_h * w[t]
        if d_work > EPS:
            heapq.heappush(heap, (d_cost / d_work, t))

    heap: list[tuple[float, int]] = []
    for t in level:
        push(heap, t)
    target = job.work
    while heap:
        _, t = heapq.heappop(heap)
        mode = job.modes[ladder[level[t] + 1]]
        if free[t] < mode.gpus:  # this job is not in free yet
            continue
        level[t] += 1
        push(heap, t)
        segments = _segments(level, ladder)
        done = sum(job.modes[s.mode].rate * (s.end_slot - s.start_slot) * slot_h for s in segments)
        overhead = sum(job.modes[s.mode].rate * job.overhead_h(i) for i, s in enumerate(segments))
        if done - overhead >= target - EPS:
            return segments
    return None


def _segments(level: dict[int, int], ladder: list[int]) -> list[Segment]:
    out: list[Segment] = []
    for mode_level in sorted(set(v for v in level.values() if v >= 0)):
        slots = np.array(sorted(t for t, v in level.items() if v == mode_level))
        out += [Segment(a, b, ladder[mode_level]) for a, b in _runs(slots)]
    return sorted(out, key=lambda s: s.start_slot)


BASELINES = {"run-now": run_now, "edf": edf, "lwa": lwa, "carbonscaler": carbonscaler}
