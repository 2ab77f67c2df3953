"""What an executor's observation means for the job: its state, reason, energy, cost and CO2. Every run-ending
transition is here, each through the store in one transaction, whichever executor ran the job."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from scheduler.clock import Clock
from scheduler.errors import Conflict, GschedError
from scheduler.executor.base import (Broken, CapacityChanged, Dropped, Ended, Lost, NeverStarted, Observation,
                                     Requeued, Started)
from scheduler.executor.untrusted import RunResult, parse_result
from scheduler.forecasts.base import Provider
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState, Measurement
from scheduler.planner.cost import run_cost
from scheduler.profiles import Profiles
from scheduler.store import Store

log = logging.getLogger("gsched.outcomes")
QUEUED = (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED)

# A run that ends: what no longer holds once the job is back in the queue or done.
CLEARED_RUN: dict[str, Any] = {"started_at": None, "gpus": None, "devices_json": None, "run_handle": None,
                               "plan_json": None, "planned_start": None, "planned_end": None}


def spec_of(job: Job) -> JobSpec:
    return JobSpec.from_json(json.loads(job.spec_json))


class Outcomes:
    def __init__(self, store: Store, provider: Provider, clock: Clock, profiles: Profiles, requeue_keeps_handle: bool
                 ) -> None:
        self.store, self.provider, self.clock, self.profiles = store, provider, clock, profiles
        # An executor that holds work (Slurm) runs a checkpointed job again under the same handle (its Slurm job)
        self.requeue_keeps_handle = requeue_keeps_handle

    def apply(self, obs: Observation, now: datetime) -> bool:
        """Record one observation; True if the plan must follow (devices freed or taken, the queue changed)."""
        if isinstance(obs, CapacityChanged):
            return True
        job = self.store.get(obs.job_id)
        if isinstance(obs, Started):
            self.started(job, obs, now)
        elif isinstance(obs, Ended):
            self.finish(job, now, obs.raw, obs.said)
        elif isinstance(obs, Lost):
            self.end_lost(job, now, obs.reason, obs.state)
        elif isinstance(obs, Requeued):
            self.requeued(job, now, obs.reason)
        elif isinstance(obs, Dropped):
            self.dropped(job, now, obs.reason, obs.state)
        elif isinstance(obs, NeverStarted):
            self.never_started(job, now, obs.reason)
        elif isinstance(obs, Broken):
            self.end_broken(job, now, obs.error)
        return True

    def started(self, job: Job, obs: Started, now: datetime) -> None:
        assert job.id is not None
        at = min(now, obs.at) if obs.at else now
        self.store.transition(job.id, JobState.RUNNING, at=at, expect=QUEUED,
                              reason="started" + (f" {obs.where}" if obs.where else ""), started_at=at,
                              gpus=obs.gpus or job.planned_gpus, devices_json="[]", run_handle=json.dumps(obs.handle))
        log.info("job %s RUNNING %s", job.id, obs.where)

    def finish(self, job: Job, now: datetime, raw: Any, said: tuple[JobState, str] | None = None) -> None:
        """End a run from its result (``raw``, untrusted). ``said``: the executor stopped the run itself (TIMEOUT,
        DEADLINE, NODE_FAIL, a requeue of its own): its state and reason, unless all steps ran."""
        assert job.id is not None
        if job.state != JobState.RUNNING or job.started_at is None:
            return
        spec = spec_of(job)
        result: RunResult = parse_result(raw, spec.steps)
        for why in result.ignored:
            log.warning("job %s: ignored from its run: %s", job.id, why)
        duration_s = result.duration_s
        # Times are on the daemon's clock, which may run faster than the wall (the demo).
        finished = job.started_at + timedelta(seconds=duration_s * self.clock.speed)
        exit_code, metrics = result.exit_code, result.metrics
        # A workload that reports all its steps done, unpreempted, has finished, even if the checkpoint request
        # (a segment's end, a preemption) reached it during its exit.
        all_done = bool(spec.steps and metrics.steps == spec.steps and metrics.preempted is False)
        if job.cancel_requested:
            state, reason = JobState.CANCELLED, "cancelled by user"
        elif job.preempt_requested and all_done:
            state, reason = JobState.COMPLETED, f"all {spec.steps} steps done (exit code {exit_code} as it stopped)"
        elif job.preempt_requested and not (exit_code == 0 and metrics.preempted is False):
            # A workload that reports it finished all its steps completed; anything else goes back to the queue.
            state = JobState.PREEMPTED
            why = job.preempt_reason or "requeued"
            reason = (f"{why}: checkpointed at step {metrics.steps}" if metrics.preempted and metrics.steps is not None
                      else f"{why} (exit code {exit_code})")
        elif result.timed_out:
            state, reason = JobState.TIMEOUT, "reached its time_limit"
        elif exit_code == 0:
            state, reason = JobState.COMPLETED, "exit code 0"
        else:
            state = JobState.FAILED
            reason = result.error or (f"killed by {result.signal}" if result.signal else f"exit code {exit_code}")
        # The executor's word wins unless the run really finished: a workload that checkpointed on Slurm's TERM
        # (a node failure) and exited 0 was stopped, and Slurm runs it again
        # (the user's cancel stays the user's: Slurm reports the scancel it caused as its own CANCELLED).
        if said is not None and not job.cancel_requested and not (
                all_done or (exit_code == 0 and metrics.preempted is False)):
            state, reason = said
        if result.ignored:
            reason += f" ({len(result.ignored)} invalid value(s) in its output ignored: {result.ignored[0]})"
        energy_j = result.energy_j
        cost_eur = co2_g = None
        try:
            forecast = self.provider.forecast(job.started_at, finished + timedelta(hours=1))
            cost_eur, co2_g = run_cost(energy_j, job.started_at, finished, forecast)
        except GschedError as exc:
            log.warning("job %s: no signals to price its energy: %s", job.id, exc)
        plan = json.loads(job.plan_json) if job.plan_json else {}
        measurement = Measurement(job_id=job.id, started_at=job.started_at, finished_at=finished,
                                  duration_s=duration_s, energy_j=energy_j, energy_source=result.energy_source,
                                  cost_eur=cost_eur, co2_g=co2_g, metrics_json=json.dumps(metrics.data),
                                  gpus=job.gpus, mode_json=json.dumps(plan["mode"]) if "mode" in plan else None,
                                  steps=metrics.steps)
        try:
            self.profiles.learn(job, spec, metrics.steps_per_s, duration_s, energy_j, measurement.energy_source,
                                finished)
        except Exception:  # learning is optional; the run's record is not
            log.exception("job %s: profile not recorded", job.id)
        try:
            self.store.finish(job.id, state, at=finished, reason=reason, measurement=measurement,
                              **self._ended(job, state, finished, exit_code))
        except Conflict:
            return  # another thread ended it first
        log.info("job %s %s: %s, %.1f J (%s)", job.id, state.value, reason, energy_j, measurement.energy_source)

    def _ended(self, job: Job, state: JobState, at: datetime, exit_code: int | None) -> dict[str, Any]:
        if state == JobState.PREEMPTED:
            # A paused job keeps its plan, and held work its handle (Slurm runs the same job again): the replan
            # that places the rest starts from them.
            return {"preempt_requested": False, "preempt_reason": None, **CLEARED_RUN, "plan_json": job.plan_json,
                    "run_handle": job.run_handle if self.requeue_keeps_handle else None}
        return {"finished_at": at, "exit_code": exit_code}

    def end_lost(self, job: Job, now: datetime, reason: str, state: JobState | None = None) -> None:
        assert job.id is not None
        state = state or (JobState.CANCELLED if job.cancel_requested else JobState.FAILED)
        try:
            self.store.finish(job.id, state, at=now, reason=reason, measurement=None, finished_at=now)
        except Conflict:
            return
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def end_broken(self, job: Job, now: datetime, exc: Exception) -> None:
        """A run whose record cannot be processed ends FAILED with the reason, instead of failing every tick."""
        why = f"gsched could not record this run: {type(exc).__name__}: {str(exc)[:200]}"
        if job.state == JobState.RUNNING:
            self.end_lost(job, now, why)
        elif job.state in QUEUED and job.id is not None:
            self.store.transition(job.id, JobState.FAILED, at=now, reason=why, expect=QUEUED, finished_at=now)

    def requeued(self, job: Job, now: datetime, reason: str) -> None:
        """Back in the executor's queue with no result from its run."""
        assert job.id is not None
        self.store.transition(job.id, JobState.PREEMPTED, at=now, expect=[JobState.RUNNING], reason=reason,
                              preempt_requested=False, preempt_reason=None,
                              **{**CLEARED_RUN, "plan_json": job.plan_json, "run_handle": job.run_handle})

    def dropped(self, job: Job, now: datetime, reason: str, state: JobState) -> None:
        """Held work the executor ended before it ran."""
        assert job.id is not None
        self.store.transition(job.id, state, at=now, reason=reason, expect=QUEUED, finished_at=now)
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def never_started(self, job: Job, now: datetime, reason: str) -> None:
        assert job.id is not None
        if job.state == JobState.RUNNING:
            self.store.transition(job.id, JobState.PENDING, at=now, expect=[JobState.RUNNING], reason=reason,
                                  **CLEARED_RUN)
        else:
            self.store.set_handle(job.id, None)

