"""The planner: all queued jobs together, on a shared pool of GPUs, close to the optimum.

One time budget (budget.py), spent in phases that each report their seconds and their gain (``Solution.phases``,
``gsched plan --json``):

1. Queues: FIFO (run-now) and EDF, each job in its requested mode as soon as the GPUs allow. They are the deadline
   guarantee: a finished plan later than the better of them (more late jobs, or as many and more late slots) is
   replaced by it, so the planner never raises the number of late jobs.
2. Pricing: a price per GPU-slot and a lower bound on every plan. The LP relaxation (relax.py) where it is
   predicted to solve in its share of the time left (``lp_seconds``); else the Lagrangian relaxation of the
   capacity (lagrange.py), whose steps stop at any time. Both satisfy prices.Prices.
3. Construction: the greedy places the jobs, tightest first (slack relative to run length), each at its cheapest
   option at cost + GPU-slot prices; a job that finds no on-time room has room made for it by ruin and recreate
   (repair.py), at once and again after a best-response local search. The previous plan, repaired to the present,
   and the queue plans compete with it: fewest late jobs, then late slots, then price.
4. Improvement: the whole-problem MILP (HiGHS) over the LP's candidate columns, only where the LP itself solved;
   then a large neighbourhood search whose small MILPs re-place a group of jobs (each late job with those in its
   way, then runs of jobs in start order), the group's size adapting to what the MILP proves in its step; it ends
   when sweeps stop gaining. Then the local search polishes.

A replan that is proven optimal (the plan meets the LP bound) or whose search has converged returns before its
limit: the daemon replans again only while replans are cut off and improving (planning.improving).

Hysteresis: a job's previous option is priced at ``1 - hysteresis`` of its cost, so a replan moves a
job only for a larger gain. A job whose deadline cannot be met is planned for its earliest finish
(each late job and late slot is priced above any saving), with the reason; one that fits nowhere in the horizon
is reported as unplanned, never dropped silently.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from scheduler.planner.highs import SOLVE_NNZ_PER_S, column_lp, new_highs
from scheduler.planner.baselines import edf_order, fifo_order, queue, queue_option
from scheduler.planner.budget import Budget
from scheduler.planner.lagrange import Lagrangian, lagrangian
from scheduler.planner.nodes import place
from scheduler.planner.options import Costing, Option, _mode_runs, _runs
from scheduler.planner.prices import Prices
from scheduler.planner.problem import Plan, Problem, Segment
from scheduler.planner.repair import REPAIR_S, REPAIR_TRIES, repair, repair_one, trade

log = logging.getLogger("gsched.planner")
TIE = 1e-9
# Measured on the benchmark's 150-job weeks (bench/planner.py): the neighbourhood search gains more from the
# time than the whole MILP does, and window MILPs capped at 1 s beat longer ones.
LNS_SHARE, LNS_STEP_S = 0.7, 1.0
LATE_COLUMNS = 24  # late runs per mode of a late job in the MILPs' candidates
LNS_JOBS, LNS_MIN_JOBS = 20, 6  # jobs freed at a time in the neighbourhood search: the first size, and the least
WARM_MILP_JOBS = 150  # a replan from a previous plan of more jobs skips the whole-problem MILP
PRICING_SHARE = 0.3  # of the time left, for an LP predicted to solve in it
LP_NNZ_JOBS_PER_S = 8e7  # nonzeros x jobs of an LP solved in a second here (lp_seconds)
LAGRANGE_SHARE = 0.15  # of the limit, for the prices and bound of a problem too big for the LP
PLACE_SHARE = 0.1  # of the limit, on a partition of several nodes: 2,000 runs on 100 nodes took 1 s (bench/nodes.py)
EXACT_ELASTIC_JOBS = 8  # up to this many jobs, each preemptible one also gets its exact mode-per-slot option
# job id -> (mode, segments, one mode per segment or () for ``mode`` throughout)
Previous = dict[str, tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]]]


@dataclass
class Solution:
    plan: Plan
    options: dict[str, Option]
    late: dict[str, str]  # job id -> why its deadline cannot be met
    unplanned: dict[str, str]  # job id -> why it fits nowhere in the horizon
    objective: float
    bound: float | None  # LP lower bound on any plan's objective, when known
    stats: dict[str, float | str] = field(default_factory=dict)
    # GPU-slot prices per slot of this problem and the Lagrangian's step scale, for the next replan to start from
    prices: tuple[np.ndarray, float] | None = None
    phases: list[dict[str, float | str | None]] = field(default_factory=list)  # each phase's seconds, gain, note


def _better(a: float, b: float) -> bool:
    """a < b beyond rounding noise (prefix sums make equal windows differ in the last bits)."""
    return a < b - TIE * max(1.0, abs(b)) if math.isfinite(b) else a < b


def _first_min(costs: np.ndarray) -> int:
    """Index of the cheapest entry; near-equal costs tie, and the first (earliest start) wins."""
    low = costs.min()
    return int(np.flatnonzero(costs <= low + TIE * max(1.0, abs(low)))[0])


class Planner:
    def __init__(self, problem: Problem, previous: Previous | None = None, hysteresis: float = 0.0,
                 prices: tuple[np.ndarray, float] | None = None) -> None:
        """``prices``: the last replan's GPU-slot prices on this problem's slots and its Lagrangian step scale."""
        self.problem = problem
        self.costing = Costing(problem)
        self.hysteresis = hysteresis
        self.jobs = problem.jobs
        self.late_penalty = self.costing.late_penalty
        self.lam = np.zeros(self.costing.horizon)  # GPU-slot prices from the LP or the Lagrangian
        self.lam_prefix = np.zeros(self.costing.horizon + 1)
        # where this replan's Lagrangian starts; the greedy prices only with this replan's own relaxation
        self.prices0 = prices if prices is not None and len(prices[0]) == self.costing.horizon else None
        self.previous: dict[int, Option] = {}
        self.repaired_jobs = 0  # late jobs that repair() brought on time in this solve
        for j, job in enumerate(self.jobs):
            if previous and job.id in previous:
                option = self._checked(j, *previous[job.id])
                if option is not None:
                    self.previous[j] = option

    def _checked(self, j: int, mode: int, segments: tuple[tuple[int, int], ...], seg_modes: tuple[int, ...] = ()
                 ) -> Option | None:
        job = self.jobs[j]
        if not segments or (not job.preemptible and len(segments) > 1):
            return None
        if seg_modes and (len(seg_modes) != len(segments) or len(set(seg_modes)) == 1):
            mode, seg_modes = (seg_modes[0], ()) if len(seg_modes) == len(segments) else (-1, ())
        if not all(0 <= m < len(job.modes) for m in (mode, *seg_modes)):
            return None
        if segments[0][0] < job.release_slot or segments[-1][1] > min(job.deadline_slot, self.costing.horizon):
            return None
        if job.start_by_slot is not None and segments[0][0] > job.start_by_slot:
            return None
        cost, done = self.costing.simulate(job, mode, segments, seg_modes)
        return Option(j, mode, segments, cost, seg_modes=seg_modes) if done else None

    def price(self, option: Option) -> float:
        """What the solvers minimise: the cost, a discount for staying put, a prohibitive price per late slot."""
        price = option.cost + self.costing.tiebreak * option.start
        if option.late:  # one more late job costs more than any one job's late slots: fewer late jobs come first
            return price + self.late_penalty * (option.end - self.jobs[option.job].deadline_slot + self.costing.horizon)
        previous = self.previous.get(option.job)
        if previous is not None and previous.key == option.key:
            return price - self.hysteresis * abs(option.cost)
        return price

    def true_cost(self, option: Option) -> float:
        """The cost with the late penalty but without tie-breaks or hysteresis: what the LP bound bounds."""
        if option.late:
            return option.cost + self.late_penalty * (option.end - self.jobs[option.job].deadline_slot)
        return option.cost

    def lateness(self, chosen: dict[int, Option]) -> tuple[int, int]:
        """(late or unplanned jobs, slots late in all); an unplanned job counts as late by the whole horizon."""
        count = slots = 0
        for j, job in enumerate(self.jobs):
            option = chosen.get(j)
            if option is None:
                count, slots = count + 1, slots + self.costing.horizon
            elif option.end > job.deadline_slot:
                count, slots = count + 1, slots + option.end - job.deadline_slot
        return count, slots

    def rank(self, chosen: dict[int, Option]) -> tuple[int, int, float]:
        return (*self.lateness(chosen), sum(self.price(o) for o in chosen.values()))

    def queue_option(self, j: int, free: np.ndarray) -> Option | None:
        """Job ``j`` in its requested mode, as early as ``free`` allows (late or not)."""
        return queue_option(self.costing, j, free)

    def repaired(self, deadline_s: float) -> dict[int, Option]:
        """The previous plan on today's problem: each job's last option where it still fits (earliest first), the
        jobs new since then or pushed out placed as the greedy would (as a queue would, past ``deadline_s``)."""
        previous = sorted(self.previous.items(), key=lambda item: (item[1].start, item[0]))
        return self.seeded([option for _j, option in previous], deadline_s)[0]

    def seeded(self, seeds: list[Option], deadline_s: float, relative: bool = True, make_room: bool = True
               ) -> tuple[dict[int, Option], np.ndarray, list[int]]:
        """``seeds`` where they fit (the first per job), then every other job in tightness order at its cheapest
        priced option (as a plain queue would place it, past ``deadline_s``): (plan, capacity left, order)."""
        free = self.costing.capacity.copy()
        chosen: dict[int, Option] = {}
        option: Option | None
        for option in seeds:
            if option.job not in chosen and self._fits(option, free):
                chosen[option.job] = option
                self._take(option, free)
        order = self.order(relative)
        failed = 0 if make_room else REPAIR_TRIES
        for j in order:
            if j in chosen:
                continue
            if time.monotonic() > deadline_s:  # out of time: the rest as a plain queue would place them
                option = self.queue_option(j, free) or self.earliest_option(j, free)
            else:
                option = self.best_option(j, free, priced=True)
                # No on-time room left: make room now, while the jobs not yet placed leave the others space to move
                # (not after REPAIR_TRIES failures in a row: in an overloaded burst most jobs cannot be on time)
                if option is None and failed < REPAIR_TRIES:
                    if repair_one(self, j, chosen, free, min(deadline_s, time.monotonic() + REPAIR_S)):
                        self.repaired_jobs += 1
                        failed = 0
                        continue
                    failed += 1
                option = option or self.earliest_option(j, free)
            if option is not None:
                chosen[j] = option
                self._take(option, free)
        return chosen, free, order

    def fifo(self) -> dict[int, Option]:
        return queue(self.costing, fifo_order(self.problem))

    def edf(self) -> dict[int, Option]:
        return queue(self.costing, edf_order(self.problem))

    def _gpu_slots_price(self, option: Option) -> float:
        job = self.jobs[option.job]
        return sum(job.modes[option.mode_at(i)].gpus * (self.lam_prefix[b] - self.lam_prefix[a])
                   for i, (a, b) in enumerate(option.segments))

    # --- the greedy and its local search ---------------------------------------------------------------------

    def best_option(self, j: int, free: np.ndarray, priced: bool = False) -> Option | None:
        """The cheapest on-time option that fits ``free``; with ``priced``, GPU-slots cost their LP price."""
        job, costing = self.jobs[j], self.costing
        best: Option | None = None
        best_key = math.inf
        for m, mode in enumerate(job.modes):
            starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
            if len(starts):
                ok = costing.fits(job, m, starts, n, free)
                if ok.any():
                    keys = costs[ok] + costing.tiebreak * starts[ok]  # of equal options, the earliest
                    if priced:
                        keys = keys + mode.gpus * (self.lam_prefix[starts[ok] + n] - self.lam_prefix[starts[ok]])
                    i = _first_min(keys)
                    if _better(float(keys[i]), best_key):
                        s = int(starts[ok][i])
                        best = Option(j, m, ((s, costing.run_end(job, m, s, n)),), float(costs[ok][i]))
                        best_key = float(keys[i])
        if job.preemptible:
            # No split or elastic option of a mode costs less than its work at the window's cheapest weight (GPU-slot
            # prices only add): most are not worth building, and building them is most of a greedy's time.
            lo, hi = job.release_slot, min(job.deadline_slot, costing.horizon)
            low_w = float(costing.w[lo:hi].min()) if hi > lo else 0.0
            floors = [mode.power_kw * job.work / mode.rate * low_w if low_w >= 0 else -math.inf for mode in job.modes]
            for m, mode in enumerate(job.modes):
                if not _better(floors[m], best_key):
                    continue
                slot_key: np.ndarray | None = None
                if priced and mode.power_kw > 0:
                    slot_key = costing.w + self.lam * mode.gpus / (mode.power_kw * costing.slot_h)
                split = costing.split_option(j, m, free, slot_key)
                if split is not None:
                    split_key = (split.cost + costing.tiebreak * split.start
                                 + (self._gpu_slots_price(split) if priced else 0.0))
                    if _better(split_key, best_key):
                        best, best_key = split, split_key
            elastic = costing.elastic_option(j, free, self.lam if priced else None) if _better(
                min(floors), best_key) else None
            if elastic is not None:
                elastic_key = (elastic.cost + costing.tiebreak * elastic.start
                               + (self._gpu_slots_price(elastic) if priced else 0.0))
                if _better(elastic_key, best_key):
                    best, best_key = elastic, elastic_key
        previous = self.previous.get(j)
        if previous is not None and self._fits(previous, free):
            previous_key = self.price(previous) + (self._gpu_slots_price(previous) if priced else 0.0)
            if not _better(best_key, previous_key):
                best = previous
        return best

    def earliest_option(self, j: int, free: np.ndarray) -> Option | None:
        """Ignoring the deadline: the option that finishes first (then the cheapest)."""
        job, costing = self.jobs[j], self.costing
        best: Option | None = None
        for m, mode in enumerate(job.modes):
            starts, costs, n = costing.rigid_costs(job, m, costing.horizon)
            if not len(starts):
                continue
            i = costing.first_fit(job, m, starts, n, free)
            if i is None:
                continue
            s = int(starts[i])
            e = costing.run_end(job, m, s, n)
            cand = Option(j, m, ((s, e),), float(costs[i]), late=e > job.deadline_slot)
            if best is None or (cand.end, cand.cost) < (best.end, best.cost):
                best = cand
        return best

    def _fits(self, option: Option, free: np.ndarray) -> bool:
        return bool(np.all(free[option.slots()] >= option.gpus(self.jobs[option.job])))

    def _take(self, option: Option, free: np.ndarray, sign: int = -1) -> None:
        free[option.slots()] += sign * option.gpus(self.jobs[option.job])

    def order(self, relative: bool = True) -> list[int]:
        """Tightest first. ``relative``: by the slack of its window relative to its longest run: a 33-hour job with
        47 hours of slack goes before a 15-minute one with 2 hours (by absolute slack it went last on the foreign
        benchmark's full weeks, found its window full, and was late). Absolute slack, the other order, leaves fewer
        jobs late in a burst where every job has the same slack (Philly's weeks: 26 against 39)."""
        def tightness(j: int) -> tuple[float, float]:
            job = self.jobs[j]
            window = min(job.deadline_slot, self.costing.horizon) - job.release_slot
            needed = [self.costing.slots_needed(job, m)[0] for m in range(len(job.modes))]
            size = max(mode.gpus * n for mode, n in zip(job.modes, needed))
            return ((window - min(needed)) / max(needed) if relative else window - min(needed), -size)

        return sorted(range(len(self.jobs)), key=tightness)

    def rounded(self, relaxation: Prices | None) -> list[tuple[float, Option]]:
        """The LP's rigid columns with their values, largest first: what LP rounding tries first."""
        out = []
        for j, m, starts, n, costs, _rc, x in (relaxation.rigid if relaxation is not None else []):
            for i in np.flatnonzero(x > 1e-6):
                s = int(starts[i])
                e = self.costing.run_end(self.jobs[j], m, s, n)
                if e <= self.jobs[j].deadline_slot:
                    out.append((float(x[i]), Option(j, m, ((s, e),), float(costs[i]))))
        out.sort(key=lambda item: -item[0])
        return out

    def greedy(self, deadline_s: float, relaxation: Prices | None = None, improve_until_s: float | None = None,
               relative: bool = True, make_room: bool = True) -> dict[int, Option]:
        """Every job placed by ``deadline_s`` (the rest as a queue would, past it), in ``order(relative)``; with
        ``make_room``, a job that finds no on-time room has room made for it as it is placed. The local search that
        follows stops at ``improve_until_s``."""
        # LP rounding: jobs the LP places (nearly) whole go first, where the LP put them, while they fit; the
        # Lagrangian's rounding likewise: each job's run most of its (recent) steps picked.
        seeds = [option for _value, option in self.rounded(relaxation)]  # on-time columns only
        seeds += [Option(j, m, ((start, end),), cost)
                  for _value, j, m, start, end, cost in (relaxation.rounding if relaxation is not None else [])]
        chosen, free, order = self.seeded(seeds, deadline_s, relative, make_room)
        until = deadline_s if improve_until_s is None else min(deadline_s, improve_until_s)
        self.improve(chosen, free, order, until)
        if self.lateness(chosen)[0]:  # one at a time, a wide job can find its window fragmented: make room for it
            # and, where that is not enough, give up one large run for several small ones
            if repair(self, chosen, deadline_s) + trade(self, chosen, deadline_s):
                free = self.costing.capacity.copy()
                for option in chosen.values():
                    self._take(option, free)
                self.improve(chosen, free, order, until)
        return chosen

    def improve(self, chosen: dict[int, Option], free: np.ndarray, order: list[int], deadline_s: float) -> bool:
        """Best response: each job in turn moves to its cheapest option given the others, until nothing moves.
        Returns whether anything moved; ``free`` must be the capacity left by ``chosen``."""
        moved = False
        improved = True
        while improved and time.monotonic() < deadline_s:
            improved = False
            for j in order:
                if time.monotonic() >= deadline_s:
                    break
                current = chosen.get(j)
                if current is None:
                    option = self.best_option(j, free) or self.earliest_option(j, free)
                    if option is not None:
                        chosen[j], improved, moved = option, True, True
                        self._take(option, free)
                    continue
                self._take(current, free, +1)
                option = self.best_option(j, free)
                if option is None and current.late:
                    option = self.earliest_option(j, free)
                if option is not None and _better(self.price(option), self.price(current)):
                    chosen[j], improved, moved = option, True, True
                self._take(chosen[j], free)
        return moved

    def exact_elastic(self, chosen: dict[int, Option], deadline_s: float) -> None:
        """Few jobs: each preemptible one takes its exact cheapest mode per slot, given the others, if cheaper."""
        free = self.costing.capacity.copy()
        for placed in chosen.values():
            self._take(placed, free)
        for j, job in enumerate(self.jobs):
            current = chosen.get(j)
            if not job.preemptible or time.monotonic() >= deadline_s or (current is not None and current.late):
                continue
            if current is not None:
                self._take(current, free, +1)
            option = self.costing.exact_elastic(j, free, min(1.0, deadline_s - time.monotonic()))
            if option is not None and (current is None or _better(self.price(option), self.price(current))):
                chosen[j] = option
            if j in chosen:
                self._take(chosen[j], free)

    # --- the MILP --------------------------------------------------------------------------------------------

    def candidates(self, chosen: dict[int, Option], relaxation: Prices | None, slack: float, max_columns: int,
                   deadline_s: float = math.inf, only: set[int] | None = None) -> tuple[list[list[Option]], bool]:
        """Each job's options for the MILP, and whether the column budget cut any that could be in a better
        plan (if not, the MILP's optimum is the optimum over all rigid plans). Past ``deadline_s`` no more are
        built (the set is then marked cut): every job keeps at least its chosen option. ``only``: build these jobs'
        options alone, where there are no LP columns (the others' lists stay empty): a neighbourhood search on
        thousands of jobs builds each job's set when it first frees it."""
        costing = self.costing
        per_job: list[dict[tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]], Option]] = [
            {} for _ in self.jobs]
        rigid = relaxation.rigid if relaxation is not None else None
        if rigid:
            # Columns whose reduced cost exceeds (greedy - bound) are in no better plan; of the rest, each job
            # keeps its ``per_job`` lowest (all of them when that fits the column budget: then exact).
            per_job_rc: dict[int, list[tuple[float, Option]]] = {}
            limit = slack + TIE * max(1.0, abs(slack))
            for j, m, starts, n, costs, rc, _x in rigid:
                job = self.jobs[j]
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
            keep_n = max(6, max_columns // max(1, sum(len(job.modes) for job in self.jobs)))
            for j, job in enumerate(self.jobs):
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
        per_mode = max(2, max_columns // max(1, 4 * sum(len(job.modes) for job in self.jobs)))
        for j, job in enumerate(self.jobs):
            if not job.preemptible or (only is not None and not rigid and j not in only):
                continue
            if time.monotonic() > deadline_s:
                truncated = True
                break
            for m, mode in enumerate(job.modes):
                # A contiguous run is a valid plan for a preemptible job too: its cheapest ones at LP prices.
                starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
                if len(starts):
                    keys = costs + mode.gpus * (self.lam_prefix[starts + n] - self.lam_prefix[starts])
                    for i in np.argsort(keys, kind="stable")[:per_mode]:
                        s = int(starts[i])
                        run = ((s, costing.run_end(job, m, s, n)),)
                        per_job[j][(m, run, ())] = Option(j, m, run, float(costs[i]))
                slot_keys: list[np.ndarray | None] = [None]
                if mode.power_kw > 0:
                    slot_keys.append(costing.w + self.lam * mode.gpus / (mode.power_kw * costing.slot_h))
                for slot_key in slot_keys:
                    split = costing.split_option(j, m, costing.capacity, slot_key)
                    if split is not None:
                        per_job[j][split.key] = split
            for price in (None, self.lam):
                elastic = costing.elastic_option(j, costing.capacity, price)
                if elastic is not None:
                    per_job[j][elastic.key] = elastic
            x = preemptible_x.get(j)
            if x is not None:  # the LP's own slots, in its dominant mode, and in each slot's own dominant mode
                m = int(np.argmax(x.sum(axis=1)))
                slots = np.flatnonzero(x.sum(axis=0) > 1e-6)
                if len(slots):
                    dominant = self._checked(j, m, _runs(slots))
                    if dominant is not None:
                        per_job[j][dominant.key] = dominant
                    per_slot = np.full(x.shape[1], -1)
                    per_slot[slots] = np.argmax(x[:, slots], axis=0)
                    segments, seg_modes = _mode_runs(np.arange(x.shape[1]), per_slot)
                    per_slot_option = self._checked(j, seg_modes[0], segments, seg_modes)
                    if per_slot_option is not None:
                        per_job[j][per_slot_option.key] = per_slot_option
        for j, job in enumerate(self.jobs):
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
            for extra in (chosen.get(j), self.previous.get(j)):
                if extra is not None:
                    per_job[j][extra.key] = extra
        return [list(options.values()) for options in per_job], truncated

    def milp(self, columns: dict[int, list[Option]], capacity: np.ndarray, warm: dict[int, Option],
             time_limit_s: float) -> tuple[dict[int, Option] | None, str]:
        """Choose one option per job in ``columns`` within ``capacity``; None when no plan was found."""
        jobs = sorted(columns)
        flat = [(j, o) for j in jobs for o in columns[j]]
        if not flat or time_limit_s <= 0.05:
            return None, "skipped"
        if sum(len(o.slots()) + 1 for _j, o in flat) > time_limit_s * SOLVE_NNZ_PER_S:
            return None, "skipped: too large to solve in the time"
        horizon, row_of = self.costing.horizon, {j: r for r, j in enumerate(jobs)}
        starts, index, value, costs, hint = [0], [], [], [], []
        for j, option in flat:
            slots = option.slots()
            index += [row_of[j], *(len(jobs) + slots).tolist()]
            value += [1.0] + option.gpus(self.jobs[j]).astype(float).tolist()
            starts.append(len(index))
            costs.append(self.price(option))
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

    def neighbourhoods(self, chosen: dict[int, Option], columns: list[list[Option]] | Columns, deadline_s: float,
                       stats: dict[str, float | str], rotate: int = 0) -> bool:
        """Large neighbourhood search: free a group of jobs, keep the others, and let a small MILP re-place the
        freed ones over their whole candidate sets. A group is each late job with the jobs in its way, then runs of
        consecutive jobs in start order, half overlapping, sweeping the horizon. The group's size adapts to what
        the MILP proves in its step: larger while it solves them to optimality quickly, smaller while it is cut off
        (a fixed time window freed 330 jobs at a time on a full week of 2,000, and no MILP finished). The search
        ends after two sweeps without a gain (the second shifted by a quarter group)."""
        n = len(chosen)
        size = min(n, int(stats.get("lns_jobs") or LNS_JOBS))
        free = self.costing.capacity.copy()
        for option in chosen.values():
            self._take(option, free)
        moved, stale, sweep_no = False, 0, 0
        while time.monotonic() < deadline_s - 0.2 and stale < 2:
            gained = False
            order = sorted(chosen, key=lambda j: (chosen[j].start, j))
            groups: list[list[int]] = []
            for j in order:
                if chosen[j].late:  # with the jobs that overlap its window most
                    job = self.jobs[j]
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
                if len(freed) < 2:
                    continue
                capacity = free.copy()
                for j in freed:
                    self._take(chosen[j], capacity, +1)
                before = sum(self.price(chosen[j]) for j in freed)
                step_s = min(LNS_STEP_S, deadline_s - 0.1 - time.monotonic())
                began = time.monotonic()
                if isinstance(columns, Columns):
                    columns.build(freed)
                picked, status = self.milp({j: columns[j] for j in freed}, capacity, chosen, step_s)
                took = time.monotonic() - began
                stats["lns_windows"] = stats.get("lns_windows", 0.0) + 1  # type: ignore[operator]
                if picked is not None and _better(sum(self.price(o) for o in picked.values()), before):
                    for j in freed:
                        self._take(chosen[j], free, +1)
                    chosen.update(picked)
                    for j in freed:
                        self._take(chosen[j], free)
                    gained = moved = True
                if status == "Optimal" and took < 0.3 * step_s:
                    size = min(n, size + max(1, size // 4))
                elif status != "Optimal" and status != "skipped":
                    size = max(LNS_MIN_JOBS, (2 * size) // 3)
            stats["lns_sweeps"] = stats.get("lns_sweeps", 0.0) + 1  # type: ignore[operator]
            stats["lns_jobs"] = float(size)
            sweep_no += 1
            stale = 0 if gained else stale + 1
        return moved

    # --- explanations ----------------------------------------------------------------------------------------

    def why_late(self, j: int, option: Option | None) -> str:
        job, costing = self.jobs[j], self.costing
        fastest = min(range(len(job.modes)), key=lambda m: costing.slots_needed(job, m)[0])
        need_h = job.work / job.modes[fastest].rate + job.overhead_h(0)
        left_h = max(0, min(job.deadline_slot, costing.horizon) - job.release_slot) * costing.slot_h
        if need_h > left_h + 1e-9:
            return (f"needs {need_h:.1f} h at {job.modes[fastest].gpus} GPUs, {left_h:.1f} h left before its deadline"
                    + ("; planned for its earliest finish" if option else "; no room in the horizon"))
        if option is None:
            return "no room for it anywhere in the planning horizon"
        over_h = (option.end - job.deadline_slot) * costing.slot_h
        return f"GPUs are busy: earliest finish is {over_h:.2f} h after its deadline; planned for that"

    def solve(self, time_limit_s: float = 10.0, max_columns: int = 1500, use_milp: bool = True,
              use_lns: bool = True) -> Solution:
        if self.problem.nodes:  # placing the runs on nodes comes after: keep its share of the limit for it
            time_limit_s *= 1 - PLACE_SHARE
        budget = Budget(time_limit_s)
        stats: dict[str, float | str] = {"method": "greedy"}
        # Queues: the deadline guarantee, and the start when nothing better is found.
        started = budget.start()
        queues = {"fifo": self.fifo(), "edf": self.edf()}
        fallback_name = min(queues, key=lambda name: self.lateness(queues[name]))
        fallback = queues[fallback_name]
        fifo_price = self.rank(queues["fifo"])[2]
        budget.record("queues", started, note=f"fifo {self.lateness(queues['fifo'])[0]} late, "
                                              f"edf {self.lateness(queues['edf'])[0]} late")
        relaxation = self.pricing(budget, queues) if use_milp and self.jobs else None
        if relaxation is not None:
            self.lam = relaxation.capacity_price
            self.lam_prefix = np.concatenate([[0.0], np.cumsum(self.lam)])
            stats["lp_status"], stats["lp_s"] = relaxation.status, budget.elapsed()
        chosen, name = self.construct(budget, queues, relaxation, stats)
        stats["start"] = stats["method"] = name
        if use_milp and len(self.jobs) <= EXACT_ELASTIC_JOBS:
            self.exact_elastic(chosen, budget.share(0.5))
        greedy_obj = sum(self.price(o) for o in chosen.values())
        stats["greedy_objective"], stats["greedy_s"] = greedy_obj, budget.elapsed()
        budget.phases[-1].gain = fifo_price - greedy_obj
        bound = relaxation.bound if relaxation is not None and math.isfinite(relaxation.bound) else None
        if use_milp and len(chosen) > 1:
            chosen, proven = self.improve_phases(budget, chosen, relaxation, bound, max_columns, use_lns, stats)
            stats["proven_optimal"] = float(proven)
        if later(self.lateness(chosen), self.lateness(fallback)):  # never later than a plain queue would be
            chosen, stats["method"] = dict(fallback), f"{fallback_name} (fallback)"
        on_node: dict[int, tuple[tuple[int, ...], ...]] = {}
        if self.problem.nodes:
            placing = time.monotonic()
            chosen, on_node, moved = place(self.costing, chosen)
            stats["moved_to_fit_nodes"], stats["place_s"] = moved, time.monotonic() - placing
            budget.record("place", placing, note=f"{moved} runs moved to fit a node")
        stats["objective_priced"] = sum(self.price(o) for o in chosen.values())
        stats["late_jobs"], stats["late_slots"] = self.lateness(chosen)
        plan: Plan = {}
        options: dict[str, Option] = {}
        late: dict[str, str] = {}
        unplanned: dict[str, str] = {}
        for j, job in enumerate(self.jobs):
            option = chosen.get(j)
            if option is None:
                unplanned[job.id] = self.why_late(j, None)
                continue
            options[job.id] = option
            nodes = on_node.get(j)
            plan[job.id] = [Segment(a, b, option.mode_at(i), () if nodes is None else nodes[i])
                            for i, (a, b) in enumerate(option.segments)]
            if option.late:
                late[job.id] = self.why_late(j, option)
        objective = sum(o.cost for o in options.values())
        if bound is not None and not late and not unplanned:
            stats["gap_to_bound"] = (objective - bound) / abs(bound) if bound else 0.0
        stats["solve_s"] = budget.elapsed()
        return Solution(plan, options, late, unplanned, objective, bound if not late and not unplanned else None,
                        stats, None if relaxation is None else (np.asarray(relaxation.capacity_price, dtype=float),
                                                                relaxation.theta),
                        [p.as_dict() for p in budget.phases])

    def pricing(self, budget: Budget, queues: dict[str, dict[int, Option]]) -> Prices | None:
        """GPU-slot prices and a lower bound: the LP where it is predicted to solve in its share, else the
        Lagrangian (its steps are cheap and stop at any time)."""
        started = budget.start()
        try:
            from scheduler.planner.relax import relax, size
        except ImportError:
            log.warning("highspy is not installed: planning with the greedy alone")
            return None
        nnz = size(self.costing)
        predicted_s = lp_seconds(nnz, len(self.jobs))
        share_s = PRICING_SHARE * budget.left()
        if predicted_s <= share_s:
            lp = relax(self.costing, share_s)
            if lp is not None and lp.status == "Optimal":
                budget.record("pricing", started, note=f"LP of {nnz} nonzeros: optimal")
                return lp
            why = f"LP of {nnz} nonzeros cut off ({lp.status if lp else 'empty'})"
        else:
            why = f"LP of {nnz} nonzeros predicted {predicted_s:.1f} s > {share_s:.1f} s"
        # Polyak's steps aim at a plan's cost: an on-time queue plan's or the previous plan's, if any (late
        # penalties are no aim); they go on from the last replan's prices, so that short ascents add up.
        whole = [plan for plan in queues.values() if self.lateness(plan)[0] == 0]
        if len(self.previous) == len(self.jobs) and not any(o.late for o in self.previous.values()):
            whole.append(self.previous)
        upper = min(sum(self.true_cost(o) for o in plan.values()) for plan in whole) if whole else None
        price0, theta0 = self.prices0 if self.prices0 is not None else (None, 1.0)
        if len(self.previous) < 0.8 * len(self.jobs):  # many jobs new: the prices may have far to go
            theta0 = 1.0
        lagrange_s = min(LAGRANGE_SHARE * budget.limit_s, max(0.0, budget.end - time.monotonic()) * 0.5)
        relaxation = lagrangian(self.costing, time.monotonic() + lagrange_s, upper, price0=price0, theta0=theta0)
        budget.record("pricing", started, note=f"{why}; Lagrangian: "
                      + (f"{relaxation.steps} steps" if relaxation is not None else "a job has no run"))
        return relaxation

    def construct(self, budget: Budget, queues: dict[str, dict[int, Option]], relaxation: Prices | None,
                  stats: dict[str, float | str]) -> tuple[dict[int, Option], str]:
        """The plans to start from: the queues, the previous plan repaired to the present, the greedy at the
        relaxation's prices; a late job in any of them is repaired (ruin and recreate) before they are compared."""
        started = budget.start()
        t0, limit = budget.t0, budget.limit_s
        starts = dict(queues)
        # A replan that follows one of (nearly) the same jobs continues its search: the previous plan, repaired, is
        # its start, and the time a fresh greedy and the whole-problem MILP would take goes to the neighbourhoods.
        warm = len(self.jobs) > 1 and len(self.previous) >= 0.8 * len(self.jobs)
        if self.previous:
            starts["previous"] = self.repaired(t0 + 0.3 * limit)
            stats["previous_late_jobs"], stats["previous_late_slots"], stats["previous_objective"] = self.rank(
                starts["previous"])
            if self.lateness(starts["previous"])[0]:
                repair(self, starts["previous"], t0 + 0.4 * limit)
        if not warm or isinstance(relaxation, Lagrangian):  # a Lagrangian's prices went on: a fresh greedy may win
            # A portfolio, while the best start leaves jobs late and another construction fits in the time. Where even
            # the queues leave jobs late (a burst beyond the cluster's capacity), making room for each job as it
            # comes takes the room later jobs needed (Philly's week: 40 late, 28 without), and absolute slack leaves
            # fewer late: that goes first there; on a full but feasible week, relative slack and making room (a
            # 2,000-job week: 0 late where the other left 3). Then the prices alone (rounding can crowd a job out).
            variants = [("greedy", relaxation, True, True), ("greedy, absolute slack", relaxation, False, False)]
            if min(self.lateness(plan)[0] for plan in queues.values()):
                variants.reverse()
            if relaxation is not None and relaxation.rounding:
                variants.append(("greedy, unrounded", None, True, True))
            for k, (name, prices, relative, make_room) in enumerate(variants):
                spent = time.monotonic() - started
                if k and (min(self.lateness(plan)[0] for plan in starts.values()) == 0
                          or time.monotonic() + spent / k > t0 + 0.9 * limit):
                    break
                starts[name] = self.greedy(t0 + (0.65 if not k else 0.9) * limit, prices, relative=relative,
                                           make_room=make_room)
        ranks = {k: self.rank(v) for k, v in starts.items()}
        name = min(starts, key=lambda k: ranks[k])
        chosen = dict(starts[name])
        if name in queues:  # a queue plan, moved job by job to cheaper options as timely
            free = self.costing.capacity.copy()
            for option in chosen.values():
                self._take(option, free)
            self.improve(chosen, free, self.order(), max(t0 + 0.6 * limit, time.monotonic() + 0.1))
        note = ", ".join(f"{k} {r[0]} late {r[2]:.6g}" for k, r in ranks.items())
        note += f"; {self.repaired_jobs} late jobs repaired"
        budget.record("construction", started, note=f"{note}; from {name}")
        return chosen, name

    def improve_phases(self, budget: Budget, chosen: dict[int, Option], relaxation: Prices | None,
                       bound: float | None, max_columns: int, use_lns: bool, stats: dict[str, float | str]
                       ) -> tuple[dict[int, Option], bool]:
        """The MILP over a candidate set where it is predicted to finish, the neighbourhood search, and a polish;
        each phase records its gain. Returns the plan and whether it is proven optimal."""
        deadline = budget.end
        started = budget.start()
        before = sum(self.price(o) for o in chosen.values())
        warm = len(self.jobs) > 1 and len(self.previous) >= 0.8 * len(self.jobs)
        # Start with a small candidate set; while the MILP proves optimality over a set the budget cut, double the
        # set and solve again from the best plan so far. It gets 30% of the time left (all of it without the
        # neighbourhood search); it is not started where its model is predicted not to solve in that time.
        budget_columns = max_columns
        milp_deadline = deadline - (LNS_SHARE if use_lns else 0.0) * (deadline - time.monotonic())
        note = ""
        proven = bound is not None and sum(self.true_cost(o) for o in chosen.values()) - bound <= 1e-7 * max(
            1.0, abs(bound))  # at the bound already (tie-breaks are not costs): nothing can be cheaper
        if proven:
            note = "at the bound"
        elif warm and use_lns and len(self.jobs) > WARM_MILP_JOBS:
            note = "skipped: a warm replan of many jobs goes to the neighbourhoods"
        elif use_lns and (relaxation is None or not relaxation.rigid):
            # The whole MILP is larger than the LP, which was predicted too slow (or cut off): its time goes to the
            # neighbourhoods, whose small MILPs finish.
            note = "skipped: larger than an LP that would not solve in time"
        else:
            while time.monotonic() < milp_deadline - 0.1:
                best = sum(self.price(o) for o in chosen.values())
                slack = best - bound if bound is not None else math.inf
                true = sum(self.true_cost(o) for o in chosen.values())
                if bound is not None and true - bound <= 1e-7 * max(1.0, abs(bound)):
                    proven, note = True, "at the bound"
                    break  # already at the bound (tie-breaks are not costs)
                columns, truncated = self.candidates(chosen, relaxation, slack, budget_columns, milp_deadline - 0.1)
                stats["milp_columns"] = float(sum(len(c) for c in columns))
                picked, status = self.milp(dict(enumerate(columns)), self.costing.capacity, chosen,
                                           milp_deadline - time.monotonic())
                stats["milp_status"] = note = status
                if picked is not None and _better(sum(self.price(o) for o in picked.values()), best):
                    chosen, stats["method"] = picked, "milp"
                if status == "Optimal" and not truncated:
                    proven = True
                if status != "Optimal" or not truncated:
                    break
                budget_columns *= 2
        after = sum(self.price(o) for o in chosen.values())
        budget.record("milp", started, before - after, ("proven optimal; " if proven else "") + note)
        if use_lns and not proven:
            started, before = budget.start(), after
            pool, searched, searched_gain = 4 * budget_columns, -1, False
            # where this replan's sweep begins: elsewhere than the last one's (a function of its plan, so pure)
            rotate = sum(o.start * (k + 1) for k, o in enumerate(self.previous.values()))
            converged = False
            while time.monotonic() < deadline - 0.2:
                # When the search runs out of neighbourhoods with time left, it starts over on a candidate set twice
                # as wide; it ends when the set stopped growing and gave nothing.
                best = sum(self.price(o) for o in chosen.values())
                slack = best - bound if bound is not None else math.inf
                lazy = Columns(self, chosen, relaxation, slack, pool, deadline - 0.3)
                if self.neighbourhoods(chosen, lazy, deadline, stats, rotate):
                    searched_gain = True
                elif lazy.size() <= searched:
                    converged = True
                    break
                pool, searched = 2 * pool, lazy.size()
            if searched_gain:
                stats["method"] = f"{stats['method']}+lns"
            after = sum(self.price(o) for o in chosen.values())
            budget.record("neighbourhoods", started, before - after,
                          f"{int(stats.get('lns_windows', 0))} windows of up to {int(stats.get('lns_jobs', 0))} jobs"
                          + ("; converged" if converged else ""))
        # Polish: options outside the MILP's candidate set may still improve its plan one job at a time.
        started, before = budget.start(), after
        free = self.costing.capacity.copy()
        for option in chosen.values():
            self._take(option, free)
        if self.improve(chosen, free, self.order(), deadline):
            stats["method"] = f"{stats['method']}+polish"
        after = sum(self.price(o) for o in chosen.values())
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
            columns, _truncated = planner.candidates(chosen, relaxation, slack, max_columns, deadline_s)
            self.lists = dict(enumerate(columns))

    def build(self, jobs: list[int]) -> None:
        missing = {j for j in jobs if j not in self.lists}
        if missing:
            columns, _truncated = self.planner.candidates(self.chosen, self.relaxation, self.slack, self.max_columns,
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


def lp_seconds(nnz: int, jobs: int) -> float:
    """The LP's predicted solve time. Measured here (2 cores) on the foreign benchmark's and our own weeks, it grows
    with nonzeros x jobs: 0.43 M nonzeros of 150 jobs in 1.0 s, 0.87 M of 150 in 0.7 s, 0.85 M of 124 in 1.2 s,
    0.76 M of 249 in 0.8 s, 1.49 M of 500 in 11.6 s; this is pessimistic on all of them."""
    return nnz * jobs / LP_NNZ_JOBS_PER_S


def solve(problem: Problem, time_limit_s: float = 10.0, previous: Previous | None = None,
          hysteresis: float = 0.0, use_milp: bool = True, use_lns: bool = True,
          prices: tuple[np.ndarray, float] | None = None) -> Solution:
    """``use_lns=False``: the MILP alone for the whole limit (the benchmark's long-run yardstick). ``prices``: the
    last replan's Solution.prices, moved onto this problem's slots."""
    return Planner(problem, previous, hysteresis, prices).solve(time_limit_s, use_milp=use_milp, use_lns=use_lns)


def later(mine: tuple[int, int], queue: tuple[int, int]) -> bool:
    """Is a plan with lateness ``mine`` (late jobs, late slots) later than a queue's? Late jobs count first: two late
    jobs with more late slots between them beat eight with fewer (a component-wise test once swapped such a plan
    for the eight)."""
    return mine > queue
