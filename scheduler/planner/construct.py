"""Construction: the plans a replan starts from. The greedy places every job at its cheapest option at cost +
GPU-slot prices (after the relaxation's own choices), makes room for a job it would leave late (repair.py), and a
best-response local search follows; a portfolio of orders runs while jobs stay late and the time allows. The previous
plan repaired to the present and the queue plans compete with it (solve.py's module docstring has the whole)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from scheduler.planner.baselines import queue_option
from scheduler.planner.budget import Budget
from scheduler.planner.lagrange import Lagrangian
from scheduler.planner.options import Option, _better
from scheduler.planner.prices import Prices
from scheduler.planner.repair import REPAIR_S, REPAIR_TRIES, repair, repair_one, trade

if TYPE_CHECKING:
    from scheduler.planner.solve import Planner


def repaired(planner: Planner, deadline_s: float) -> dict[int, Option]:
    """The previous plan on today's problem: each job's last option where it still fits (earliest first), the
    jobs new since then or pushed out placed as the greedy would (as a queue would, past ``deadline_s``)."""
    previous = sorted(planner.previous.items(), key=lambda item: (item[1].start, item[0]))
    return seeded(planner, [option for _j, option in previous], deadline_s)[0]


def seeded(planner: Planner, seeds: list[Option], deadline_s: float, relative: bool = True, make_room: bool = True
           ) -> tuple[dict[int, Option], np.ndarray, list[int]]:
    """``seeds`` where they fit (the first per job), then every other job in tightness order at its cheapest
    priced option (as a plain queue would place it, past ``deadline_s``): (plan, capacity left, order)."""
    free = planner.costing.capacity.copy()
    chosen: dict[int, Option] = {}
    option: Option | None
    for option in seeds:
        if option.job not in chosen and planner._fits(option, free):
            chosen[option.job] = option
            planner._take(option, free)
    order = planner.order(relative)
    failed = 0 if make_room else REPAIR_TRIES
    for j in order:
        if j in chosen:
            continue
        if time.monotonic() > deadline_s:  # out of time: the rest as a plain queue would place them
            option = queue_option(planner.costing, j, free) or planner.earliest_option(j, free)
        else:
            option = planner.best_option(j, free, priced=True)
            # No on-time room left: make room now, while the jobs not yet placed leave the others space to move
            # (not after REPAIR_TRIES failures in a row: in an overloaded burst most jobs cannot be on time)
            if option is None and failed < REPAIR_TRIES:
                if repair_one(planner, j, chosen, free, min(deadline_s, time.monotonic() + REPAIR_S)):
                    planner.repaired_jobs += 1
                    failed = 0
                    continue
                failed += 1
            option = option or planner.earliest_option(j, free)
        if option is not None:
            chosen[j] = option
            planner._take(option, free)
    return chosen, free, order


def rounded(planner: Planner, relaxation: Prices | None) -> list[tuple[float, Option]]:
    """The LP's rigid columns with their values, largest first: what LP rounding tries first."""
    out = []
    for j, m, starts, n, costs, _rc, x in (relaxation.rigid if relaxation is not None else []):
        for i in np.flatnonzero(x > 1e-6):
            s = int(starts[i])
            e = planner.costing.run_end(planner.jobs[j], m, s, n)
            if e <= planner.jobs[j].deadline_slot:
                out.append((float(x[i]), Option(j, m, ((s, e),), float(costs[i]))))
    out.sort(key=lambda item: -item[0])
    return out


def greedy(planner: Planner, deadline_s: float, relaxation: Prices | None = None,
           improve_until_s: float | None = None, relative: bool = True, make_room: bool = True) -> dict[int, Option]:
    """Every job placed by ``deadline_s`` (the rest as a queue would, past it), in ``order(relative)``; with
    ``make_room``, a job that finds no on-time room has room made for it as it is placed. The local search that
    follows stops at ``improve_until_s``."""
    # LP rounding: jobs the LP places (nearly) whole go first, where the LP put them, while they fit; the
    # Lagrangian's rounding likewise: each job's run most of its (recent) steps picked.
    seeds = [option for _value, option in rounded(planner, relaxation)]  # on-time columns only
    seeds += [Option(j, m, ((start, end),), cost)
              for _value, j, m, start, end, cost in (relaxation.rounding if relaxation is not None else [])]
    chosen, free, order = seeded(planner, seeds, deadline_s, relative, make_room)
    until = deadline_s if improve_until_s is None else min(deadline_s, improve_until_s)
    local_search(planner, chosen, free, order, until)
    if planner.lateness(chosen)[0]:  # one at a time, a wide job can find its window fragmented: make room for it
        # and, where that is not enough, give up one large run for several small ones
        if repair(planner, chosen, deadline_s) + trade(planner, chosen, deadline_s):
            free = planner.costing.capacity.copy()
            for option in chosen.values():
                planner._take(option, free)
            local_search(planner, chosen, free, order, until)
    return chosen


def local_search(planner: Planner, chosen: dict[int, Option], free: np.ndarray, order: list[int],
                 deadline_s: float) -> bool:
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
                option = planner.best_option(j, free) or planner.earliest_option(j, free)
                if option is not None:
                    chosen[j], improved, moved = option, True, True
                    planner._take(option, free)
                continue
            planner._take(current, free, +1)
            option = planner.best_option(j, free)
            if option is None and current.late:
                option = planner.earliest_option(j, free)
            if option is not None and _better(planner.price(option), planner.price(current)):
                chosen[j], improved, moved = option, True, True
            planner._take(chosen[j], free)
    return moved


def construct(planner: Planner, budget: Budget, queues: dict[str, dict[int, Option]], relaxation: Prices | None,
              stats: dict[str, float | str]) -> tuple[dict[int, Option], str]:
    """The plans to start from: the queues, the previous plan repaired to the present, the greedy at the
    relaxation's prices; a late job in any of them is repaired (ruin and recreate) before they are compared."""
    started = budget.start()
    t0, limit = budget.t0, budget.limit_s
    starts = dict(queues)
    # A replan that follows one of (nearly) the same jobs continues its search: the previous plan, repaired, is
    # its start, and the time a fresh greedy and the whole-problem MILP would take goes to the neighbourhoods.
    warm = len(planner.jobs) > 1 and len(planner.previous) >= 0.8 * len(planner.jobs)
    if planner.previous:
        starts["previous"] = repaired(planner, t0 + 0.3 * limit)
        stats["previous_late_jobs"], stats["previous_late_slots"], stats["previous_objective"] = planner.rank(
            starts["previous"])
        if planner.lateness(starts["previous"])[0]:
            repair(planner, starts["previous"], t0 + 0.4 * limit)
    if not warm or isinstance(relaxation, Lagrangian):  # a Lagrangian's prices went on: a fresh greedy may win
        # A portfolio, while the best start leaves jobs late and another construction fits in the time. Where even
        # the queues leave jobs late (a burst beyond the cluster's capacity), making room for each job as it
        # comes takes the room later jobs needed (Philly's week: 40 late, 28 without), and absolute slack leaves
        # fewer late: that goes first there; on a full but feasible week, relative slack and making room (a
        # 2,000-job week: 0 late where the other left 3). Then the prices alone (rounding can crowd a job out).
        variants = [("greedy", relaxation, True, True), ("greedy, absolute slack", relaxation, False, False)]
        if min(planner.lateness(plan)[0] for plan in queues.values()):
            variants.reverse()
        if relaxation is not None and relaxation.rounding:
            variants.append(("greedy, unrounded", None, True, True))
        fewest = planner.fewest_late(queues["fifo"])
        for k, (name, prices, relative, make_room) in enumerate(variants):
            spent = time.monotonic() - started
            if k and (min(planner.lateness(plan)[0] for plan in starts.values()) <= fewest
                      or time.monotonic() + spent / k > t0 + 0.9 * limit):
                break
            starts[name] = greedy(planner, t0 + (0.65 if not k else 0.9) * limit, prices, relative=relative,
                                  make_room=make_room)
    ranks = {k: planner.rank(v) for k, v in starts.items()}
    name = min(starts, key=lambda k: ranks[k])
    chosen = dict(starts[name])
    if name in queues:  # a queue plan, moved job by job to cheaper options as timely
        free = planner.costing.capacity.copy()
        for option in chosen.values():
            planner._take(option, free)
        local_search(planner, chosen, free, planner.order(), max(t0 + 0.6 * limit, time.monotonic() + 0.1))
    note = ", ".join(f"{k} {r[0]} late {r[2]:.6g}" for k, r in ranks.items())
    note += f"; {planner.repaired_jobs} late jobs repaired"
    budget.record("construction", started, note=f"{note}; from {name}")
    return chosen, name
