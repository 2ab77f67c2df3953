"""A partition of several nodes: each segment of a plan on one node.

The solvers plan the partition's GPUs as one pool, a relaxation (a plan on the nodes is a plan on their sum) that
keeps the model the size of a one-node problem however many nodes there are. ``place`` then puts each segment on
a node, best fit, in the order the segments start; a job whose segments fit on no node at their time is placed
again, rigid, at its cheapest on-time start where one node has room (or its earliest late one). What an executor
is given can then start as planned: on Slurm, pinned to its node, it never waits for ``Resources``.
"""

from __future__ import annotations

import numpy as np

from scheduler.planner.options import Costing, Option


def largest_node(costing: Costing) -> int:
    nodes = np.asarray(costing.problem.nodes)
    return int(nodes.max()) if nodes.size else int(costing.capacity.max(initial=0))


def _best_fit(free: np.ndarray, a: int, b: int, gpus: int) -> int | None:
    """The node with room for ``gpus`` throughout [a, b) that is left with the least room: big holes stay big."""
    room = free[:, a:b].min(axis=1)
    fits = np.flatnonzero(room >= gpus)
    if not len(fits):
        return None
    return int(fits[np.argmin(room[fits] - gpus)])


def _rigid_on_a_node(costing: Costing, j: int, free: np.ndarray, first_mode: int) -> tuple[Option, int] | None:
    """The cheapest on-time contiguous run on one node, its own mode first on a tie; else the earliest late one."""
    job = costing.problem.jobs[j]
    order = [first_mode] + [m for m in range(len(job.modes)) if m != first_mode]
    for end, cheapest in ((job.deadline_slot, True), (costing.horizon, False)):
        best: tuple[float, int, int, int, int] | None = None  # (cost or start, start, mode, node, end)
        for m in order:
            starts, costs, n = costing.rigid_costs(job, m, end)
            if not len(starts):
                continue
            for k in range(free.shape[0]):
                ok = np.flatnonzero(costing.fits(job, m, starts, n, free[k]))
                if not len(ok):
                    continue
                # the solvers' tie-break: of equal costs (prefix sums differ in the last bits) the earliest start
                priced = costs[ok] + costing.tiebreak * starts[ok]
                i = int(ok[np.argmin(priced)]) if cheapest else int(ok[0])
                s = int(starts[i])
                key = float(priced.min()) if cheapest else float(s)
                if best is None or key < best[0]:
                    best = (key, s, m, k, costing.run_end(job, m, s, n))
        if best is not None:
            _key, s, m, k, e = best
            cost, _done = costing.simulate(job, m, ((s, e),))
            return Option(j, m, ((s, e),), cost, late=e > job.deadline_slot), k
    return None


def place(costing: Costing, chosen: dict[int, Option]) -> tuple[dict[int, Option], dict[int, tuple[int, ...]], int]:
    """Each job's option and its node per segment, and how many jobs had to move to fit a node. A job that fits no
    node anywhere in the horizon is left out (unplanned)."""
    problem = costing.problem
    free = np.asarray(problem.nodes, dtype=np.int64).copy()
    jobs = problem.jobs
    placed: dict[int, Option] = {}
    where: dict[int, tuple[int, ...]] = {}
    misfits = []
    order = sorted(chosen, key=lambda j: (chosen[j].start, -max(jobs[j].modes[chosen[j].mode_at(i)].gpus
                                                                 for i in range(len(chosen[j].segments))), j))
    for j in order:
        option, picks = chosen[j], []
        for i, (a, b) in enumerate(option.segments):
            gpus = jobs[j].modes[option.mode_at(i)].gpus
            k = _best_fit(free, a, b, gpus)
            if k is None:
                break
            free[k, a:b] -= gpus
            picks.append(k)
        if len(picks) == len(option.segments):
            placed[j], where[j] = option, tuple(picks)
            continue
        for (a, b), k, i in zip(option.segments, picks, range(len(picks))):  # undo the segments that fitted
            free[k, a:b] += jobs[j].modes[option.mode_at(i)].gpus
        misfits.append(j)
    for j in sorted(misfits, key=lambda j: (jobs[j].deadline_slot, j)):
        found = _rigid_on_a_node(costing, j, free, chosen[j].mode)
        if found is None:
            continue
        option, k = found
        (a, b), = option.segments
        free[k, a:b] -= jobs[j].modes[option.mode].gpus
        placed[j], where[j] = option, (k,)
    return placed, where, len(misfits)
