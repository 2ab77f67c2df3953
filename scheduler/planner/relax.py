"""The LP relaxation of the time-indexed model: a lower bound, capacity prices, and reduced costs.

Rigid jobs: one column per (mode, start) in [0, 1], summing to 1 per job. Preemptible jobs: one
column per (mode, slot) in [0, 1], at most one mode per slot, the work covered; resume overheads are
left out, which only lowers the bound. Capacity holds per slot. A job whose deadline cannot be met
is relaxed over the whole horizon.

Every valid plan costs at least ``bound``. A rigid column whose reduced cost exceeds (a known plan's
cost - bound) is in no better plan: the MILP may leave it out without losing the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler.planner.highs import column_lp, new_highs
from scheduler.planner.options import Costing
from scheduler.planner.prices import RigidBlock, Rounding


@dataclass
class Relaxation:
    bound: float
    status: str
    capacity_price: np.ndarray  # >= 0 per slot: what one GPU in that slot is worth at the LP optimum
    rigid: list[RigidBlock]
    preemptible_x: dict[int, np.ndarray]  # job -> x[mode, slot] over the horizon
    theta: float = 1.0
    rounding: list[Rounding] = field(default_factory=list)  # the LP's rigid values say it (``rigid``)


def size(costing: Costing) -> int:
    """The LP's nonzeros, counted before building it."""
    nnz = 0
    for job in costing.problem.jobs:
        window = min(job.deadline_slot, costing.horizon) - job.release_slot
        for m in range(len(job.modes)):
            if job.preemptible:
                nnz += 3 * window
            else:
                n = costing.slots_needed(job, m)[0]
                nnz += max(0, window - n + 1) * (n + 1)
    return nnz


def relax(costing: Costing, time_limit_s: float, max_nnz: float = float("inf")) -> Relaxation | None:
    """None when the problem is empty, or larger than ``max_nnz`` nonzeros."""
    if max_nnz < float("inf") and size(costing) > max_nnz:
        return None
    problem = costing.problem
    horizon, slot_h = costing.horizon, costing.slot_h
    n_jobs = len(problem.jobs)
    cap_row0 = n_jobs
    next_row = n_jobs + horizon
    costs, starts_ptr, index, value = [], [np.zeros(1, dtype=np.int64)], [], []
    count = 0
    row_lo = np.zeros(n_jobs)
    row_hi = np.zeros(n_jobs)
    extra_rows = 0
    rigid_blocks: list[tuple[int, int, np.ndarray, int, np.ndarray, int]] = []  # .., first column
    preempt_blocks: list[tuple[int, int, np.ndarray, int]] = []  # job, mode, slots, first column
    for j, job in enumerate(problem.jobs):
        last = min(job.deadline_slot, horizon)
        if job.preemptible:
            if min(costing.slots_needed(job, m)[0] for m in range(len(job.modes))) > last - job.release_slot:
                last = horizon  # cannot meet the deadline: relax over the horizon
            slots = np.arange(job.release_slot, last)
            if not len(slots):
                return None
            row_lo[j], row_hi[j] = job.work, np.inf
            slot_row = next_row + np.arange(len(slots))
            next_row += len(slots)
            extra_rows += len(slots)
            for m, mode in enumerate(job.modes):
                k = len(slots)
                length_h = costing.len_h[slots]  # slot 0 may be partly past
                costs.append(mode.power_kw * length_h * costing.w[slots])
                idx = np.column_stack([np.full(k, j), cap_row0 + slots, slot_row]).ravel()
                val = np.column_stack([mode.rate * length_h, np.full(k, float(mode.gpus)), np.ones(k)]).ravel()
                index.append(idx)
                value.append(val)
                starts_ptr.append(count * 0 + 3 * np.arange(1, k + 1) + (starts_ptr[-1][-1]))
                preempt_blocks.append((j, m, slots, count))
                count += k
        else:
            row_lo[j] = row_hi[j] = 1.0
            for end in (job.deadline_slot, horizon):
                blocks = [(m, *costing.rigid_costs(job, m, end)) for m in range(len(job.modes))]
                if any(len(b[1]) for b in blocks):
                    break
            for m, s_arr, c_arr, n in blocks:
                k = len(s_arr)
                if not k:
                    continue
                n0 = costing.run_end(job, m, 0, n)
                if s_arr[0] == 0 and n0 != n:  # a run from a partly elapsed slot 0 spans n0 slots: its own column
                    rows0 = cap_row0 + np.arange(n0)
                    costs.append(c_arr[:1] + costing.late_penalty * max(0, n0 - job.deadline_slot))
                    index.append(np.concatenate([[j], rows0]))
                    value.append(np.concatenate([[1.0], np.full(n0, float(job.modes[m].gpus))]))
                    starts_ptr.append(np.array([starts_ptr[-1][-1] + n0 + 1]))
                    rigid_blocks.append((j, m, s_arr[:1], n, c_arr[:1], count))  # consumers end it at run_end
                    count += 1
                    s_arr, c_arr, k = s_arr[1:], c_arr[1:], k - 1
                    if not k:
                        continue
                # Past the deadline (only when it cannot be met): the planner's price per late slot.
                costs.append(c_arr + costing.late_penalty * np.maximum(0, s_arr + n - job.deadline_slot))
                rows = cap_row0 + s_arr[:, None] + np.arange(n)[None, :]
                idx = np.column_stack([np.full(k, j), rows]).ravel()
                val = np.column_stack([np.ones(k), np.full((k, n), float(job.modes[m].gpus))]).ravel()
                index.append(idx)
                value.append(val)
                starts_ptr.append((n + 1) * np.arange(1, k + 1) + starts_ptr[-1][-1])
                rigid_blocks.append((j, m, s_arr, n, c_arr, count))  # the real cost, unpenalised
                count += k
    if not count:
        return None
    # One elastic column per job ("left unplaced", at a prohibitive price) keeps the LP feasible when
    # capacity forces jobs past their deadlines; the bound is reported only when none is used.
    penalty = 1e3 * (1.0 + float(np.abs(costing.w).sum()) * slot_h *
                     max(m.power_kw for job in problem.jobs for m in job.modes))
    for j, job in enumerate(problem.jobs):
        costs.append(np.array([penalty]))
        index.append(np.array([j]))
        value.append(np.array([job.work if job.preemptible else 1.0]))
        starts_ptr.append(np.array([starts_ptr[-1][-1] + 1]))
    slack0 = count
    count += n_jobs
    lp = column_lp(np.concatenate(costs), np.ones(count),
                   np.concatenate([row_lo, np.full(horizon + extra_rows, -np.inf)]),
                   np.concatenate([row_hi, costing.capacity.astype(float), np.ones(extra_rows)]),
                   np.concatenate(starts_ptr), np.concatenate(index), np.concatenate(value))
    h = new_highs(time_limit_s)
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    if status != "Optimal":
        return Relaxation(float("-inf"), status, np.zeros(horizon), [], {})
    solution = h.getSolution()
    col_value = np.asarray(solution.col_value)
    col_dual = np.asarray(solution.col_dual)
    row_dual = np.asarray(solution.row_dual)
    if np.any(col_value[slack0:] > 1e-7):
        status = "Capacity too small: some jobs fit nowhere in the horizon"
    rigid = [(j, m, s, n, c, col_dual[first:first + len(s)], col_value[first:first + len(s)])
             for j, m, s, n, c, first in rigid_blocks]
    preemptible_x: dict[int, np.ndarray] = {}
    for j, m, slots, first in preempt_blocks:
        x = preemptible_x.setdefault(j, np.zeros((len(problem.jobs[j].modes), horizon)))
        x[m, slots] = col_value[first:first + len(slots)]
    # Capacity rows are <= constraints in a minimisation: their duals are <= 0; the price is the negation.
    price = np.maximum(0.0, -row_dual[cap_row0:cap_row0 + horizon])
    bound = float(h.getInfo().objective_function_value) if status == "Optimal" else float("-inf")
    return Relaxation(bound, status, price, rigid, preemptible_x)


def lp_bound(costing: Costing, time_limit_s: float = 600.0) -> tuple[float, str]:
    relaxation = relax(costing, time_limit_s)
    return (float("-inf"), "empty") if relaxation is None else (relaxation.bound, relaxation.status)
