"""Improvement: the whole-problem MILP over the LP's candidate columns, the large neighbourhood search, and the
exact elastic option for a few jobs; `improvement` runs them in turn and records each one's time and gain."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from scheduler.planner.budget import Budget
from scheduler.planner.construct import local_search
from scheduler.planner.highs import SOLVE_NNZ_PER_S, column_lp, new_highs
from scheduler.planner.options import TIE, Option, _better, _mode_runs, _runs
from scheduler.planner.prices import Prices

if TYPE_CHECKING:
    from scheduler.planner.solve import Planner

# Measured on the benchmark's 150-job weeks (bench/planner.py): the neighbourhood search gains more from the
# time than the whole MILP does, and window MILPs capped at 1 s beat longer ones.
LNS_SHARE, LNS_STEP_S = 0.7, 1.0
LATE_COLUMNS = 24  # late runs per mode of a late job in the MILPs' candidates
LNS_JOBS, LNS_MIN_JOBS = 20, 6  # jobs freed at a time in the neighbourhood search: the first size, and the least
WARM_MILP_JOBS = 150  # a replan from a previous plan of more jobs skips the whole-problem MILP


def exact_elastic(planner: Planner, chosen: dict[int, Option], deadline_s: float) -> None:
    """Few jobs: each preemptible one takes its exact cheapest mode per slot, given the others, if cheaper."""
    free = planner.costing.capacity.copy()
    for placed in chosen.values():
        planner._take(placed, free)
    for j, job in enumerate(planner.jobs):
        current = chosen.get(j)
        if not job.preemptible or time.monotonic() >= deadline_s or (current is not None and current.late):
            continue
        if current is not None:
            planner._take(current, free, +1)
        option = planner.costing.exact_elastic(j, free, min(1.0, deadline_s - time.monotonic()))
        if option is not None and (current is None or _better(planner.price(option), planner.price(current))):
            chosen[j] = option
        if j in chosen:
            planner._take(chosen[j], free)


def candidates(planner: Planner, chosen: dict[int, Option], relaxation: Prices | None, slack: float, max_columns: int,
               deadline_s: float = math.inf, only: set[int] | None = None) -> tuple[list[list[Option]], bool]:
    """Each job's options for the MILP, and whether the column budget cut any that could be in a better
    plan (if not, the MILP's optimum is the optimum over all rigid plans). Past ``deadline_s`` no more are
    built (the set is then marked cut): every job keeps at least its chosen option. ``only``: build these jobs'
    options alone, where there are no LP columns (the others' lists stay empty): a neighbourhood search on
    thousands of jobs builds each job's set when it first frees it."""
    costing = planner.costing
    per_job: list[dict[tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]], Option]] = [
        {} for _ in planner.jobs]
    rigid = relaxation.rigid if relaxation is not None else None
    if rigid:
        # Columns whose reduced cost exceeds (greedy - bound) are in no better plan; of the rest, each job
        # keeps its ``per_job`` lowest (all of them when that fits the column budget: then exact).
        per_job_rc: dict[int, list[tuple[float, Option]]] = {}
        limit = slack + TIE * max(1.0, abs(slack))
        for j, m, starts, n, costs, rc, _x in rigid:
            job = planner.jobs[j]
            ends = [costing.run_end(job, m, int(starts[i]), n) for i in range(len(starts))]
            ok = np.flatnonzero(rc <= limit)
            per_job_rc.setdefault(j, []).extend(
                (float(rc[i]), Option(j, m, ((int(starts[i]), ends[i]),), float(costs[i]),
                                      late=ends[i] > job.deadline_slot)) for i in ok)
        total = sum(len(v) for v in per_job_rc.values())
        truncated = total > max_columns
        keep = total if not truncated else max(4, max_columns // max(1, len(per_job_rc)))
        for j, ranked in per_job_rc.items():
            ranked.sort(key=lambda item: item[0])
            for _rc, option in ranked[:keep]:
                per_job[j][option.key] = option
    else:
        truncated = True
        keep_n = max(6, max_columns // max(1, sum(len(job.modes) for job in planner.jobs)))
        for j, job in enumerate(planner.jobs):
            if only is not None and j not in only:
                continue
            if time.monotonic() > deadline_s:
                break
            for m in range(len(job.modes)):
                starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
                if len(starts):
                    for i in np.argsort(costs, kind="stable")[:keep_n]:
                        s = int(starts[i])
                        run = ((s, costing.run_end(job, m, s, n)),)
                        per_job[j][(m, run, ())] = Option(j, m, run, float(costs[i]))
    preemptible_x = relaxation.preemptible_x if relaxation is not None else {}
    per_mode = max(2, max_columns // max(1, 4 * sum(len(job.modes) for job in planner.jobs)))
    for j, job in enumerate(planner.jobs):
        if not job.preemptible or (only is not None and not rigid and j not in only):
            continue
        if time.monotonic() > deadline_s:
            truncated = True
            break
        for m, mode in enumerate(job.modes):
            # A contiguous run is a valid plan for a preemptible job too: its cheapest ones at LP prices.
            starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
            if len(starts):
                keys = costs + mode.gpus * (planner.lam_prefix[starts + n] - planner.lam_prefix[starts])
                for i in np.argsort(keys, kind="stable")[:per_mode]:
                    s = int(starts[i])
                    run = ((s, costing.run_end(job, m, s, n)),)
                    per_job[j][(m, run, ())] = Option(j, m, run, float(costs[i]))
            slot_keys: list[np.ndarray | None] = [None]
            if mode.power_kw > 0:
                slot_keys.append(costing.w + planner.lam * mode.gpus / (mode.power_kw * costing.slot_h))
            for slot_key in slot_keys:
                split = costing.split_option(j, m, costing.capacity, slot_key)
                if split is not None:
                    per_job[j][split.key] = split
        for price in (None, planner.lam):
            elastic = costing.elastic_option(j, costing.capacity, price)
            if elastic is not None:
                per_job[j][elastic.key] = elastic
        x = preemptible_x.get(j)
        if x is not None:  # the LP's own slots, in its dominant mode, and in each slot's own dominant mode
            m = int(np.argmax(x.sum(axis=1)))
            slots = np.flatnonzero(x.sum(axis=0) > 1e-6)
            if len(slots):
                dominant = planner._checked(j, m, _runs(slots))
                if dominant is not None:
                    per_job[j][dominant.key] = dominant
                per_slot = np.full(x.shape[1], -1)
                per_slot[slots] = np.argmax(x[:, slots], axis=0)
                segments, seg_modes = _mode_runs(np.arange(x.shape[1]), per_slot)
                per_slot_option = planner._checked(j, seg_modes[0], segments, seg_modes)
                if per_slot_option is not None:
                    per_job[j][per_slot_option.key] = per_slot_option
    for j, job in enumerate(planner.jobs):
        if only is not None and not rigid and j not in only:
            continue
        current = chosen.get(j)
        if current is not None and current.late:
            # A late job's late runs too, each mode's from the earliest up to its current start: on a cluster
            # that cannot run every job on time, the search trades one job's late slots for another's.
            for m in range(len(job.modes)):
                starts, costs, n = costing.rigid_costs(job, m, current.end + 1)
                for i in np.unique(np.linspace(0, len(starts) - 1, min(len(starts), LATE_COLUMNS)).astype(int)):
                    s = int(starts[i])
                    e = costing.run_end(job, m, s, n)
                    per_job[j].setdefault((m, ((s, e),), ()), Option(j, m, ((s, e),), float(costs[i]),
                                                                     late=e > job.deadline_slot))
        for extra in (chosen.get(j), planner.previous.get(j)):
            if extra is not None:
                per_job[j][extra.key] = extra
    return [list(options.values()) for options in per_job], truncated


def milp(planner: Planner, columns: dict[int, list[Option]], capacity: np.ndarray, warm: dict[int, Option],
         time_limit_s: float) -> tuple[dict[int, Option] | None, str]:
    """Choose one option per job in ``columns`` within ``capacity``; None when no plan was found."""
    jobs = sorted(columns)
    flat = [(j, o) for j in jobs for o in columns[j]]
    if not flat or time_limit_s <= 0.05:
        return None, "skipped"
    if sum(len(o.slots()) + 1 for _j, o in flat) > time_limit_s * SOLVE_NNZ_PER_S:
        return None, "skipped: too large to solve in the time"
    horizon, row_of = planner.costing.horizon, {j: r for r, j in enumerate(jobs)}
    starts, index, value, costs, hint = [0], [], [], [], []
    for j, option in flat:
        slots = option.slots()
        index += [row_of[j], *(len(jobs) + slots).tolist()]
        value += [1.0] + option.gpus(planner.jobs[j]).astype(float).tolist()
        starts.append(len(index))
        costs.append(planner.price(option))
        hint.append(1.0 if warm.get(j) is option else 0.0)
    ones = np.ones(len(jobs))
    lp = column_lp(np.asarray(costs), np.ones(len(flat)), np.concatenate([ones, np.full(horizon, -np.inf)]),
                   np.concatenate([ones, capacity.astype(float)]), np.asarray(starts), np.asarray(index),
                   np.asarray(value), integer=True)
    h = new_highs(time_limit_s)
    # The gap is relative to the energy cost alone: late penalties dwarf it, and a relative gap of the whole
    # objective let HiGHS stop at any plan within several late slots of the optimum.
    real = sum(abs(warm[j].cost) for j in jobs if j in warm)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", max(1e-6, 1e-4 * real))
    h.passModel(lp)
    if sum(hint) == len(jobs):
        import highspy

        solution = highspy.HighsSolution()
        solution.col_value = hint
        solution.value_valid = True
        h.setSolution(solution)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    if h.getInfo().primal_solution_status != 2:  # no feasible point
        return None, status
    picked = {j: option for (j, option), v in zip(flat, h.getSolution().col_value) if v > 0.5}
    return (picked if len(picked) == len(jobs) else None), status


def neighbourhoods(planner: Planner, chosen: dict[int, Option], columns: list[list[Option]] | Columns,
                   deadline_s: float, stats: dict[str, float | str], rotate: int = 0,
                   step_limit_s: float = LNS_STEP_S) -> bool:
    """Large neighbourhood search: free a group of jobs, keep the others, and let a small MILP re-place the
    freed ones over their whole candidate sets. A group is each late job with the jobs in its way, then runs of
    consecutive jobs in start order, half overlapping, sweeping the horizon. The group's size adapts to what
    the MILP proves in its step: larger while it solves them to optimality quickly, smaller while it is cut off
    (a fixed time window freed 330 jobs at a time on a full week of 2,000, and no MILP finished). The search
    ends after two sweeps without a gain (the second shifted by a quarter group). ``step_limit_s`` caps each
    group's MILP."""
    n = len(chosen)
    size = min(n, int(stats.get("lns_jobs") or LNS_JOBS))
    free = planner.costing.capacity.copy()
    for option in chosen.values():
        planner._take(option, free)
    moved, stale, sweep_no = False, 0, 0
    # Groups solved since the plan last changed: solving one again gives the same answer. On a few jobs every late
    # job's group is all of them, and an 8-job replan solved the same MILP 16 times before its sweeps went stale.
    solved: set[frozenset[int]] = set()
    while time.monotonic() < deadline_s - 0.2 and stale < 2:
        gained = False
        order = sorted(chosen, key=lambda j: (chosen[j].start, j))
        groups: list[list[int]] = []
        for j in order:
            if chosen[j].late:  # with the jobs that overlap its window most
                job = planner.jobs[j]
                a, b = job.release_slot, chosen[j].end
                near = sorted((k for k in order if k != j and chosen[k].start < b and chosen[k].end > a),
                              key=lambda k: -(min(b, chosen[k].end) - max(a, chosen[k].start)))
                groups.append([j, *near[:size - 1]])
        step = max(1, size // 2)
        offset = (step // 2) * (sweep_no % 2) + rotate
        firsts = list(range(0, max(1, n - size + step), step))
        firsts = firsts[offset % len(firsts):] + firsts[:offset % len(firsts)]
        groups += [order[i:i + size] for i in firsts]
        for freed in groups:
            if time.monotonic() >= deadline_s - 0.2:
                break
            freed = [j for j in freed if j in chosen]
            if len(freed) < 2 or frozenset(freed) in solved:
                continue
            solved.add(frozenset(freed))
            capacity = free.copy()
            for j in freed:
                planner._take(chosen[j], capacity, +1)
            before = sum(planner.price(chosen[j]) for j in freed)
            if isinstance(columns, Columns):
                columns.build(freed)
            # the MILP's own time decides the group's size: building a job's candidates once is not its cost
            step_s = min(step_limit_s, deadline_s - 0.1 - time.monotonic())
            began = time.monotonic()
            picked, status = milp(planner, {j: columns[j] for j in freed}, capacity, chosen, step_s)
            took = time.monotonic() - began
            stats["lns_windows"] = stats.get("lns_windows", 0.0) + 1  # type: ignore[operator]
            if picked is not None and _better(sum(planner.price(o) for o in picked.values()), before):
                for j in freed:
                    planner._take(chosen[j], free, +1)
                chosen.update(picked)
                for j in freed:
                    planner._take(chosen[j], free)
                gained = moved = True
                solved.clear()
            if status == "Optimal" and took < 0.3 * step_s:
                size = min(n, size + max(1, size // 4))
            elif status != "Optimal" and status != "skipped":
                size = max(LNS_MIN_JOBS, (2 * size) // 3)
        stats["lns_sweeps"] = stats.get("lns_sweeps", 0.0) + 1  # type: ignore[operator]
        stats["lns_jobs"] = float(size)
        sweep_no += 1
        stale = 0 if gained else stale + 1
    return moved


def improvement(planner: Planner, budget: Budget, chosen: dict[int, Option], relaxation: Prices | None,
                   bound: float | None, max_columns: int, use_lns: bool, stats: dict[str, float | str]
                   ) -> tuple[dict[int, Option], bool]:
    """The MILP over a candidate set where it is predicted to finish, the neighbourhood search, and a polish;
    each phase records its gain. Returns the plan and whether it is proven optimal."""
    deadline = budget.end
    started = budget.start()
    before = sum(planner.price(o) for o in chosen.values())
    warm = len(planner.jobs) > 1 and len(planner.previous) >= 0.8 * len(planner.jobs)
    # Start with a small candidate set; while the MILP proves optimality over a set the budget cut, double the
    # set and solve again from the best plan so far. It gets 30% of the time left (all of it without the
    # neighbourhood search); it is not started where its model is predicted not to solve in that time.
    budget_columns = max_columns
    milp_deadline = deadline - (LNS_SHARE if use_lns else 0.0) * (deadline - time.monotonic())
    note = ""
    proven = bound is not None and sum(planner.true_cost(o) for o in chosen.values()) - bound <= 1e-7 * max(
        1.0, abs(bound))  # at the bound already (tie-breaks are not costs): nothing can be cheaper
    if proven:
        note = "at the bound"
    elif warm and use_lns and len(planner.jobs) > WARM_MILP_JOBS:
        note = "skipped: a warm replan of many jobs goes to the neighbourhoods"
    elif use_lns and (relaxation is None or not relaxation.rigid):
        # The whole MILP is larger than the LP, which was predicted too slow (or cut off): its time goes to the
        # neighbourhoods, whose small MILPs finish.
        note = "skipped: larger than an LP that would not solve in time"
    else:
        while time.monotonic() < milp_deadline - 0.1:
            best = sum(planner.price(o) for o in chosen.values())
            slack = best - bound if bound is not None else math.inf
            true = sum(planner.true_cost(o) for o in chosen.values())
            if bound is not None and true - bound <= 1e-7 * max(1.0, abs(bound)):
                proven, note = True, "at the bound"
                break  # already at the bound (tie-breaks are not costs)
            columns, truncated = candidates(planner, chosen, relaxation, slack, budget_columns, milp_deadline - 0.1)
            stats["milp_columns"] = float(sum(len(c) for c in columns))
            picked, status = milp(planner, dict(enumerate(columns)), planner.costing.capacity, chosen,
                                       milp_deadline - time.monotonic())
            stats["milp_status"] = note = status
            if picked is not None and _better(sum(planner.price(o) for o in picked.values()), best):
                chosen, stats["method"] = picked, "milp"
            if status == "Optimal" and not truncated:
                proven = True
            if status != "Optimal" or not truncated:
                break
            budget_columns *= 2
    after = sum(planner.price(o) for o in chosen.values())
    budget.record("milp", started, before - after, ("proven optimal; " if proven else "") + note)
    if use_lns and not proven:
        started, before = budget.start(), after
        pool, searched, searched_gain = 4 * budget_columns, -1, False
        # where this replan's sweep begins: elsewhere than the last one's (a function of its plan, so pure)
        rotate = sum(o.start * (k + 1) for k, o in enumerate(planner.previous.values()))
        converged = False
        while time.monotonic() < deadline - 0.2:
            # When the search runs out of neighbourhoods with time left, it starts over on a candidate set twice
            # as wide; it ends when the set stopped growing and gave nothing.
            best = sum(planner.price(o) for o in chosen.values())
            slack = best - bound if bound is not None else math.inf
            lazy = Columns(planner, chosen, relaxation, slack, pool, deadline - 0.3)
            if neighbourhoods(planner, chosen, lazy, deadline, stats, rotate):
                searched_gain = True
            elif lazy.size() <= searched:
                converged = True
                break
            pool, searched = 2 * pool, lazy.size()
        if searched_gain:
            stats["method"] = f"{stats['method']}+lns"
        after = sum(planner.price(o) for o in chosen.values())
        budget.record("neighbourhoods", started, before - after,
                      f"{int(stats.get('lns_windows', 0))} windows of up to {int(stats.get('lns_jobs', 0))} jobs"
                      + ("; converged" if converged else ""))
    # Polish: options outside the MILP's candidate set may still improve its plan one job at a time.
    started, before = budget.start(), after
    free = planner.costing.capacity.copy()
    for option in chosen.values():
        planner._take(option, free)
    if local_search(planner, chosen, free, planner.order(), deadline):
        stats["method"] = f"{stats['method']}+polish"
    after = sum(planner.price(o) for o in chosen.values())
    budget.record("polish", started, before - after)
    return chosen, proven


class Columns:
    """Each job's MILP candidates, built when a neighbourhood first frees the job (or all at once from LP
    columns, whose pruning needs every job's). A job's list always holds its chosen option."""

    def __init__(self, planner: Planner, chosen: dict[int, Option], relaxation: Prices | None, slack: float,
                 max_columns: int, deadline_s: float) -> None:
        self.planner, self.chosen, self.relaxation = planner, chosen, relaxation
        self.slack, self.max_columns, self.deadline_s = slack, max_columns, deadline_s
        self.lists: dict[int, list[Option]] = {}
        if relaxation is not None and relaxation.rigid:
            columns, _truncated = candidates(planner, chosen, relaxation, slack, max_columns, deadline_s)
            self.lists = dict(enumerate(columns))

    def build(self, jobs: list[int]) -> None:
        missing = {j for j in jobs if j not in self.lists}
        if missing:
            columns, _truncated = candidates(self.planner, self.chosen, self.relaxation, self.slack, self.max_columns,
                                             self.deadline_s, only=missing)
            for j in missing:
                self.lists[j] = columns[j]
        for j in jobs:
            option = self.chosen.get(j)
            if option is not None and not any(o is option for o in self.lists[j]):
                self.lists[j].append(option)

    def __getitem__(self, j: int) -> list[Option]:
        return self.lists[j]

    def size(self) -> int:
        return sum(len(c) for c in self.lists.values())
