"""What a relaxation hands the solvers: GPU-slot prices, a lower bound, and what it suggests placing.

The LP (relax.py) and the Lagrangian (lagrange.py) both satisfy ``Prices``; the greedy, the candidate sets and the
next replan read them only through it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

# job, mode, starts, n, costs, reduced costs, LP values: one block per (job, mode) of the LP's rigid columns
RigidBlock = tuple[int, int, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]
# (share of the steps, job, mode, start, end, cost) of a run the relaxation picked for a job, most picked first
Rounding = tuple[float, int, int, int, int, float]


class Prices(Protocol):
    @property
    def bound(self) -> float: ...  # a lower bound on every plan's objective; -inf when unknown

    @property
    def status(self) -> str: ...

    @property
    def capacity_price(self) -> np.ndarray: ...  # >= 0 per slot: what one GPU-slot is worth

    @property
    def theta(self) -> float: ...  # the Lagrangian's step scale reached (1.0 for the LP): the next replan's start

    @property
    def rounding(self) -> list[Rounding]: ...

    @property
    def rigid(self) -> list[RigidBlock]: ...  # the LP's columns with reduced costs; empty for the Lagrangian

    @property
    def preemptible_x(self) -> dict[int, np.ndarray]: ...  # job -> LP x[mode, slot]; empty for the Lagrangian
