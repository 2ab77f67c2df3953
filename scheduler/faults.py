"""Crash points for the exactly-once tests: ``GSCHED_FAULT=NAME`` makes the daemon SIGKILL itself at NAME.

Only the tests set it; a real daemon passes each point at the cost of one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("dispatch.after_intent", "dispatch.after_spawn", "slurm.after_intent", "slurm.after_submit")


def crash_point(name: str) -> None:
    if os.environ.get("GSCHED_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
