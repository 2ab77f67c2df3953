"""The planner: all queued jobs together, on a shared pool of GPUs, close to the optimum.

1. LP relaxation (relax.py, HiGHS): a lower bound on every plan, and a price per GPU-slot where
   capacity is contended.
2. Greedy: jobs in order of tightness, each takes its cheapest option (mode and start, or for a
   preemptible job possibly a set of slots) at cost + GPU-slot prices, within the capacity left. Then
   local search on the true cost: each job in turn is lifted out and re-placed at its cheapest
   option given the others, until a pass changes nothing.
3. MILP (HiGHS) over the options whose LP reduced cost is within (greedy cost - bound) - the ones that
   can be in a better plan - plus split options for preemptible jobs, warm-started from the greedy,
   within 30% of the time left. The better plan wins.
4. Large neighbourhood search, unless the MILP proved its plan optimal: the jobs planned in one time window
   are freed and a small MILP re-places them over a wider candidate set while the rest stay; windows sweep
   the horizon, shift and widen after sweeps without gain, and start over on a twice wider candidate set
   while time is left. Then the local search of step 2 polishes the plan.

Deadlines first: FIFO (run-now) and EDF, each job in its requested mode as soon as the GPUs allow, are planned
too. Whichever of greedy, FIFO and EDF has the fewest late jobs, then the least lateness, then the lowest cost,
is where steps 3-4 start; and a finished plan later than the better of FIFO and EDF (more late jobs, or as many
and more late slots) is replaced by it: the fallback never raises the number of late jobs. An expensive but timely plan always beats a cheap late one, and on a problem too big for
the time the planner degrades to a plan that keeps at least the deadlines a plain queue keeps.

Time: every step checks the clock inside its loops, so a replan ends within its limit (plus one HiGHS call's
overrun); optimality is declared when the plan's cost without tie-breaks meets the LP bound.

Hysteresis: a job's previous option is priced at ``1 - hysteresis`` of its cost, so a replan moves a
job only for a larger gain. A job whose deadline cannot be met is planned for its earliest finish
(each late slot is priced above any saving), with the reason; one that fits nowhere in the horizon
is reported as unplanned, never dropped silently.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from scheduler.planner.highs import SOLVE_NNZ_PER_S, column_lp, new_highs
from scheduler.planner.lagrange import Lagrangian, lagrangian
from scheduler.planner.nodes import place
from scheduler.planner.options import Costing, Option, _mode_runs, _runs
from scheduler.planner.problem import Plan, Problem, Segment

log = logging.getLogger("gsched.planner")
TIE = 1e-9
# Measured on the benchmark's 150-job weeks (bench/planner.py): the neighbourhood search gains more from the
# time than the whole MILP does, and window MILPs capped at 1 s beat longer ones.
LNS_SHARE, LNS_STEP_S = 0.7, 1.0
WARM_MILP_JOBS = 150  # a replan from a previous plan of more jobs skips the whole-problem MILP
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
        if option.late:
            return price + self.late_penalty * (option.end - self.jobs[option.job].deadline_slot)
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
        job = self.jobs[j]
        m = job.requested_mode
        starts, costs, n = self.costing.rigid_costs(job, m, self.costing.horizon)
        if not len(starts):
            return None
        i = self.costing.first_fit(job, m, starts, n, free)
        if i is None:
            return None
        s = int(starts[i])
        e = self.costing.run_end(job, m, s, n)
        return Option(j, m, ((s, e),), float(costs[i]), late=e > job.deadline_slot)

    def repaired(self, deadline_s: float) -> dict[int, Option]:
        """The previous plan on today's problem: each job's last option where it still fits (earliest first), the
        jobs new since then or pushed out placed as the greedy would (as a queue would, past ``deadline_s``)."""
        previous = sorted(self.previous.items(), key=lambda item: (item[1].start, item[0]))
        return self.seeded([option for _j, option in previous], deadline_s)[0]

    def seeded(self, seeds: list[Option], deadline_s: float) -> tuple[dict[int, Option], np.ndarray, list[int]]:
        """``seeds`` where they fit (the first per job), then every other job in tightness order at its cheapest
        priced option (as a plain queue would place it, past ``deadline_s``): (plan, capacity left, order)."""
        free = self.costing.capacity.copy()
        chosen: dict[int, Option] = {}
        for option in seeds:
            if option.job not in chosen and self._fits(option, free):
                chosen[option.job] = option
                self._take(option, free)
        order = self.order()
        for j in order:
            if j in chosen:
                continue
            if time.monotonic() > deadline_s:  # out of time: the rest as a plain queue would place them
                option = self.queue_option(j, free) or self.earliest_option(j, free)
            else:
                option = self.best_option(j, free, priced=True) or self.earliest_option(j, free)
            if option is not None:
                chosen[j] = option
                self._take(option, free)
        return chosen, free, order

    def queue_plan(self, order: list[int]) -> dict[int, Option]:
        """A plain queue: each job in ``order``, in its requested mode, as early as the GPUs allow."""
        free = self.costing.capacity.copy()
        chosen: dict[int, Option] = {}
        for j in order:
            option = self.queue_option(j, free)
            if option is not None:
                chosen[j] = option
                self._take(option, free)
        return chosen

    def fifo(self) -> dict[int, Option]:
        return self.queue_plan(sorted(range(len(self.jobs)), key=lambda j: (self.jobs[j].release_slot, j)))

    def edf(self) -> dict[int, Option]:
        return self.queue_plan(sorted(range(len(self.jobs)),
                                      key=lambda j: (self.jobs[j].deadline_slot, self.jobs[j].release_slot, j)))

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
                key = None
                if priced and mode.power_kw > 0:
                    key = costing.w + self.lam * mode.gpus / (mode.power_kw * costing.slot_h)
                split = costing.split_option(j, m, free, key)
                if split is not None:
                    split_key = (split.cost + costing.tiebreak * split.start
                                 + (self._gpu_slots_price(split) if priced else 0.0))
                    if _better(split_key, best_key):
                        best, best_key = split, split_key
        if job.preemptible:
            elastic = costing.elastic_option(j, free, self.lam if priced else None)
            if elastic is not None:
                elastic_key = (elastic.cost + costing.tiebreak * elastic.start
                               + (self._gpu_slots_price(elastic) if priced else 0.0))
                if _better(elastic_key, best_key):
                    best, best_key = elastic, elastic_key
        previous = self.previous.get(j)
        if previous is not None and self._fits(previous, free):
            key = self.price(previous) + (self._gpu_slots_price(previous) if priced else 0.0)
            if not _better(best_key, key):
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

    def order(self) -> list[int]:
        def tightness(j: int) -> tuple[float, float]:
            job = self.jobs[j]
            window = min(job.deadline_slot, self.costing.horizon) - job.release_slot
            needed = [self.costing.slots_needed(job, m)[0] for m in range(len(job.modes))]
            size = max(mode.gpus * n for mode, n in zip(job.modes, needed))
            return (window - min(needed), -size)

        return sorted(range(len(self.jobs)), key=tightness)

    def rounded(self, relaxation: object | None) -> list[tuple[float, Option]]:
        """The LP's rigid columns with their values, largest first: what LP rounding tries first."""
        out = []
        for j, m, starts, n, costs, _rc, x in getattr(relaxation, "rigid", None) or []:
            for i in np.flatnonzero(x > 1e-6):
                s = int(starts[i])
                e = self.costing.run_end(self.jobs[j], m, s, n)
                if e <= self.jobs[j].deadline_slot:
                    out.append((float(x[i]), Option(j, m, ((s, e),), float(costs[i]))))
        out.sort(key=lambda item: -item[0])
        return out

    def greedy(self, deadline_s: float, relaxation: object | None = None, improve_until_s: float | None = None
               ) -> dict[int, Option]:
        """Every job placed by ``deadline_s`` (the rest as a queue would, past it); the local search that follows
        stops at ``improve_until_s``."""
        # LP rounding: jobs the LP places (nearly) whole go first, where the LP put them, while they fit; the
        # Lagrangian's rounding likewise: each job's run most of its (recent) steps picked.
        seeds = [option for _value, option in self.rounded(relaxation)]  # on-time columns only
        seeds += [Option(j, m, ((start, end),), cost)
                  for _value, j, m, start, end, cost in getattr(relaxation, "rounding", None) or []]
        chosen, free, order = self.seeded(seeds, deadline_s)
        self.improve(chosen, free, order, deadline_s if improve_until_s is None else min(deadline_s, improve_until_s))
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
        for option in chosen.values():
            self._take(option, free)
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

    def candidates(self, chosen: dict[int, Option], relaxation: object | None, slack: float, max_columns: int,
                   deadline_s: float = math.inf) -> tuple[list[list[Option]], bool]:
        """Each job's options for the MILP, and whether the column budget cut any that could be in a better
        plan (if not, the MILP's optimum is the optimum over all rigid plans). Past ``deadline_s`` no more are
        built (the set is then marked cut): every job keeps at least its chosen option."""
        costing = self.costing
        per_job: list[dict[tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]], Option]] = [
            {} for _ in self.jobs]
        rigid = getattr(relaxation, "rigid", None)
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
                if time.monotonic() > deadline_s:
                    break
                for m in range(len(job.modes)):
                    starts, costs, n = costing.rigid_costs(job, m, job.deadline_slot)
                    if len(starts):
                        for i in np.argsort(costs, kind="stable")[:keep_n]:
                            s = int(starts[i])
                            run = ((s, costing.run_end(job, m, s, n)),)
                            per_job[j][(m, run, ())] = Option(j, m, run, float(costs[i]))
        preemptible_x = getattr(relaxation, "preemptible_x", {}) or {}
        per_mode = max(2, max_columns // max(1, 4 * sum(len(job.modes) for job in self.jobs)))
        for j, job in enumerate(self.jobs):
            if not job.preemptible:
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
                keys = [None]
                if mode.power_kw > 0:
                    keys.append(costing.w + self.lam * mode.gpus / (mode.power_kw * costing.slot_h))
                for key in keys:
                    split = costing.split_option(j, m, costing.capacity, key)
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
                    option = self._checked(j, m, _runs(slots))
                    if option is not None:
                        per_job[j][option.key] = option
                    per_slot = np.full(x.shape[1], -1)
                    per_slot[slots] = np.argmax(x[:, slots], axis=0)
                    segments, seg_modes = _mode_runs(np.arange(x.shape[1]), per_slot)
                    option = self._checked(j, seg_modes[0], segments, seg_modes)
                    if option is not None:
                        per_job[j][option.key] = option
        for j in range(len(self.jobs)):
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
        h.setOptionValue("mip_rel_gap", 1e-4)
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

    def neighbourhoods(self, chosen: dict[int, Option], columns: list[list[Option]], deadline_s: float,
                       stats: dict[str, float | str], rotate: int = 0) -> bool:
        """Large neighbourhood search: free the jobs planned in one time window, keep the others, and let a small
        MILP re-place the freed ones over their whole candidate sets. Windows sweep the horizon; a sweep that
        finds nothing is followed by one shifted by a quarter window, then by windows twice as wide, up to half
        the horizon. Small MILPs solve to optimality where the whole one cannot."""
        horizon = self.costing.horizon
        width, shifted = max(8, horizon // 6), False
        moved = False
        while time.monotonic() < deadline_s - 0.2 and width <= max(8, horizon // 2):
            gained = False
            # A late job's own window first, widening with the sweeps: the jobs in its way are freed with it.
            late = [(self.jobs[j].release_slot - width // 2, o.end + width // 2) for j, o in chosen.items() if o.late]
            offset = width // 4 if shifted else 0
            sweep = [(a, a + width) for a in range(-offset, horizon, max(1, width // 2))]
            sweep = sweep[rotate % len(sweep):] + sweep[:rotate % len(sweep)]
            for a, b in late + sweep:
                if time.monotonic() >= deadline_s - 0.2:
                    break
                freed = [j for j, o in chosen.items() if o.start < b and o.end > a]
                if len(freed) < 2:
                    continue
                capacity = self.costing.capacity.copy()
                for j, option in chosen.items():
                    if j not in freed:
                        self._take(option, capacity)
                before = sum(self.price(chosen[j]) for j in freed)
                picked, _status = self.milp({j: columns[j] for j in freed}, capacity, chosen,
                                            min(LNS_STEP_S, deadline_s - 0.1 - time.monotonic()))
                if picked is not None and _better(sum(self.price(o) for o in picked.values()), before):
                    chosen.update(picked)
                    gained = moved = True
            stats["lns_sweeps"] = stats.get("lns_sweeps", 0.0) + 1  # type: ignore[operator]
            if not gained:
                width, shifted = (width * 2, False) if shifted else (width, True)
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
        t0 = time.monotonic()
        if self.problem.nodes:  # placing the runs on nodes comes after: keep its share of the limit for it
            time_limit_s *= 1 - PLACE_SHARE
        deadline = t0 + time_limit_s
        stats: dict[str, float | str] = {"method": "greedy"}
        relaxation: object | None = None
        # The plain queues first (they are the deadline guarantee) and the previous plan repaired to the present:
        # each replan starts from what the last one found, so replans add up.
        queues = {"fifo": self.fifo(), "edf": self.edf()}
        fallback_name = min(queues, key=lambda name: self.lateness(queues[name]))
        fallback = queues[fallback_name]
        starts = dict(queues)
        if use_milp and self.jobs:
            try:
                from scheduler.planner.relax import relax

                relaxation = relax(self.costing, 0.4 * time_limit_s, max_nnz=0.4 * time_limit_s * SOLVE_NNZ_PER_S)
            except ImportError:
                log.warning("highspy is not installed: planning with the greedy alone")
                use_milp = False
            if use_milp and relaxation is None:  # too large for the LP in its share: prices from the Lagrangian
                # Polyak's steps aim at a plan's cost: an on-time queue plan's or the previous plan's, if any (late
                # penalties are no aim); they go on from the last replan's prices, so that short ascents add up.
                whole = [plan for plan in queues.values() if self.lateness(plan)[0] == 0]
                if len(self.previous) == len(self.jobs) and not any(o.late for o in self.previous.values()):
                    whole.append(self.previous)
                upper = min(sum(self.true_cost(o) for o in plan.values()) for plan in whole) if whole else None
                price0, theta0 = self.prices0 if self.prices0 is not None else (None, 1.0)
                if len(self.previous) < 0.8 * len(self.jobs):  # many jobs new: the prices may have far to go
                    theta0 = 1.0
                relaxation = lagrangian(self.costing, time.monotonic() + LAGRANGE_SHARE * time_limit_s, upper,
                                        price0=price0, theta0=theta0)
        if relaxation is not None:
            self.lam = relaxation.capacity_price  # type: ignore[attr-defined]
            self.lam_prefix = np.concatenate([[0.0], np.cumsum(self.lam)])
            stats["lp_status"], stats["lp_s"] = relaxation.status, time.monotonic() - t0  # type: ignore[attr-defined]
        # A replan that follows one of (nearly) the same jobs continues its search: the previous plan, repaired, is
        # its start, and the time a fresh greedy and the whole-problem MILP would take goes to the neighbourhoods.
        warm = len(self.jobs) > 1 and len(self.previous) >= 0.8 * len(self.jobs)
        if self.previous:
            starts["previous"] = self.repaired(t0 + 0.3 * time_limit_s)
        if not warm:
            starts["greedy"] = self.greedy(t0 + 0.9 * time_limit_s, relaxation, t0 + 0.6 * time_limit_s)
        elif isinstance(relaxation, Lagrangian):  # its prices went on from the last replan's: a fresh greedy may win
            starts["greedy"] = self.greedy(t0 + 0.6 * time_limit_s, relaxation, t0 + 0.4 * time_limit_s)
        greedy_late = self.lateness(starts.get("greedy", {}))
        if not warm and getattr(relaxation, "rounding", None) and (later(greedy_late, self.lateness(fallback)) or (
                greedy_late[0] and time.monotonic() < t0 + 0.5 * time_limit_s)):
            # Rounding can crowd a job out of its window: the prices alone, placing every job as the greedy does
            starts["greedy, unrounded"] = self.greedy(t0 + 0.9 * time_limit_s, None, t0 + 0.6 * time_limit_s)
        name = min(starts, key=lambda k: self.rank(starts[k]))
        chosen = dict(starts[name])
        stats["start"] = stats["method"] = name
        if "previous" in starts:
            stats["previous_late_jobs"], stats["previous_late_slots"], stats["previous_objective"] = self.rank(
                starts["previous"])
        if name not in ("greedy", "previous"):  # a queue plan, moved job by job to cheaper options as timely
            free = self.costing.capacity.copy()
            for option in chosen.values():
                self._take(option, free)
            self.improve(chosen, free, self.order(), max(t0 + 0.6 * time_limit_s, time.monotonic() + 0.1))
        if use_milp and len(self.jobs) <= EXACT_ELASTIC_JOBS:
            self.exact_elastic(chosen, t0 + 0.7 * time_limit_s)
        greedy_obj = sum(self.price(o) for o in chosen.values())
        stats["greedy_objective"], stats["greedy_s"] = greedy_obj, time.monotonic() - t0
        bound = getattr(relaxation, "bound", None)
        bound = bound if bound is not None and math.isfinite(bound) else None
        if use_milp and len(chosen) > 1:
            # Start with a small candidate set; while the MILP proves optimality over a set the budget cut,
            # double the set and solve again from the best plan so far. It gets 30% of the time left; a
            # neighbourhood search over a wider set takes the rest unless the MILP proved the optimum.
            budget = max_columns
            milp_deadline = deadline - (LNS_SHARE if use_lns else 0.0) * (deadline - time.monotonic())
            if warm and use_lns and len(self.jobs) > WARM_MILP_JOBS:
                milp_deadline = time.monotonic()  # it did not finish last time either: all to the neighbourhoods
            proven = False
            while time.monotonic() < milp_deadline - 0.1:
                best = sum(self.price(o) for o in chosen.values())
                slack = best - bound if bound is not None else math.inf
                true = sum(self.true_cost(o) for o in chosen.values())
                if bound is not None and true - bound <= 1e-7 * max(1.0, abs(bound)):
                    proven = True
                    break  # already at the bound (tie-breaks are not costs)
                columns, truncated = self.candidates(chosen, relaxation, slack, budget, milp_deadline - 0.1)
                stats["milp_columns"] = float(sum(len(c) for c in columns))
                picked, status = self.milp(dict(enumerate(columns)), self.costing.capacity, chosen,
                                           milp_deadline - time.monotonic())
                stats["milp_status"] = status
                if picked is not None and _better(sum(self.price(o) for o in picked.values()), best):
                    chosen, stats["method"] = picked, "milp"
                if status == "Optimal" and not truncated:
                    proven = True
                if status != "Optimal" or not truncated:
                    break
                budget *= 2
            pool, searched, searched_gain = 4 * budget, -1, False
            # where this replan's sweep begins: elsewhere than the last one's (a function of its plan, so pure)
            rotate = sum(o.start * (k + 1) for k, o in enumerate(self.previous.values()))
            while use_lns and not proven and time.monotonic() < deadline - 0.2:
                # When the search runs out of windows with time left, it starts over on a candidate set twice as
                # wide; it ends when the set stopped growing and gave nothing.
                best = sum(self.price(o) for o in chosen.values())
                slack = best - bound if bound is not None else math.inf
                columns, _truncated = self.candidates(chosen, relaxation, slack, pool, deadline - 0.3)
                size = sum(len(c) for c in columns)
                if self.neighbourhoods(chosen, columns, deadline, stats, rotate):
                    searched_gain = True
                elif size <= searched:
                    break
                pool, searched = 2 * pool, size
            if searched_gain:
                stats["method"] = f"{stats['method']}+lns"
            # Polish: options outside the MILP's candidate set may still improve its plan one job at a time.
            free = self.costing.capacity.copy()
            for option in chosen.values():
                self._take(option, free)
            if self.improve(chosen, free, self.order(), deadline):
                stats["method"] = f"{stats['method']}+polish"
        if later(self.lateness(chosen), self.lateness(fallback)):  # never later than a plain queue would be
            chosen, stats["method"] = dict(fallback), f"{fallback_name} (fallback)"
        on_node: dict[int, tuple[tuple[int, ...], ...]] = {}
        if self.problem.nodes:
            placing = time.monotonic()
            chosen, on_node, moved = place(self.costing, chosen)
            stats["moved_to_fit_nodes"], stats["place_s"] = moved, time.monotonic() - placing
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
        stats["solve_s"] = time.monotonic() - t0
        prices = getattr(relaxation, "capacity_price", None)
        return Solution(plan, options, late, unplanned, objective, bound if not late and not unplanned else None,
                        stats, None if prices is None else (np.asarray(prices, dtype=float),
                                                            float(getattr(relaxation, "theta", 1.0))))


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
