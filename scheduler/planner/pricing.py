"""Pricing: GPU-slot prices and a lower bound, from the LP where it is predicted to solve in its share of the time
left, else from the Lagrangian relaxation of the capacity."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scheduler.planner.budget import Budget
from scheduler.planner.lagrange import lagrangian
from scheduler.planner.options import Option
from scheduler.planner.prices import Prices

if TYPE_CHECKING:
    from scheduler.planner.solve import Planner

log = logging.getLogger("gsched.planner")
PRICING_SHARE = 0.3  # of the time left, for an LP predicted to solve in it
LP_NNZ_JOBS_PER_S = 8e7  # nonzeros x jobs of an LP solved in a second here (lp_seconds)
LAGRANGE_SHARE = 0.15  # of the limit, for the prices and bound of a problem too big for the LP


def pricing(planner: Planner, budget: Budget, queues: dict[str, dict[int, Option]]) -> Prices | None:
    """GPU-slot prices and a lower bound: the LP where it is predicted to solve in its share, else the
    Lagrangian (its steps are cheap and stop at any time)."""
    started = budget.start()
    try:
        from scheduler.planner.relax import relax, size
    except ImportError:
        log.warning("highspy is not installed: planning with the greedy alone")
        return None
    nnz = size(planner.costing)
    predicted_s = lp_seconds(nnz, len(planner.jobs))
    share_s = PRICING_SHARE * budget.left()
    if predicted_s <= share_s:
        lp = relax(planner.costing, share_s)
        if lp is not None and lp.status == "Optimal":
            budget.record("pricing", started, note=f"LP of {nnz} nonzeros: optimal")
            return lp
        why = f"LP of {nnz} nonzeros cut off ({lp.status if lp else 'empty'})"
    else:
        why = f"LP of {nnz} nonzeros predicted {predicted_s:.1f} s > {share_s:.1f} s"
    # Polyak's steps aim at a plan's cost: an on-time queue plan's or the previous plan's, if any (late
    # penalties are no aim); they go on from the last replan's prices, so that short ascents add up.
    whole = [plan for plan in queues.values() if planner.lateness(plan)[0] == 0]
    if len(planner.previous) == len(planner.jobs) and not any(o.late for o in planner.previous.values()):
        whole.append(planner.previous)
    upper = min(sum(planner.true_cost(o) for o in plan.values()) for plan in whole) if whole else None
    price0, theta0 = planner.prices0 if planner.prices0 is not None else (None, 1.0)
    if len(planner.previous) < 0.8 * len(planner.jobs):  # many jobs new: the prices may have far to go
        theta0 = 1.0
    lagrange_s = min(LAGRANGE_SHARE * budget.limit_s, max(0.0, budget.end - time.monotonic()) * 0.5)
    relaxation = lagrangian(planner.costing, time.monotonic() + lagrange_s, upper, price0=price0, theta0=theta0)
    budget.record("pricing", started, note=f"{why}; Lagrangian: "
                  + (f"{relaxation.steps} steps" if relaxation is not None else "a job has no run"))
    return relaxation


def lp_seconds(nnz: int, jobs: int) -> float:
    """The LP's predicted solve time. Measured here (2 cores) on the foreign benchmark's and our own weeks, it grows
    with nonzeros x jobs: 0.43 M nonzeros of 150 jobs in 1.0 s, 0.87 M of 150 in 0.7 s, 0.85 M of 124 in 1.2 s,
    0.76 M of 249 in 0.8 s, 1.49 M of 500 in 11.6 s; this is pessimistic on all of them."""
    return nnz * jobs / LP_NNZ_JOBS_PER_S
