"""Pipelines: jobs that run after others (``PJob.after``), planned together with them.

The solvers place each job inside its window [release_slot, deadline_slot). Precedence is kept by windows: each
predecessor gets an end-by slot, which becomes its deadline and its dependents' release, so whatever the solvers do
inside the windows, a dependent starts after its predecessors end. The end-by slots are chosen jointly: each
predecessor's is the slot that minimises its own cheapest run ending by then plus its dependents' cheapest runs
starting from then, in rounds over all predecessors until none moves. So a first step moves earlier when the step
after it needs a cheap window, and a pipeline's last deadline bounds all of its steps. The runs are priced alone,
at the problem's slot weights, capacity aside: the solvers then place every job on the GPUs inside its window.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from scheduler.errors import InputError
from scheduler.planner.options import Costing
from scheduler.planner.problem import PJob, Problem

ROUNDS = 5


def order(jobs: tuple[PJob, ...]) -> list[int]:
    """The jobs' indices, each after its predecessors (those in the problem); InputError naming a cycle."""
    index = {job.id: j for j, job in enumerate(jobs)}
    done: list[int] = []
    state = [0] * len(jobs)  # 0 unseen, 1 on the path, 2 placed
    for root in range(len(jobs)):
        stack = [(root, iter(jobs[root].after))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            j, preds = stack[-1]
            p = next((index[q] for q in preds if q in index), None)
            if p is None:
                stack.pop()
                state[j] = 2
                done.append(j)
            elif state[p] == 1:
                raise InputError(f"jobs {jobs[p].id!r} and {jobs[j].id!r}: their 'after' makes a cycle")
            elif state[p] == 0:
                state[p] = 1
                stack.append((p, iter(jobs[p].after)))
    return done


def predecessors(jobs: tuple[PJob, ...]) -> list[list[int]]:
    """Each job's predecessors in the problem, by index (a predecessor outside it has ended or is running)."""
    index = {job.id: j for j, job in enumerate(jobs)}
    return [[index[q] for q in job.after if q in index] for job in jobs]


def in_order(priority: list[int], preds: list[list[int]]) -> list[int]:
    """``priority`` changed only where a job comes before one of its predecessors: it then comes as soon as the last
    of them has (Kahn's order, ties by ``priority``). Jobs on a cycle come last."""
    if not any(preds):
        return priority
    rank = {j: k for k, j in enumerate(priority)}
    waiting = {j: len(set(preds[j])) for j in priority}
    deps: dict[int, list[int]] = {}
    for j in priority:
        for p in set(preds[j]):
            deps.setdefault(p, []).append(j)
    heap = [(rank[j], j) for j in priority if not waiting[j]]
    heapq.heapify(heap)
    out: list[int] = []
    while heap:
        _, j = heapq.heappop(heap)
        out.append(j)
        for d in deps.get(j, ()):
            waiting[d] -= 1
            if not waiting[d]:
                heapq.heappush(heap, (rank[d], d))
    placed = set(out)
    return out + [j for j in priority if j not in placed]


def ready_slot(preds: list[int], ends: Mapping[int, int]) -> int | None:
    """The first slot a job may start in: its predecessors' last ends (0 without any); None while one has no run."""
    if any(p not in ends for p in preds):
        return None
    return max((ends[p] for p in preds), default=0)


class _Runs:
    """A job's cheapest contiguous run inside a window, over its modes, priced alone, for every window end (or
    start) at once."""

    def __init__(self, costing: Costing, job: PJob) -> None:
        free = replace(job, release_slot=0, start_by_slot=None, after=())
        self.horizon = costing.horizon
        self.tables = []  # per mode: (cost of the run starting at each slot, inf where none; its slots)
        for m in range(len(job.modes)):
            starts, costs, n = costing.rigid_costs(free, m, costing.horizon)
            table = np.full(costing.horizon + 1, math.inf)
            table[starts] = costs
            self.tables.append((table, n))
        self.shortest = min((n for _t, n in self.tables), default=1)

    def ending_by(self, lo: int) -> np.ndarray:
        """[s]: the cheapest run that starts at ``lo`` or later and ends by slot s."""
        best = np.full(self.horizon + 1, math.inf)
        for table, n in self.tables:
            seg = table.copy()
            seg[:lo] = math.inf
            cheapest = np.minimum.accumulate(seg)  # [t]: of the runs starting in lo..t
            if n <= self.horizon:
                best[n:] = np.minimum(best[n:], cheapest[:self.horizon + 1 - n])
        return best

    def starting_from(self, hi: int) -> np.ndarray:
        """[s]: the cheapest run that starts at slot s or later and ends by ``hi``."""
        best = np.full(self.horizon + 1, math.inf)
        for table, n in self.tables:
            seg = table.copy()
            seg[max(0, hi - n + 1):] = math.inf
            best = np.minimum(best, np.minimum.accumulate(seg[::-1])[::-1])
        return best


def with_precedence(problem: Problem) -> Problem:
    """The problem with each pipeline's windows set (see the module's text); the problem itself where no job has a
    predecessor in it."""
    jobs = problem.jobs
    preds = predecessors(jobs)
    if not any(preds):
        return problem
    topo = order(jobs)
    deps: list[list[int]] = [[] for _ in jobs]
    for d, ps in enumerate(preds):
        for p in ps:
            deps[p].append(d)
    costing = Costing(problem)
    runs = {j: _Runs(costing, jobs[j]) for j in range(len(jobs)) if preds[j] or deps[j]}
    horizon = costing.horizon
    # the latest each job may end for all after it to meet their deadlines, at their fastest
    latest = [min(job.deadline_slot, horizon) for job in jobs]
    for j in reversed(topo):
        for d in deps[j]:
            latest[j] = min(latest[j], latest[d] - runs[d].shortest)
    end_by = {p: latest[p] for p in range(len(jobs)) if deps[p]}

    def release(j: int) -> int:
        return max([jobs[j].release_slot, *(end_by[p] for p in preds[j])])

    def window_end(j: int) -> int:
        return min(jobs[j].deadline_slot, horizon, end_by.get(j, horizon))

    slots = np.arange(horizon + 1)
    for _round in range(ROUNDS):
        moved = False
        for p in reversed(topo):
            if p not in end_by:
                continue
            lo = release(p)
            total = runs[p].ending_by(lo)
            for d in deps[p]:
                others = max([jobs[d].release_slot, *(end_by[q] for q in preds[d] if q != p)])
                total = total + runs[d].starting_from(window_end(d))[np.maximum(slots, others)]
            first = min(lo + runs[p].shortest, horizon)
            last = min(max(first, latest[p]), horizon)
            candidates = total[first:last + 1]
            # nothing fits on time: the earliest end, so the dependents are as little late as they can be
            best_s = first + int(np.argmin(candidates)) if np.isfinite(candidates).any() else first
            if best_s != end_by[p]:
                end_by[p], moved = best_s, True
        if not moved:
            break
    return replace(problem, jobs=tuple(
        replace(job, release_slot=min(release(j), horizon), deadline_slot=window_end(j) if j in end_by
                else job.deadline_slot)
        for j, job in enumerate(jobs)))
