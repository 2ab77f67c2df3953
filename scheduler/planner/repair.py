"""Ruin and recreate around late jobs: make room for a late job in its window, then re-place whoever was moved.

A construction heuristic that places jobs one at a time (the greedy) can leave a wide job no on-time window once
narrow ones have fragmented the GPUs: on a full cluster that one late job made the greedy lose to a plain queue
whose plan cost 50% more. Instead of discarding such a plan, each late job gets the on-time run that the fewest
GPU-slots are in the way of; the jobs in the way leave, the late job goes in, and they come back at their best
option given the rest (or as early as they can). The change is kept only if the plan's lateness (late jobs, then
late slots), then its price, improves; otherwise it is undone.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from scheduler.planner.options import Option

if TYPE_CHECKING:
    from scheduler.planner.solve import Planner

CANDIDATES = 3  # on-time runs tried per late job and round, the least obstructed first
DEPTH = 3  # how far a chain of moved jobs, each repaired in turn, may go
REPAIR_S = 0.25  # the most one late job's repair may take: a chain that has not found room by then will not
REPAIR_TRIES = 5  # failed repairs in a row after which the rest are not tried: an overloaded burst, not a crowded job


def repair(planner: Planner, chosen: dict[int, Option], deadline_s: float) -> int:
    """Repair ``chosen`` in place until no late job can be brought on time or ``deadline_s``; returns how many late
    jobs were brought on time (or made less late)."""
    free = planner.costing.capacity.copy()
    for option in chosen.values():
        planner._take(option, free)
    fixed = failed = 0
    tried: set[int] = set()
    while time.monotonic() < deadline_s and failed < REPAIR_TRIES:
        late = [j for j in range(len(planner.jobs)) if j not in tried and (j not in chosen or chosen[j].late)
                and not planner.hopeless(j)]
        if not late:
            break
        # The widest late jobs first: the narrow ones fit into what is left around them.
        late.sort(key=lambda j: -max(m.gpus for m in planner.jobs[j].modes))
        j = late[0]
        tried.add(j)
        if repair_one(planner, j, chosen, free, min(deadline_s, time.monotonic() + REPAIR_S)):
            fixed, failed = fixed + 1, 0
            tried.clear()  # the moves may have opened room for a job tried before
            tried.add(j)
        else:
            failed += 1
    planner.repaired_jobs += fixed
    return fixed


def _candidates(planner: Planner, j: int, free: np.ndarray) -> list[tuple[int, int, int, float]]:
    """(shortage, mode, start, cost) of the job's on-time rigid runs with the fewest missing GPU-slots."""
    job, costing = planner.jobs[j], planner.costing
    out: list[tuple[int, int, int, float]] = []
    for m, mode in enumerate(job.modes):
        starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
        if not len(starts):
            continue
        lo = int(starts[0])
        deficit = np.maximum(0, mode.gpus - free[lo:int(starts[-1]) + n])
        prefix = np.concatenate([[0], np.cumsum(deficit)])
        shortage = prefix[n:] - prefix[:-n]
        for i in np.lexsort((costs, shortage))[:CANDIDATES]:
            out.append((int(shortage[i]), m, int(starts[i]), float(costs[i])))
    out.sort()
    return out[:CANDIDATES]


def repair_one(planner: Planner, j: int, chosen: dict[int, Option], free: np.ndarray, deadline_s: float,
                depth: int = DEPTH, protected: frozenset[int] = frozenset()) -> bool:
    """Bring job ``j`` on time by moving the jobs in the way; a moved job that then is late itself is repaired in
    turn (an ejection chain, ``depth`` deep). Keeps the change only if the plan's rank improves."""
    job, costing = planner.jobs[j], planner.costing
    rank_before = planner.rank(chosen) if depth == DEPTH else None
    protected = protected | {j}
    current = chosen.get(j)
    if current is not None:
        planner._take(current, free, +1)
    for _shortage, m, s, cost in _candidates(planner, j, free):
        if time.monotonic() >= deadline_s:
            break
        e = costing.run_end(job, m, s, costing.slots_needed(job, m)[0])
        target = Option(j, m, ((s, e),), cost)
        g = job.modes[m].gpus
        # Who is in the way: the most flexible first (the widest window left around their run), until it fits.
        overlapping = [k for k, o in chosen.items() if k not in protected and o.start < e and o.end > s]
        overlapping.sort(key=lambda k: -_slack(planner, k))
        victims: list[int] = []
        window = free[s:e].copy()
        for k in overlapping:
            if window.min() >= g:
                break
            o = chosen[k]
            slots = o.slots()
            inside = (slots >= s) & (slots < e)
            if not inside.any():
                continue
            np.add.at(window, slots[inside] - s, o.gpus(planner.jobs[k])[inside])
            victims.append(k)
        if window.min() < g:
            continue
        saved_chosen, saved_free = dict(chosen), free.copy()
        if current is not None:
            saved_chosen[j] = current
            planner._take(current, saved_free)
        for k in victims:
            planner._take(chosen.pop(k), free, +1)
        planner._take(target, free)
        chosen[j] = target
        for k in sorted(victims, key=lambda k: _slack(planner, k)):
            option = planner.best_option(k, free, priced=True) or planner.earliest_option(k, free)
            if option is not None:
                chosen[k] = option
                planner._take(option, free)
        ok = True
        for k in victims:
            if (k not in chosen or chosen[k].late) and (
                    depth <= 1 or not repair_one(planner, k, chosen, free, deadline_s, depth - 1, protected)):
                ok = False
                break
        if ok and (rank_before is None or planner.rank(chosen) < rank_before):
            return True
        chosen.clear()
        chosen.update(saved_chosen)
        free[:] = saved_free
        if current is not None:
            planner._take(current, free, +1)
    if current is not None:
        chosen[j] = current
        planner._take(current, free)
    return False


def _slack(planner: Planner, k: int) -> int:
    job = planner.jobs[k]
    window = min(job.deadline_slot, planner.costing.horizon) - job.release_slot
    return window - min(planner.costing.slots_needed(job, m)[0] for m in range(len(job.modes)))


def trade(planner: Planner, chosen: dict[int, Option], deadline_s: float) -> int:
    """Where more jobs are late than can be brought on time by moving others (a burst beyond the cluster's capacity),
    give up one large run instead of several small ones, as Moore and Hodgson's rule does on one machine: take out an
    on-time job that holds many GPU-slots in the windows of late jobs, let the late jobs that now fit in go on time,
    and put it back at its best option, on time or not. Kept only if fewer jobs are late; returns how many fewer."""
    free = planner.costing.capacity.copy()
    for option in chosen.values():
        planner._take(option, free)
    gained = 0
    tried: set[int] = set()
    while time.monotonic() < deadline_s:
        late = [j for j, o in chosen.items() if o.late and j not in tried]
        if not late:
            break
        j = min(late, key=lambda k: (chosen[k].gpus(planner.jobs[k]).sum(), k))  # the smallest late job first
        tried.add(j)
        job = planner.jobs[j]
        a, b = job.release_slot, chosen[j].end
        big = sorted((k for k, o in chosen.items() if not o.late and o.start < b and o.end > a),
                     key=lambda k: -int(chosen[k].gpus(planner.jobs[k]).sum()))[:CANDIDATES]
        before = planner.rank(chosen)
        for k in big:
            if time.monotonic() >= deadline_s:
                break
            saved_chosen, saved_free = dict(chosen), free.copy()
            out = chosen.pop(k)
            planner._take(out, free, +1)
            window_a, window_b = out.start, out.end
            # the late jobs whose windows the run overlapped, smallest first
            for m in sorted((m for m, o in chosen.items() if o.late and planner.jobs[m].release_slot < window_b
                             and planner.jobs[m].deadline_slot > window_a),
                            key=lambda m: int(chosen[m].gpus(planner.jobs[m]).sum())):
                planner._take(chosen[m], free, +1)
                chosen[m] = planner.best_option(m, free, priced=True) or chosen[m]
                planner._take(chosen[m], free)
            back = planner.best_option(k, free, priced=True) or planner.earliest_option(k, free)
            if back is not None:
                chosen[k] = back
                planner._take(back, free)
            after = planner.rank(chosen)
            if after < before:  # fewer late jobs, or as many and fewer late slots
                gained += before[0] - after[0]
                tried.clear()
                break
            chosen.clear()
            chosen.update(saved_chosen)
            free[:] = saved_free
    return gained
