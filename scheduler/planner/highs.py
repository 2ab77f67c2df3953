"""One place that builds HiGHS models from column-wise arrays and keeps HiGHS off stdout.

HiGHS prints its banner (its version and licence) on stdout when the first instance is built, before any
option can silence it; `gsched plan --json` owns stdout, and on stderr it read as noise between gsched's own
progress lines, so it goes to /dev/null.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np


# Building and solving an LP or MILP got through 0.2-0.7 million nonzeros a second on the sweep's weeks here
# (2 cores; the build alone about 5 million a second). A relaxation or MILP that would not finish in its share of
# a replan is skipped: HiGHS's presolve looks at its time limit rarely (318,000 nonzeros given 0.1 s took 0.5 s).
# The time goes to the greedy and the search instead, which plan better without prices than with a relaxation cut
# off by its time limit (150 jobs on 24 GPUs at 10 s: 4.5% cheaper).
SOLVE_NNZ_PER_S = 5e5


def new_highs(time_limit_s: float) -> Any:
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    h.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
    return h


def column_lp(cost: np.ndarray, col_upper: np.ndarray, row_lower: np.ndarray, row_upper: np.ndarray,
              starts: np.ndarray, index: np.ndarray, value: np.ndarray, integer: bool | list[bool] = False) -> Any:
    """``integer``: every column, or per column."""
    import highspy

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(row_lower)
    lp.col_cost_ = np.asarray(cost, dtype=float)
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.asarray(col_upper, dtype=float)
    lp.row_lower_ = np.asarray(row_lower, dtype=float)
    lp.row_upper_ = np.asarray(row_upper, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.asarray(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value, dtype=float)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = len(cost), len(row_lower)
    if integer is True:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * len(cost)
    elif integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger if whole else highspy.HighsVarType.kContinuous
                           for whole in integer]
    return lp
