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
from dataclasses import replace

import numpy as np

from scheduler.planner.options import Costing, Option, _runs
from scheduler.planner.pipelines import in_order, predecessors, ready_slot
from scheduler.planner.problem import EPS, PJob, Plan, Problem, Segment


def fifo_order(problem: Problem) -> list[int]:
    return sorted(range(len(problem.jobs)), key=lambda j: (problem.jobs[j].release_slot, j))


def edf_order(problem: Problem) -> list[int]:
    jobs = problem.jobs
    return sorted(range(len(jobs)), key=lambda j: (jobs[j].deadline_slot, jobs[j].release_slot, j))


def queue_option(costing: Costing, j: int, free: np.ndarray, cheapest: bool = False, ready: int = 0
                 ) -> Option | None:
    """Job ``j`` in its requested mode, from slot ``ready`` on (its predecessors' end), as early as ``free`` allows
    (late or not); with ``cheapest``, in its cheapest window that ends by its deadline where one fits (Let's Wait
    Awhile), else as early as it can."""
    job = costing.problem.jobs[j]
    if ready > job.release_slot:
        job = replace(job, release_slot=ready)
    m = job.requested_mode
    if cheapest:
        starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
        ok = costing.fits(job, m, starts, n, free)
        if ok.any():
            i = int(np.flatnonzero(ok)[np.argmin(costs[ok])])
            s = int(starts[i])
            return Option(j, m, ((s, costing.run_end(job, m, s, n)),), float(costs[i]))
    starts, costs, n = costing.rigid_costs(job, m, costing.horizon)
    if not len(starts):
        return None
    first = costing.first_fit(job, m, starts, n, free)
    if first is None:
        return None
    s = int(starts[first])
    e = costing.run_end(job, m, s, n)
    return Option(j, m, ((s, e),), float(costs[first]), late=e > job.deadline_slot)


def queue(costing: Costing, order: list[int], cheapest: bool = False) -> dict[int, Option]:
    """A plain queue: each job in ``order``, in its requested mode, where queue_option puts it: the one FIFO and EDF
    that the planner (its deadline guarantee), `gsched plan --compare` and `gsched simulate` all use. A job starts
    after its predecessors' runs end (none without them): it queues behind them, however early it was submitted."""
    free = costing.capacity.copy()
    chosen: dict[int, Option] = {}
    preds = predecessors(costing.problem.jobs)
    ends: dict[int, int] = {}
    for j in in_order(order, preds):
        ready = ready_slot(preds[j], ends)
        if ready is None:
            continue
        option = queue_option(costing, j, free, cheapest, ready)
        if option is not None:
            chosen[j], ends[j] = option, option.end
            a, b = option.segments[0]
            free[a:b] -= costing.problem.jobs[j].modes[option.mode].gpus
    return chosen


def _plan(problem: Problem, chosen: dict[int, Option]) -> Plan:
    return {problem.jobs[j].id: [Segment(a, b, o.mode) for a, b in o.segments] for j, o in sorted(chosen.items())}


def run_now(problem: Problem) -> Plan:
    return _plan(problem, queue(Costing(problem), fifo_order(problem)))


def edf(problem: Problem) -> Plan:
    return _plan(problem, queue(Costing(problem), edf_order(problem)))


def lwa(problem: Problem) -> Plan:
    return _plan(problem, queue(Costing(problem), fifo_order(problem), cheapest=True))


def carbonscaler(problem: Problem) -> Plan:
    costing = Costing(problem)
    free = costing.capacity.copy()
    plan: Plan = {}
    preds = predecessors(problem.jobs)
    ends: dict[int, int] = {}
    for j in in_order(fifo_order(problem), preds):
        ready = ready_slot(preds[j], ends)
        if ready is None:
            continue
        job = problem.jobs[j]
        if ready > job.release_slot:
            job = replace(job, release_slot=ready)
        segments = _scale(costing, job, free) if job.preemptible else None
        if segments is None:
            option = queue_option(costing, j, free, cheapest=True, ready=ready)
            if option is None:
                continue
            segments = [Segment(a, b, option.mode) for a, b in option.segments]
        for seg in segments:
            free[seg.start_slot:seg.end_slot] -= job.modes[seg.mode].gpus
        plan[job.id], ends[j] = segments, max(seg.end_slot for seg in segments)
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
