"""A partition of several nodes: each segment of a plan on its mode's number of nodes.

The solvers plan the partition's GPUs as one pool (a relaxation: a plan on the nodes is a plan on their sum) that
keeps the model the size of a one-node problem however many nodes there are. ``place`` then puts each segment on
nodes, best fit, in the order the segments start: a mode of n GPUs on k nodes takes n/k GPUs on each of k
distinct nodes. A job whose segments fit nowhere at their time is placed again, rigid, at its cheapest on-time
start where enough nodes have room (or its earliest late one). What an executor is given can then start as
planned: on Slurm, pinned to its nodes, it never waits for ``Resources``.
"""

from __future__ import annotations

import numpy as np

from scheduler.planner.options import Costing, Option
from scheduler.planner.problem import Mode


def _best_fit(free: np.ndarray, a: int, b: int, mode: Mode) -> tuple[int, ...] | None:
    """The mode's nodes with room for its share throughout [a, b) that are left with the least room: big holes stay
    big."""
    room = free[:, a:b].min(axis=1)
    fits = np.flatnonzero(room >= mode.gpus_per_node)
    if len(fits) < mode.nodes:
        return None
    return tuple(sorted(int(k) for k in fits[np.argsort(room[fits], kind="stable")[:mode.nodes]]))


def first_fit_on_nodes(costing: Costing, j: int, m: int, free: np.ndarray) -> tuple[int, int, tuple[int, ...]] | None:
    """The earliest contiguous run of job ``j`` in mode ``m`` that enough nodes have room for: (start, end, its
    nodes), taken off ``free``; None if there is none in the horizon."""
    job = costing.problem.jobs[j]
    mode = job.modes[m]
    starts, _costs, n = costing.rigid_costs(job, m, costing.horizon)
    if not len(starts) or mode.nodes > free.shape[0]:
        return None
    on = sum(costing.fits(job, m, starts, n, free[k], mode.gpus_per_node).astype(np.int64)
             for k in range(free.shape[0]))
    for i in np.flatnonzero(on >= mode.nodes):
        s = int(starts[i])
        e = costing.run_end(job, m, s, n)
        nodes = _best_fit(free, s, e, mode)
        if nodes is not None:
            for k in nodes:
                free[k, s:e] -= mode.gpus_per_node
            return s, e, nodes
    return None


def _rigid_on_nodes(costing: Costing, j: int, free: np.ndarray, first_mode: int
                    ) -> tuple[Option, tuple[int, ...]] | None:
    """The cheapest on-time contiguous run that enough nodes have room for, its own mode first on a tie; else the
    earliest late one."""
    job = costing.problem.jobs[j]
    order = [first_mode] + [m for m in range(len(job.modes)) if m != first_mode]
    for end, cheapest in ((job.deadline_slot, True), (costing.horizon, False)):
        best: tuple[float, int, int] | None = None  # (cost or start, start, mode)
        for m in order:
            mode = job.modes[m]
            starts, costs, n = costing.rigid_costs(job, m, end)
            if not len(starts) or mode.nodes > free.shape[0]:
                continue
            on = sum(costing.fits(job, m, starts, n, free[k], mode.gpus_per_node).astype(np.int64)
                     for k in range(free.shape[0]))
            ok = np.flatnonzero(on >= mode.nodes)
            if not len(ok):
                continue
            # the solvers' tie-break: of equal costs (prefix sums differ in the last bits) the earliest start
            priced = costs[ok] + costing.delay[j] * (starts[ok] + n / 2)
            i = int(ok[np.argmin(priced)]) if cheapest else int(ok[0])
            key = float(priced.min()) if cheapest else float(starts[i])
            if best is None or key < best[0]:
                best = (key, int(starts[i]), m)
        if best is not None:
            _key, s, m = best
            e = costing.run_end(job, m, s, costing.rigid_costs(job, m, end)[2])
            nodes = _best_fit(free, s, e, job.modes[m])
            if nodes is None:  # a run from mid-slot 0 whose first slot only just fits: take the next best plan
                return None
            cost, _done = costing.simulate(job, m, ((s, e),))
            return Option(j, m, ((s, e),), cost, late=e > job.deadline_slot), nodes
    return None


def place(costing: Costing, chosen: dict[int, Option]
          ) -> tuple[dict[int, Option], dict[int, tuple[tuple[int, ...], ...]], int]:
    """Each job's option and its nodes per segment, and how many jobs had to move to fit the nodes. A job that fits
    nowhere in the horizon is left out (unplanned)."""
    problem = costing.problem
    free = np.asarray(problem.nodes, dtype=np.int64).copy()
    jobs = problem.jobs
    placed: dict[int, Option] = {}
    where: dict[int, tuple[tuple[int, ...], ...]] = {}
    misfits = []

    def take(mode: Mode, a: int, b: int, nodes: tuple[int, ...], sign: int) -> None:
        for k in nodes:
            free[k, a:b] -= sign * mode.gpus_per_node

    # in start order, urgent jobs (pinned to a start) first among equals, then the largest
    order = sorted(chosen, key=lambda j: (chosen[j].start, jobs[j].start_by_slot is None,
                                          -max(jobs[j].modes[chosen[j].mode_at(i)].gpus
                                               for i in range(len(chosen[j].segments))), j))
    for j in order:
        option, picks = chosen[j], []
        for i, (a, b) in enumerate(option.segments):
            mode = jobs[j].modes[option.mode_at(i)]
            nodes = _best_fit(free, a, b, mode)
            if nodes is None:
                break
            take(mode, a, b, nodes, 1)
            picks.append(nodes)
        if len(picks) == len(option.segments):
            placed[j], where[j] = option, tuple(picks)
            continue
        for i, ((a, b), nodes) in enumerate(zip(option.segments, picks)):  # undo the segments that fitted
            take(jobs[j].modes[option.mode_at(i)], a, b, nodes, -1)
        misfits.append(j)
    for j in sorted(misfits, key=lambda j: (jobs[j].deadline_slot, j)):
        found = _rigid_on_nodes(costing, j, free, chosen[j].mode)
        if found is None:
            continue
        option, nodes = found
        (a, b), = option.segments
        take(jobs[j].modes[option.mode], a, b, nodes, 1)
        placed[j], where[j] = option, (nodes,)
    return placed, where, len(misfits)
