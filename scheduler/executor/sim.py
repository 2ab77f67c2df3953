"""The simulated executor (`gsched simulate`): runs take the time and draw the power the planner's model gives
their mode, on a simulated clock, with no processes. It is one more implementation of executor/base.py, so the
daemon's own code decides everything: when a job starts, on how many devices, when it pauses or is preempted.

A run's handle carries what it needs to be followed after a restart: its start, its mode's rate and power, the
work left when it began and the resume overhead it pays first. Progress is kept per job (work done, in the
planner's units), and a checkpointed run reports its steps as a training run would, so the daemon's replan
places only the rest.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.devices import Device
from scheduler.executor.base import (Capabilities, Ended, Executor, Handle, Intent, NeverStarted, Observation,
                                     handle_of)
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState
from scheduler.timeutil import parse_rfc3339, rfc3339

# (job, its spec, the mode dict the plan chose) -> (the job's whole work, the mode's rate in work/h, its power kW)
Physics = Callable[[Job, JobSpec, dict[str, Any]], tuple[float, float, float]]


@dataclass(frozen=True)
class SimRun:
    """One run as it happened: for the executed schedule and its energy."""

    job_id: int
    start: datetime
    end: datetime
    mode: dict[str, Any]
    gpus: int
    power_kw: float
    work_done: float
    completed: bool


class SimExecutor(Executor):
    capabilities = Capabilities(holds_pending=False)
    where = "in simulation"

    def __init__(self, devices: list[Device], physics: Physics | None = None,
                 capacity_at: Callable[[datetime], int] | None = None, resume_overhead_minutes: float = 0.0,
                 log_dir: Path | None = None) -> None:
        self.devices = devices
        self.physics = physics
        self.capacity_at = capacity_at or (lambda _t: len(devices))
        self.default_overhead_minutes = resume_overhead_minutes
        self.log_dir = log_dir or Path("/nonexistent")
        self.notify: Callable[[], None] = lambda: None
        self.done: dict[int, float] = {}  # job id -> work done by its ended runs
        self.runs: list[SimRun] = []  # every ended run, in order
        self._active: dict[int, Handle] = {}  # job id -> the handle of its run
        self._stopping: dict[int, bool] = {}  # job id -> requeue (checkpoint) or not (cancel)

    # --- capacity and starts -------------------------------------------------------------------------------------

    def capacity(self, start: datetime, slot_s: float, slots: int) -> dict[str, list[int]]:
        return {"sim": [self.capacity_at(start + timedelta(seconds=k * slot_s)) for k in range(slots)]}

    def in_use(self) -> int:
        return sum(int(h["gpus"]) for h in self._active.values())

    def prepare(self, job: Job, spec: JobSpec, mode: dict[str, Any], now: datetime) -> Intent | None:
        gpus = int(mode["gpus"])
        if self.in_use() + gpus > self.capacity_at(now):
            return None
        assert self.physics is not None and job.id is not None
        work, rate, power_kw = self.physics(job, spec, mode)
        done = self.done.get(job.id, 0.0)
        overhead_min = spec.overhead_minutes(self.default_overhead_minutes) if done > 0 else 0.0
        handle = {"token": secrets.token_hex(8), "started_at": rfc3339(now), "gpus": gpus, "mode": mode,
                  "rate": rate, "power_kw": power_kw, "work": work, "done": done, "overhead_h": overhead_min / 60,
                  "steps": spec.steps}
        return Intent(handle, gpus, [d.uuid for d in self.devices[:gpus]], self.where)

    def start(self, job: Job, spec: JobSpec, intent: Intent, now: datetime) -> Handle:
        assert job.id is not None
        self._active[job.id] = intent.handle
        return intent.handle

    # --- following runs ------------------------------------------------------------------------------------------

    @staticmethod
    def end_of(handle: Handle) -> datetime:
        """When a run's work is done, if nothing stops it first."""
        hours = handle["overhead_h"] + max(0.0, handle["work"] - handle["done"]) / handle["rate"]
        return parse_rfc3339(handle["started_at"]) + timedelta(hours=hours)

    def next_end(self) -> datetime | None:
        return min((self.end_of(h) for h in self._active.values()), default=None)

    def poll(self, jobs: list[Job], now: datetime) -> list[Observation]:
        out: list[Observation] = []
        for job in jobs:
            if job.id is None or job.state != JobState.RUNNING:
                continue
            handle = self._active.get(job.id)
            if handle is None:
                continue
            end = self.end_of(handle)
            if job.id in self._stopping and now < end:
                out.append(Ended(job.id, self._finish(job.id, handle, now, complete=False,
                                                     requeue=self._stopping.pop(job.id))))
            elif now >= end:
                self._stopping.pop(job.id, None)
                out.append(Ended(job.id, self._finish(job.id, handle, end, complete=True, requeue=False)))
        return out

    def _finish(self, job_id: int, handle: Handle, at: datetime, complete: bool, requeue: bool) -> dict[str, Any]:
        del self._active[job_id]
        started = parse_rfc3339(handle["started_at"])
        hours = max(0.0, (at - started).total_seconds() / 3600)
        progress = max(0.0, hours - handle["overhead_h"]) * handle["rate"]
        done = handle["work"] if complete else min(handle["work"], handle["done"] + progress)
        self.done[job_id] = done
        self.runs.append(SimRun(job_id, started, at, handle["mode"], int(handle["gpus"]), handle["power_kw"],
                                done - handle["done"], complete))
        steps = handle.get("steps")
        metrics: dict[str, Any] = {"preempted": not complete}
        if steps:
            metrics["steps"] = int(steps) if complete else min(int(steps) - 1, math.floor(done / handle["work"] * steps))
        result: dict[str, Any] = {"exit_code": 0 if complete or requeue else -15, "duration_s": hours * 3600,
                                  "energy_j": handle["power_kw"] * hours * 3.6e6, "energy_source": "estimate",
                                  "metrics": metrics}
        if not complete and not requeue:
            result["signal"] = "SIGTERM"
        return result

    def recover(self, jobs: list[Job], now: datetime) -> list[Observation]:
        out: list[Observation] = []
        for job in jobs:
            handle = handle_of(job)
            if job.id is None or job.state != JobState.RUNNING:
                continue
            if "started_at" in handle and "rate" in handle:
                self._active[job.id] = handle
            else:
                out.append(NeverStarted(job.id, "its simulated run was never started"))
        return out + self.poll(jobs, now)

    def stop(self, job: Job, requeue: bool) -> bool:
        if job.id is None or job.id not in self._active:
            return False
        self._stopping[job.id] = requeue
        return True

    def retime(self, job: Job, start: datetime, now: datetime) -> None:
        pass

    def withdraw(self, job: Job) -> None:
        pass

    def reclaim(self, job: Job) -> None:
        if job.id is not None:
            self._active.pop(job.id, None)

    def started(self, job: Job) -> bool:
        return job.id is not None and job.id in self._active

    def held_mode(self, job: Job) -> dict[str, Any] | None:
        return None

    def describe(self, job: Job) -> dict[str, Any]:
        return {}

    def log_path(self, job_id: int) -> Path:
        return self.log_dir / f"{job_id}.log"

    def close(self, running: list[Job]) -> None:
        pass
