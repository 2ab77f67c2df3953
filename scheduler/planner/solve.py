"""The planner: all queued jobs together, on a shared pool of GPUs, close to the optimum.

One time budget (budget.py), spent in phases that each report their seconds and their gain (``Solution.phases``,
``gsched plan --json``):

1. Queues: FIFO (run-now) and EDF, each job in its requested mode as soon as the GPUs allow. They are the deadline
   guarantee: a finished plan later than the better of them (more late jobs, or as many and more late slots) is
   replaced by it, so the planner never raises the number of late jobs.
2. Pricing (pricing.py): a price per GPU-slot and a lower bound on every plan. The LP relaxation (relax.py) where
   it is predicted to solve in its share of the time left (``lp_seconds``); else the Lagrangian relaxation of the
   capacity (lagrange.py), whose steps stop at any time. Both satisfy prices.Prices.
3. Construction (construct.py): the greedy places the jobs, tightest first, each at its cheapest option at cost +
   GPU-slot prices; a job that finds no on-time room has room made for it by ruin and recreate (repair.py), at once
   and again after a best-response local search; beyond capacity, trade() gives up one large run for several small
   late ones. A portfolio of orders runs while jobs stay late and the time allows. The previous plan, repaired to
   the present, and the queue plans compete with it: fewest late jobs, then late slots, then price.
4. Improvement (improve.py): the whole-problem MILP (HiGHS) over the LP's candidate columns, only where the LP solved;
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

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from scheduler.planner.baselines import edf_order, fifo_order, queue, queue_option
from scheduler.planner.budget import Budget
from scheduler.planner.construct import construct, seeded
from scheduler.planner.improve import exact_elastic, improvement
from scheduler.planner.nodes import place
from scheduler.planner.options import Costing, Option, _better, _first_min
from scheduler.planner.pipelines import order, predecessors, ready_slot, with_precedence
from scheduler.planner.pricing import pricing
from scheduler.planner.problem import Plan, Problem, Segment
from scheduler.planner.prices import Prices

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
        self._hopeless: dict[int, bool] = {}
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
        # a late job's previous run is kept too (late): dropping it re-placed it at every replan, so a replan always
        # "improved" on the previous plan (511 late slots against 526, every minute) and late jobs' plans moved
        if segments[0][0] < job.release_slot or segments[-1][1] > self.costing.horizon:
            return None
        if job.start_by_slot is not None and segments[0][0] > job.start_by_slot:
            return None
        cost, done = self.costing.simulate(job, mode, segments, seg_modes)
        return Option(j, mode, segments, cost, seg_modes=seg_modes, late=segments[-1][1] > job.deadline_slot) \
            if done else None

    def price(self, option: Option) -> float:
        """What the solvers minimise: the cost, a discount for staying put, a prohibitive price per late slot."""
        price = option.cost + self.costing.delay[option.job] * option.mean_slot
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

    def hopeless(self, j: int) -> bool:
        """Whether no plan brings job ``j`` on time: not even with every GPU the running jobs leave free to itself.
        Moving other queued jobs cannot help it, so repair does not try (an overloaded replan spent most of its
        time there), and such jobs are the fewest late jobs any plan can have."""
        if j not in self._hopeless:  # (a late previous run comes back only where no on-time option fits)
            option = self.best_option(j, self.costing.capacity)
            self._hopeless[j] = option is None or option.late
        return self._hopeless[j]

    def fewest_late(self, chosen: dict[int, Option]) -> int:
        """A lower bound on any plan's late jobs, from one plan: its late jobs that are hopeless (those are late in
        every plan)."""
        return sum(1 for j in range(len(self.jobs))
                   if (j not in chosen or chosen[j].end > self.jobs[j].deadline_slot) and self.hopeless(j))

    def overloaded(self, fifo: dict[int, Option]) -> bool:
        """An online queue beyond its GPUs: waiting has a price (the daemon's backlog is over a day's work, so more
        jobs are coming that this plan cannot see) and FIFO leaves jobs late that a plan could keep on time. Its
        replans end after construction: the improvement's MILPs trade one late job's slots for another's, which the
        next arrival undoes. (Philly's week on 35 GPUs: the same 47 late jobs and 0.4% saved in 45 s instead of 83 s;
        without construction's reordering and repair too, the 1,764-job week left 55 late instead of 12.)"""
        return self.problem.wait_pct_per_h > 0 and self.lateness(fifo)[0] > self.fewest_late(fifo)

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
                    keys = costs[ok] + costing.delay[j] * (starts[ok] + n / 2)  # of equal options, the earliest
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
                    split_key = (split.cost + costing.delay[j] * split.mean_slot
                                 + (self._gpu_slots_price(split) if priced else 0.0))
                    if _better(split_key, best_key):
                        best, best_key = split, split_key
            elastic = costing.elastic_option(j, free, self.lam if priced else None) if _better(
                min(floors), best_key) else None
            if elastic is not None:
                elastic_key = (elastic.cost + costing.delay[j] * elastic.mean_slot
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


    # --- the MILP --------------------------------------------------------------------------------------------


    # --- explanations ----------------------------------------------------------------------------------------

    def why_late(self, j: int, option: Option | None) -> str:
        job, costing = self.jobs[j], self.costing
        fastest = min(range(len(job.modes)), key=lambda m: costing.slots_needed(job, m)[0])
        need_h = job.work / job.modes[fastest].rate + job.overhead_h(0)
        left_h = max(0, min(job.deadline_slot, costing.horizon) - job.release_slot) * costing.slot_h
        over_h = (option.end - job.deadline_slot) * costing.slot_h if option is not None else 0.0
        if need_h > left_h + 1e-9:
            return (f"needs {need_h:.1f} h at {job.modes[fastest].gpus} GPUs, {left_h:.1f} h left before its deadline"
                    + (f"; planned for its earliest finish, {over_h:.2f} h late" if option
                       else "; no room in the horizon"))
        if option is None:
            return "no room for it anywhere in the planning horizon"
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
        relaxation = pricing(self, budget, queues) if use_milp and self.jobs else None
        if relaxation is not None:
            self.lam = relaxation.capacity_price
            self.lam_prefix = np.concatenate([[0.0], np.cumsum(self.lam)])
            stats["lp_status"], stats["lp_s"] = relaxation.status, budget.elapsed()
        chosen, name = construct(self, budget, queues, relaxation, stats)
        stats["start"] = stats["method"] = name
        if use_milp and len(self.jobs) <= EXACT_ELASTIC_JOBS:
            exact_elastic(self, chosen, budget.share(0.5))
        greedy_obj = sum(self.price(o) for o in chosen.values())
        stats["greedy_objective"], stats["greedy_s"] = greedy_obj, budget.elapsed()
        budget.phases[-1].gain = fifo_price - greedy_obj
        bound = relaxation.bound if relaxation is not None and math.isfinite(relaxation.bound) else None
        if use_milp and len(chosen) > 1 and self.overloaded(queues["fifo"]):
            budget.record("milp", budget.start(), note="skipped: an overloaded queue whose plan the next arrival moves")
        elif use_milp and len(chosen) > 1:
            chosen, proven = improvement(self, budget, chosen, relaxation, bound, max_columns, use_lns, stats)
            stats["proven_optimal"] = float(proven)
        if later(self.lateness(chosen), self.lateness(fallback)):  # never later than a plain queue would be
            chosen, stats["method"] = dict(fallback), f"{fallback_name} (fallback)"
        return self.finish(chosen, stats, budget, relaxation, bound)

    def finish(self, chosen: dict[int, Option], stats: dict[str, float | str], budget: Budget,
               relaxation: Prices | None = None, bound: float | None = None) -> Solution:
        """The chosen options placed on nodes (where there are several) and written out as a Solution."""
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


FIFO_FIX_ROUNDS = 30  # a pinned job pushes others out, some of them late behind FIFO in turn: 5 rounds on Philly
FIFO_FIX_SHARE = 0.2  # of the limit, more, at most, for the rounds


def solve(problem: Problem, time_limit_s: float = 10.0, previous: Previous | None = None,
          hysteresis: float = 0.0, use_milp: bool = True, use_lns: bool = True,
          prices: tuple[np.ndarray, float] | None = None) -> Solution:
    """The plan of ``problem``: its pipelines' windows set (pipelines.py), then solved. A step late against its
    window but not against its own deadline is not reported late: only the pipeline's own deadlines count."""
    windowed = with_precedence(problem)
    solution = _solve(windowed, time_limit_s, previous, hysteresis, use_milp, use_lns, prices)
    if windowed is not problem:
        solution = in_pipeline_order(windowed, solution)
        deadline = {job.id: job.deadline_slot for job in problem.jobs}
        solution.late = {i: why for i, why in solution.late.items()
                         if i not in solution.options or solution.options[i].end > deadline[i]}
    return solution


def in_pipeline_order(problem: Problem, solution: Solution) -> Solution:
    """The solution with every dependent starting after its predecessors end. The windows keep that for runs inside
    them; a step that cannot meet its window runs late, past its dependents' release: each such dependent (and
    whatever follows it) is queued again from its predecessors' end, the other runs kept. A dependent of a job with
    no run has none either."""
    planner = Planner(problem)
    jobs = problem.jobs
    preds = predecessors(jobs)
    index = {job.id: j for j, job in enumerate(jobs)}
    chosen = {index[i]: o for i, o in solution.options.items()}
    free = planner.costing.capacity.copy()
    for placed in chosen.values():
        planner._take(placed, free)
    ends = {j: o.end for j, o in chosen.items()}
    moved = 0
    for j in order(jobs):
        option = chosen.get(j)
        ready = ready_slot(preds[j], ends)
        if option is None or (ready is not None and option.start >= ready):
            continue
        planner._take(chosen.pop(j), free, +1)
        del ends[j]
        moved += 1
        if ready is not None and (again := queue_option(planner.costing, j, free, ready=ready)) is not None:
            chosen[j], ends[j] = again, again.end
            planner._take(again, free)
    if not moved:
        return solution
    fixing = time.monotonic()
    fixed = planner.finish(chosen, {**solution.stats, "pipeline_steps_queued_again": moved}, Budget(0.0))
    fixed.prices, fixed.bound = solution.prices, None
    fixed.stats["solve_s"] = float(solution.stats["solve_s"]) + time.monotonic() - fixing
    fixed.phases = [*solution.phases, {"phase": "pipeline order", "seconds": round(time.monotonic() - fixing, 3),
                                       "gain": None, "note": f"{moved} late step(s) queued after their predecessors"}]
    return fixed


def _solve(problem: Problem, time_limit_s: float, previous: Previous | None, hysteresis: float, use_milp: bool,
           use_lns: bool, prices: tuple[np.ndarray, float] | None) -> Solution:
    """``use_lns=False``: the MILP alone for the whole limit (the benchmark's long-run yardstick). ``prices``: the
    last replan's Solution.prices, moved onto this problem's slots.

    A job that cannot meet its deadline starts no later than FIFO would start it (Slurm's backfill keeps such a
    reservation for the head of its queue): fewest late jobs first let a stream of narrow jobs pass a late wide one
    for ever. Each late job the plan starts after its FIFO start (one FIFO leaves late too) takes its FIFO run,
    pinned there (``start_by_slot``), the plan's other runs staying where they still fit and the rest placed again
    around them (pins()). FIFO itself where a late job is still behind it, or more jobs are late than with FIFO.
    (A second pass improving the pinned plan with part of the limit left more jobs late on Philly's bursts.)"""
    solution = Planner(problem, previous, hysteresis, prices).solve(time_limit_s, use_milp=use_milp,
                                                                    use_lns=use_lns)
    if not solution.late and not solution.unplanned:
        return solution
    fixing = time.monotonic()
    fifo = queue(Costing(problem), fifo_order(problem))
    phases, spent = solution.phases, float(solution.stats["solve_s"])
    pinned, solution, behind = pins(problem, solution, fifo, fixing + FIFO_FIX_SHARE * time_limit_s)
    if pinned is problem:
        return solution
    planner = Planner(problem)
    if behind or later(_lateness(solution), planner.lateness(fifo)):
        solution = planner.finish(fifo, {**solution.stats, "method": "fifo (late jobs behind it)"}, Budget(0.0))
    solution.stats["fifo_pins"] = len(_pins_of(pinned))
    solution.stats["solve_s"] = spent + time.monotonic() - fixing
    solution.phases = [*phases, {"phase": "fifo pins", "seconds": round(time.monotonic() - fixing, 3), "gain": None,
                                 "note": f"{len(_pins_of(pinned))} late job(s) start by FIFO's start"}]
    return solution


def _pins_of(problem: Problem) -> dict[int, int]:
    return {j: job.start_by_slot for j, job in enumerate(problem.jobs) if job.start_by_slot is not None}


def _lateness(solution: Solution) -> tuple[int, int]:
    return int(solution.stats["late_jobs"]), int(solution.stats["late_slots"])


def pins(problem: Problem, solution: Solution, fifo: dict[int, Option], until_s: float
         ) -> tuple[Problem, Solution, dict[int, int]]:
    """Pin each late job the solution starts after FIFO to FIFO's run, the other runs kept where they fit and the
    rest placed again around them, until none is behind (or the rounds or the time run out): (the problem with its
    pins, the solution, the jobs still behind)."""
    at: dict[int, int] = {}
    pinned = problem
    behind = behind_fifo(problem, solution, fifo)
    for _ in range(FIFO_FIX_ROUNDS):
        if not behind or time.monotonic() > until_s:
            break
        at.update(behind)
        pinned = replace(problem, jobs=tuple(replace(job, start_by_slot=min(at[j], job.start_by_slot or at[j]))
                                             if j in at else job for j, job in enumerate(problem.jobs)))
        planner = Planner(pinned)
        seeds = [fifo[j] for j in sorted(at)] + sorted(solution.options.values(), key=lambda o: (o.start, o.job))
        chosen = seeded(planner, seeds, until_s, make_room=False)[0]
        stats = {**solution.stats, "method": str(solution.stats["method"]).removesuffix("+fifo pins") + "+fifo pins"}
        solution = planner.finish(chosen, stats, Budget(0.0))
        behind = behind_fifo(pinned, solution, fifo)
    return (pinned if at else problem), solution, behind


def behind_fifo(problem: Problem, solution: Solution, fifo: dict[int, Option]) -> dict[int, int]:
    """The jobs that cannot meet their deadline (FIFO leaves them late too, and so does the plan, or it has none for
    them) that the plan starts after FIFO would: job -> FIFO start. A job FIFO finishes on time can meet its
    deadline; the plan may leave it late to keep more others on time."""
    out = {}
    for j, job in enumerate(problem.jobs):
        queued = fifo.get(j)
        if queued is None or not queued.late or not (job.id in solution.late or job.id in solution.unplanned):
            continue
        option = solution.options.get(job.id)
        if option is None or option.start > queued.start:
            out[j] = queued.start
    return out


def later(mine: tuple[int, int], queue: tuple[int, int]) -> bool:
    """Is a plan with lateness ``mine`` (late jobs, late slots) later than a queue's? Late jobs count first: two late
    jobs with more late slots between them beat eight with fewer (a component-wise test once swapped such a plan
    for the eight)."""
    return mine > queue
