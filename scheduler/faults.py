"""Crash points for the exactly-once tests: ``GSCHED_FAULT=NAME`` makes the daemon SIGKILL itself at NAME.

Only the tests set it; a real daemon passes each point at the cost of one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("launch.after_intent", "launch.after_start")  # around an executor's start (daemon.py)


def crash_point(name: str) -> None:
    if os.environ.get("GSCHED_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
