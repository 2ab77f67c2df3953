"""The daemon's lifecycle: start, reconcile after a restart, tick (reap, plan, dispatch), stop.

Job state lives only in the database. Each tick reads it, acts, and writes the outcome, so a
daemon killed at any point restarts into a consistent picture: runners it started carry on
without it and are re-adopted by pid + kernel start time, or ended with a stated reason.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import pwd
import secrets
import shutil
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.config import Config, Paths
from scheduler.devices import Device
from scheduler.errors import Conflict, GschedError, InputError, StoreError
from scheduler.executor.launch import Launcher
from scheduler.executor.power import PowerLimiter
from scheduler.executor.procs import RunGroup
from scheduler.executor.procs import alive as runner_alive
from scheduler.executor.runner import EXIT_NO_RESULT
from scheduler.executor.slurm import ENDED as SLURM_ENDED
from scheduler.executor.slurm import RUNNING as SLURM_RUNNING
from scheduler.executor.slurm import Slurm, SlurmJob, SlurmRuns, foreign_gpus, sbatch_argv
from scheduler.executor.untrusted import RunResult, parse_metrics, parse_result
from scheduler.faults import crash_point
from scheduler.forecasts.base import Provider
from scheduler.jobfile import JobSpec, calibration_job, parse_job, pruning_label
from scheduler.models import TERMINAL, Job, JobState, Measurement, Profile
from scheduler.planner.cost import run_cost
from scheduler.planner.estimate import JobModes, job_modes
from scheduler.planner.options import Costing
from scheduler.planner.problem import PJob, Problem
from scheduler.planner.solve import solve
from scheduler.store import Store
from scheduler.timeutil import floor_to, parse_rfc3339, rfc3339
from scheduler.userpath import acting_ids, owner_dir

log = logging.getLogger("gsched.daemon")
QUEUED = (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED)
SUBMIT_RETRY_S = 30.0  # a job sbatch refused (no account, a partition limit) is offered to Slurm again after this


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


class Daemon:
    def __init__(self, config: Config, paths: Paths, store: Store, clock: Clock, devices: list[Device],
                 provider: Provider, launcher: Launcher, steps_per_s: dict[str, float],
                 power: PowerLimiter | None = None, slurm: tuple[Slurm, SlurmRuns] | None = None) -> None:
        self.config, self.paths, self.store, self.clock = config, paths, store, clock
        # executor.kind = "slurm": Slurm runs the jobs; self.devices stand for the partition's GPUs
        self.slurm, self.slurm_runs = slurm if slurm is not None else (None, None)
        self.slurm_error: str | None = None
        self._slurm_jobs: list[SlurmJob] = []  # this tick's squeue
        self._slurm_gpus = len(devices)  # the partition's GPUs that can take jobs, from the last sinfo
        self._slurm_foreign: tuple[Any, ...] = ()
        self._requeued_at: dict[int, float] = {}  # job id -> time.monotonic() of a requeue gsched asked for
        self._submit_retry_at: dict[int, float] = {}  # job id -> time.monotonic() before which no new sbatch
        self.devices, self.provider, self.launcher = devices, provider, launcher
        self.steps_per_s = steps_per_s
        self.power = power  # set only for a root daemon on GPUs with devices.power_limits = "auto"
        self.uid = os.geteuid()
        self._children: dict[int, Any] = {}  # job id -> Popen of runners this process started
        self._runner_exits: dict[str, int] = {}  # run token -> exit code of such a runner, until its run is ended
        self._tick_lock = threading.Lock()
        self._again = threading.Event()
        self._dirty = threading.Event()  # something changed that the plan must follow
        self._stopping = threading.Event()
        self._planned_grid: datetime | None = None
        self._idle_since: float | None = None  # time.monotonic() when the last job left the devices
        self._calibrated: set[tuple[str, int, str, str]] = set()  # modes measured while idle in this run
        self._calibration_scan = True  # a job ended since the last look for unmeasured modes
        self._scheduler: BackgroundScheduler | None = None
        self.forecast_error: str | None = None
        self.last_plan: dict[str, Any] = {}  # the last replan's solve_s, jobs, gap_to_bound (for /metrics)
        self.replans = 0
        # Runs that ended but left processes SIGKILL has not removed yet: their devices stay busy.
        self._lingering: dict[int, tuple[RunGroup, set[str]]] = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)  # in-memory job store: ticks only
        self._scheduler.add_job(self.tick, "interval", seconds=self.config.daemon.tick_s, id="tick",
                                max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
        refresh = getattr(self.provider, "refresh", None)
        if refresh is not None:  # live providers: fetch now, then every forecast.refresh_minutes
            self._scheduler.add_job(self._refresh_forecast, "interval", id="forecast", max_instances=1,
                                    coalesce=True, seconds=self.config.forecast.refresh_minutes * 60,
                                    next_run_time=datetime.now(timezone.utc))
        self._scheduler.start()

    def _refresh_forecast(self) -> None:
        try:
            if self.provider.refresh():  # type: ignore[attr-defined]
                self.wake()  # new signals: replan
        except Exception:  # a provider must never take the daemon down
            log.exception("forecast refresh failed")

    def stop(self) -> None:
        """Stop ticking. Running jobs are left alone: their runners outlive us and are re-adopted; the power
        limits set for them are restored."""
        self._stopping.set()  # a tick in flight finishes its pass and does not start another
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        for job in self.store.jobs([JobState.RUNNING]):
            self._restore_power(job)

    def _restore_power(self, job: Job) -> None:
        if not job.power_restore_json or self.power is None or job.id is None:
            return
        try:
            self.power.restore({k: int(v) for k, v in json.loads(job.power_restore_json).items()})
            self.store.update(job.id, power_restore_json=None)
        except GschedError as exc:
            log.error("job %s: %s", job.id, exc)

    def wake(self) -> None:
        """Replan and tick soon: after a submit, a cancel or a job's end."""
        self._dirty.set()
        if self._tick_lock.locked():
            self._again.set()
        elif self._scheduler is not None:
            try:
                self._scheduler.modify_job("tick", next_run_time=datetime.now(timezone.utc))
            except Exception:  # the scheduler is shutting down
                pass

    def reconcile(self) -> None:
        """After a (re)start: finish runs whose result is in, re-adopt live runners, end the lost ones."""
        now = self.clock.now()
        for job in self.store.jobs([JobState.RUNNING]):
            assert job.id is not None
            try:
                self._reconcile_one(job, now)
            except Exception:  # one bad record must not keep the daemon from starting
                log.exception("job %s: reconcile failed; it is retried at every tick", job.id)

    def _reconcile_one(self, job: Job, now: datetime) -> None:
        assert job.id is not None
        if job.runner_pid is None and job.run_token:
            # The daemon died between recording the start and recording the runner's pid: the claim file
            # says whether the runner took the run; if it did not, take it back so it never runs.
            claimed = self.launcher.read_claim(job.id, job.run_token)
            if claimed is None and not self.launcher.give_up(job.id, job.run_token):
                claimed = self.launcher.read_claim(job.id, job.run_token)  # the runner was first after all
            if claimed is None or claimed.get("by") == "daemon":  # taken back, now or by an earlier restart
                self.launcher.group(job.id, job.run_token).remove()
                self.store.transition(job.id, JobState.PENDING, at=now, expect=[JobState.RUNNING],
                                      reason="requeued: the daemon stopped while starting it, before its runner began",
                                      **_CLEARED_RUN)
                self._dirty.set()
                return
            if claimed.get("by") == "runner" and isinstance(claimed.get("pid"), int):
                job = self.store.update(job.id, runner_pid=claimed["pid"], runner_start_ticks=claimed.get("start_ticks"))
        raw = self.launcher.read_result(job.id)
        if raw is not None:
            self._finish(job, now, raw)
        elif runner_alive(job.runner_pid, job.runner_start_ticks):
            log.info("job %s: re-adopted runner pid %s after daemon restart", job.id, job.runner_pid)
            self.store.note(job.id, at=now, reason=f"re-adopted runner pid {job.runner_pid} after daemon restart")
        else:
            self._end_lost(job, now, "runner lost while the daemon was down (no result recorded)")

    # --- the tick -----------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._tick_lock:
            while True:
                self._again.clear()
                try:
                    now = self.clock.now()
                    self.reap(now)
                    self.plan_and_dispatch(now)
                except Exception:  # a tick must never kill the daemon; the next one retries
                    log.exception("tick failed")
                if not self._again.is_set() or self._stopping.is_set():
                    break

    def reap(self, now: datetime) -> None:
        if self.slurm is not None:
            self._slurm_reap(now)
            return
        self._check_lingering()
        for job in self.store.jobs([JobState.RUNNING]):
            assert job.id is not None
            try:
                self._reap_one(job, now)
            except StoreError as exc:  # the database cannot take the record now (disk full): the next tick retries
                log.error("job %s: cannot record its run yet: %s", job.id, exc)
            except Exception as exc:  # one job's bad record must never stop the others' reaping
                log.exception("job %s: reaping failed", job.id)
                self._end_broken(job, now, exc)

    def _reap_one(self, job: Job, now: datetime) -> None:
        assert job.id is not None
        child = self._children.get(job.id)
        if child is not None and child.poll() is not None:
            self._children.pop(job.id)
            self._runner_exits[job.run_token or ""] = child.returncode
        raw = self.launcher.read_result(job.id)
        if raw is not None:
            self._finish(job, now, raw)
        elif job.runner_pid is None:
            return  # being started by this daemon right now
        elif job.run_token in self._runner_exits:
            code = self._runner_exits[job.run_token]
            if code == EXIT_NO_RESULT:
                why = f"its runner could not write the result: the disk holding {self.paths.home} is full or unwritable"
            else:
                why = f"runner exited with {code} without a result" + self._disk_hint()
            self._end_lost(job, now, why)
        elif not runner_alive(job.runner_pid, job.runner_start_ticks):
            self._end_lost(job, now, "runner exited without a result" + self._disk_hint())

    def _disk_hint(self) -> str:
        try:
            free = shutil.disk_usage(self.paths.home).free
        except OSError:
            return " (see the job's log)"
        if free < 1024 * 1024:
            return f": the disk holding {self.paths.home} is full ({free // 1024} KiB free), so it could not write one"
        return " (see the job's log)"

    def _end_broken(self, job: Job, now: datetime, exc: Exception) -> None:
        """A run whose record cannot be processed ends FAILED with the reason, instead of failing every tick."""
        assert job.id is not None
        if self.slurm is not None and job.slurm_job_id is not None:
            try:
                self.slurm.cancel(job.slurm_job_id)  # gsched no longer follows it: it must not run on unseen
            except GschedError as cancel_exc:
                log.error("job %s: %s", job.id, cancel_exc)
        try:
            self._end_lost(job, now, f"gsched could not record this run: {type(exc).__name__}: {str(exc)[:200]}")
        except Exception:
            log.exception("job %s: cannot end it either; retrying at the next tick", job.id)

    def _finish(self, job: Job, now: datetime, raw: Any, slurm_said: tuple[JobState, str] | None = None) -> None:
        """End a run from its result file's contents (``raw``, untrusted). ``slurm_said``: Slurm stopped the run
        itself (TIMEOUT, DEADLINE, NODE_FAIL, a requeue of its own): its state and reason, unless all steps ran."""
        assert job.id is not None and job.started_at is not None
        spec = self.spec_of(job)
        result: RunResult = parse_result(raw, spec.steps)
        for why in result.ignored:
            log.warning("job %s: ignored from its run: %s", job.id, why)
        duration_s = result.duration_s
        # Times are on the daemon's clock, which may run faster than the wall (the demo).
        finished = job.started_at + timedelta(seconds=duration_s * self.clock.speed)
        exit_code = result.exit_code
        metrics = result.metrics
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
        if slurm_said is not None and state != JobState.COMPLETED:
            state, reason = slurm_said
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
        self._reclaim(job)
        try:
            self._learn(job, spec, metrics.steps_per_s, duration_s, energy_j, measurement.energy_source, finished)
        except Exception:  # learning is optional; the run's record is not
            log.exception("job %s: profile not recorded", job.id)
        # A paused job keeps its plan: the replan that places the rest starts from it (hysteresis).
        ended = {"finished_at": finished, "exit_code": exit_code} if state != JobState.PREEMPTED else {
            "preempt_requested": False, "preempt_reason": None, **_CLEARED_RUN, "plan_json": job.plan_json}
        try:
            self.store.finish(job.id, state, at=finished, reason=reason, measurement=measurement, **ended)
        except Conflict:
            return  # another thread ended it first
        self._runner_exits.pop(job.run_token or "", None)
        self._dirty.set()  # its devices are free: replan
        self._calibration_scan = True
        log.info("job %s %s: %s, %.1f J (%s)", job.id, state.value, reason, energy_j, measurement.energy_source)

    def _learn(self, job: Job, spec: JobSpec, steps_per_s: float | None, duration_s: float, energy_j: float,
               source: str, at: datetime) -> None:
        """A workload's run measured its mode: keep it as its owner's profile for planning their next runs.
        Profiles are per owner, so no user's measurements change another user's plans; and a measurement far
        outside the default model (plausible_profile) is not kept at all, so no run makes its owner's own jobs
        unplannable either."""
        if not spec.profile_key or not steps_per_s or duration_s < 1 or not job.plan_json or not job.gpus:
            return
        mode = json.loads(job.plan_json)["mode"]
        kind = self.devices[0].kind
        profile = Profile(
            key=spec.profile_key, owner_uid=job.owner_uid, device_kind=kind, gpus=job.gpus,
            precision=mode["precision"], pruning=pruning_label(mode.get("pruning") or 0.0),
            compile=bool(mode.get("compile")), power_limit_w=int(mode.get("power_limit_w") or 0),
            steps_per_s=steps_per_s, watts=energy_j / duration_s, energy_source=source, measured_at=at)
        default_rate = self.steps_per_s.get(spec.workload or "")
        why = plausible_profile(profile, default_rate, self._nominal_w())
        if why:
            log.warning("job %s: profile not recorded: %s", job.id, why)
            self.store.note(job.id or 0, at=at, reason=f"profile not recorded: {why}")
            return
        self.store.record_profile(profile)

    def _nominal_w(self) -> float:
        kind = self.devices[0].kind if self.devices else "cpu"
        return self.config.planner.gpu_power_w if kind == "gpu" else self.config.planner.cpu_device_power_w

    def _reclaim(self, job: Job) -> None:
        """A run ended: restore its power caps and kill whatever of it is left. Its devices are reused only once
        nothing of it lives."""
        assert job.id is not None
        self._restore_power(job)
        if not job.run_token:
            return
        group = self.launcher.group(job.id, job.run_token)
        if group.kill(timeout_s=2.0):
            group.remove()
        else:
            self._lingering[job.id] = (group, set(json.loads(job.devices_json or "[]")))

    def _check_lingering(self) -> None:
        for job_id, (group, _devices) in list(self._lingering.items()):
            if group.kill(timeout_s=0.2):
                group.remove()
                del self._lingering[job_id]
                self._dirty.set()

    def _end_lost(self, job: Job, now: datetime, reason: str, state: JobState | None = None) -> None:
        assert job.id is not None
        self._reclaim(job)
        state = state or (JobState.CANCELLED if job.cancel_requested else JobState.FAILED)
        try:
            self.store.finish(job.id, state, at=now, reason=reason, measurement=None, finished_at=now)
        except Conflict:
            return
        self._runner_exits.pop(job.run_token or "", None)
        self._dirty.set()
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def log_path(self, job_id: int) -> Path:
        return self.slurm_runs.log_path(job_id) if self.slurm_runs is not None else self.launcher.log_path(job_id)

    def spec_of(self, job: Job) -> JobSpec:
        return JobSpec.from_json(json.loads(job.spec_json))

    def plan_and_dispatch(self, now: datetime) -> None:
        slot = timedelta(minutes=self.config.planner.slot_minutes)
        grid0 = floor_to(now, slot)
        if self.config.planner.elastic:
            self._follow_segments(now)
        queued = self.store.jobs(QUEUED)
        if queued and (self._dirty.is_set() or grid0 != self._planned_grid):
            self._dirty.clear()
            self._planned_grid = grid0
            self._replan(now, grid0, queued)
            queued = self.store.jobs(QUEUED)
            if self.config.planner.elastic:
                self._preempt_for_priority(now, queued)
        if self.slurm is not None:
            self._slurm_dispatch(now, queued)
        else:
            self._dispatch_due(now, queued)
        if self.config.daemon.calibrate_when_idle:
            self._calibrate_when_idle(now, busy=bool(queued) or bool(self.store.jobs([JobState.RUNNING])))

    def _calibrate_when_idle(self, now: datetime, busy: bool) -> None:
        """Once every device has idled for a while, measure one mode that recent workload jobs could have run in
        but nobody has measured yet: a short urgent run, owned by that job's owner, seen in `gsched status`."""
        if busy:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        idle_s = time.monotonic() - self._idle_since
        if not self._calibration_scan or idle_s < self.config.daemon.calibrate_after_idle_s:
            return
        self._calibration_scan = False  # the next job to end asks for another look
        seen: set[str] = set()
        for job in reversed(self.store.jobs([JobState.COMPLETED], newest=20)):
            spec = self.spec_of(job)
            # Commands are calibrated on request only (gsched profile): an idle daemon runs only gsched's own code.
            if (spec.workload is None or spec.profile_key is None or spec.profile_key in seen
                    or job.name.startswith("calibrate-")):
                continue
            seen.add(spec.profile_key)
            for mode in self.modes_of(spec, job.owner_uid).described:
                choice = (spec.profile_key, mode["gpus"], mode["precision"], pruning_label(mode["pruning"]))
                if mode["source"] == "profile" or mode["power_limit_w"] is not None or choice in self._calibrated:
                    continue
                self._calibrated.add(choice)  # once per daemon run, whether or not it measures
                steps = max(10, math.ceil(self.steps_per_s.get(spec.workload or "", 1.0)
                                          * mode["gpus"] * self.config.daemon.calibration_s))
                label, text = calibration_job(spec, "calibrate", mode["gpus"], mode["precision"], mode["pruning"],
                                              steps)
                uid, gid = acting_ids(job.owner_uid, job.owner_uid)
                derived = parse_job(text, source=f"calibration of job {job.id} ({label})",
                                    base_dir=Path(spec.workdir), now=now,
                                    resolve_dir=lambda p: owner_dir(uid, gid, p))
                added = self.store.add_job(derived, owner_uid=job.owner_uid, owner_name=job.owner_name, urgent=True,
                                           now=now)
                assert added.id is not None
                self.store.note(added.id, at=now, reason=f"calibrating {label} of job {job.id}'s workload: "
                                                         "devices idle and no profile for this mode")
                log.info("job %s: calibrating %s of job %s's workload while idle", added.id, label, job.id)
                self._idle_since = None
                self._dirty.set()
                return

    def modes_of(self, spec: JobSpec, owner_uid: int, profiles: dict[tuple[str, int], list[Profile]] | None = None
                 ) -> JobModes:
        kind = self.devices[0].kind if self.devices else "cpu"
        found: list[Profile] = []
        if spec.profile_key:
            cache_key = (spec.profile_key, owner_uid)
            if profiles is not None and cache_key in profiles:
                found = profiles[cache_key]
            else:
                default_rate = self.steps_per_s.get(spec.workload or "")
                found = [p for p in self.store.profiles(spec.profile_key, kind, owner_uid)
                         if plausible_profile(p, default_rate, self._nominal_w()) is None]
                if profiles is not None:
                    profiles[cache_key] = found
        return job_modes(spec, len(self.devices), kind, self._nominal_w(),
                         self.steps_per_s.get(spec.workload) if spec.workload else None, self.clock.speed, found)

    def _replan(self, now: datetime, grid0: datetime, queued: list[Job]) -> None:
        settings = self.config.planner
        slot = timedelta(minutes=settings.slot_minutes)
        horizon = settings.horizon_hours * 60 // settings.slot_minutes
        try:
            forecast = self.provider.forecast(grid0, grid0 + horizon * slot)
            price, carbon = forecast.on_grid(grid0, int(slot.total_seconds()), horizon)
            self.forecast_error = None
        except GschedError as exc:
            # Without signals every slot costs the same: jobs still run, as early as devices allow.
            if self.forecast_error != str(exc):
                log.error("forecast unavailable, planning without prices: %s", exc)
            self.forecast_error = str(exc)
            price, carbon = [1.0] * horizon, [1.0] * horizon
        capacity = [len(self.devices) - sum(len(d) for _g, d in self._lingering.values())] * horizon
        if self.slurm is not None:  # what Slurm has free: nodes up, less the GPUs of jobs gsched did not submit
            try:
                self._slurm_gpus = self.slurm.gpus()
            except GschedError as exc:  # plan on the last count; the tick's squeue says whether Slurm is down
                log.warning("slurm: %s; planning on the last GPU count (%d)", exc, self._slurm_gpus)
            held = foreign_gpus(self._slurm_jobs, self.clock.to_wall(grid0), slot / self.clock.speed, horizon)
            capacity = [min(len(self.devices), self._slurm_gpus) - h for h in held]
        for job in self.store.jobs([JobState.RUNNING]):
            end = _run_end(job)
            end = end if end and end > now else now
            for k in range(min(horizon, max(1, math.ceil((end - grid0) / slot)))):
                capacity[k] -= job.gpus or 0
        capacity = [max(0, c) for c in capacity]
        pjobs, modes_of, previous = [], {}, {}
        profiles: dict[tuple[str, int], list[Profile]] = {}
        planned_jobs: list[Job] = []  # the queued jobs the planner gets, in the order of pjobs
        for job in queued:
            spec = self.spec_of(job)
            try:
                jm = self.modes_of(spec, job.owner_uid, profiles)
            except GschedError as exc:  # e.g. a command's profile is gone: this job waits, saying why
                if job.plan_reason != str(exc):
                    self.store.update(job.id or 0, plan_reason=str(exc))
                continue
            planned_jobs.append(job)
            indices = [jm.requested] if job.urgent else list(range(len(jm.modes)))
            if job.slurm_mode_json:  # handed to Slurm: replans move its start, not its mode
                submitted = _mode_key(json.loads(job.slurm_mode_json))
                indices = [i for i, d in enumerate(jm.described) if _mode_key(d) == submitted] or indices
            modes = tuple(jm.modes[i] for i in indices)
            described = [jm.described[i] for i in indices]
            deadline_slot = max(0, min(horizon, math.floor((job.deadline - grid0) / slot)))
            if job.urgent:  # --now: as soon as devices allow; any wait shows as lateness, so none is chosen
                deadline_slot = min(deadline_slot, max(1, math.ceil(jm.work / modes[0].rate / (slot / timedelta(hours=1)))))
            work = jm.work * self.remaining_fraction(job)
            elastic = settings.elastic and spec.preemptible and not job.urgent
            overhead = spec.resume_overhead_minutes
            pjobs.append(PJob(str(job.id), 0, deadline_slot, work, modes, 0 if job.urgent else jm.requested,
                              preemptible=elastic,
                              resume_overhead_minutes=(settings.resume_overhead_minutes if overhead is None else overhead)
                              if elastic else 0.0))
            modes_of[str(job.id)] = described
            if job.plan_json:
                kept = _previous(json.loads(job.plan_json), described, grid0, slot)
                if kept is not None:
                    previous[str(job.id)] = kept
        problem = Problem(grid0, settings.slot_minutes, len(self.devices), settings.carbon_price_eur_per_t,
                          tuple(price), tuple(carbon), tuple(pjobs), settings.objective, tuple(capacity))
        solution = solve(problem, settings.time_limit_s, previous, settings.hysteresis_pct / 100)
        log.info("planned %d job(s) in %.2f s (%s)", len(pjobs), solution.stats["solve_s"], solution.stats["method"])
        self.replans += 1
        self.last_plan = {"solve_s": solution.stats["solve_s"], "jobs": len(pjobs),
                          "gap_to_bound": solution.stats.get("gap_to_bound")}
        costing = Costing(problem)
        updates: dict[int, dict[str, Any]] = {}
        for j, pjob in enumerate(pjobs):
            option = solution.options.get(pjob.id)
            if option is None:
                updates[int(pjob.id)] = {"state": JobState.PENDING, "planned_start": None, "planned_end": None,
                                         "planned_gpus": None, "plan_json": None,
                                         "plan_reason": solution.unplanned.get(pjob.id, "not planned")}
                continue
            mode = pjob.modes[option.mode]
            seg_modes = [option.mode_at(i) for i in range(len(option.segments))]
            start = max(now, grid0 + option.start * slot)
            end = start + timedelta(hours=pjob.work / mode.rate)
            plan: dict[str, Any] = {
                "mode": modes_of[pjob.id][option.mode], "label": mode.label,
                "segments": [[rfc3339(grid0 + a * slot), rfc3339(grid0 + b * slot)] for a, b in option.segments],
                "segment_modes": [modes_of[pjob.id][m] for m in seg_modes],
                "segment_labels": [pjob.modes[m].label for m in seg_modes]}
            plan["work_s"] = pjob.work / mode.rate * 3600
            if pjob.id in solution.late:
                plan["late"] = True
            if len(option.segments) > 1:
                a0, b0 = option.segments[0]
                tail_h = max(0.0, pjob.work - mode.rate * (b0 - a0) * problem.slot_h) / mode.rate
                if tail_h * 60 <= settings.elastic_extend_minutes:  # a pause would cost more than it saves
                    plan["segments"], plan["segment_modes"], plan["segment_labels"] = (
                        plan["segments"][:1], plan["segment_modes"][:1], plan["segment_labels"][:1])
                    plan["segments"][0][1] = rfc3339(end)
                else:
                    plan["pause_at"] = rfc3339(grid0 + b0 * slot)
                    end = grid0 + option.end * slot
            updates[int(pjob.id)] = {
                "state": JobState.PLANNED, "planned_start": start, "planned_end": end, "planned_gpus": mode.gpus,
                "plan_json": json.dumps(plan),
                "plan_reason": solution.late.get(pjob.id) or self._explain(costing, j, option, start, end,
                                                                           planned_jobs[j].urgent),
            }
        self.store.save_plans(updates, at=now)

    def _explain(self, costing: Costing, j: int, option: Any, start: datetime, end: datetime, urgent: bool) -> str:
        job = costing.problem.jobs[j]
        label = job.modes[option.mode].label
        unit = "less CO2" if costing.problem.objective == "carbon" else "cheaper"
        if option.start == 0:
            return f"runs now (--now) on {label}" if urgent else f"runs now on {label}: no cheaper window before its deadline"
        starts, costs, _n = costing.rigid_costs(job, option.mode, costing.horizon)
        now_cost = float(costs[0]) if len(starts) and starts[0] == 0 else None
        window = f"{start:%H:%M}-{end:%H:%M} UTC"
        if now_cost and now_cost > 0 and option.cost < now_cost:
            return f"waits for {window} on {label}, {100 * (now_cost - option.cost) / now_cost:.0f}% {unit} than now"
        return f"waits for {window} on {label}: devices are busy until then"

    def _checkpoint(self, job: Job, reason: str, now: datetime) -> None:
        """Ask a running preemptible job to checkpoint and leave its devices (the requeue path), saying why."""
        assert job.id is not None
        self.store.update(job.id, preempt_requested=True, preempt_reason=reason)
        self.store.note(job.id, at=now, reason=f"{reason}: checkpointing")
        log.info("job %s: %s", job.id, reason)
        self._stop_run(job, requeue=True)

    def _stop_run(self, job: Job, requeue: bool) -> None:
        """Ask a running job's run to stop: SIGTERM to the local runner (it passes it on and writes the result);
        under Slurm, scancel, or scontrol requeue for a checkpoint (Slurm runs the same job again later)."""
        assert job.id is not None
        if self.slurm is not None and job.slurm_job_id is not None:
            if requeue:
                self._requeued_at[job.id] = time.monotonic()
                self.slurm.requeue(job.slurm_job_id)
            else:
                self.slurm.cancel(job.slurm_job_id)
            return
        if job.runner_pid is None or not self.launcher.signal(job.runner_pid, job.runner_start_ticks or -1,
                                                              signal.SIGTERM):
            self.wake()

    def _follow_segments(self, now: datetime) -> None:
        """A running elastic job whose planned segment has ended is checkpointed; the replan after it places the
        rest of its work (its next segments, kept from its plan unless a cheaper one is worth the move)."""
        for job in self.store.jobs([JobState.RUNNING]):
            if job.preempt_requested or job.cancel_requested or not job.plan_json or not _has_runner(job):
                continue
            try:
                plan = json.loads(job.plan_json)
                pause_at = plan.get("pause_at")
                if not pause_at or parse_rfc3339(pause_at) > now:
                    continue
                nxt, label = plan["segments"][1][0], plan["segment_labels"][1]
                self._checkpoint(job, f"paused: its planned segment ended; next one from {nxt} on {label}", now)
            except Exception:  # one job's odd plan must not stop the others from following theirs
                log.exception("job %s: cannot follow its segments", job.id)

    def _preempt_for_priority(self, now: datetime, queued: list[Job]) -> None:
        """An urgent (--now) job, or one planned past its deadline that could still meet it if it started now,
        takes the devices of running preemptible jobs when the free ones are too few: they checkpoint (paying
        their resume overhead) and are replanned. Victims: the most slack (latest deadline) first; nothing is
        preempted unless that frees enough."""
        running = self.store.jobs([JobState.RUNNING])
        victims = [j for j in running if not j.urgent and not j.preempt_requested and not j.cancel_requested
                   and _has_runner(j) and self.spec_of(j).preemptible]
        if not victims:
            return
        busy = {uuid for job in running for uuid in json.loads(job.devices_json or "[]")}
        busy.update(uuid for _group, devices in self._lingering.values() for uuid in devices)
        free = len(self.devices) - len(busy) + sum(j.gpus or 0 for j in running if j.preempt_requested)
        waiting = [j for j in queued if j.state in (JobState.PLANNED, JobState.PENDING)]
        for job in sorted(waiting, key=lambda j: (not j.urgent, j.deadline, j.id)):
            plan = json.loads(job.plan_json) if job.plan_json else None
            if plan is None or not (job.urgent or plan.get("late")):
                continue
            need = int(plan["mode"]["gpus"])
            if job.planned_start is not None and job.planned_start <= now and free >= need:
                free -= need
                continue
            if not job.urgent:
                jm = self.modes_of(self.spec_of(job), job.owner_uid)
                fastest_h = min(jm.work * self.remaining_fraction(job) / m.rate for m in jm.modes)
                if now + timedelta(hours=fastest_h) > job.deadline:
                    continue  # late even if it started now: preempting would not help it
            chosen: list[Job] = []
            for victim in sorted(victims, key=lambda v: (v.deadline, v.id), reverse=True):
                if free >= need:
                    break
                chosen.append(victim)
                free += victim.gpus or 0
            if free < need:
                free -= sum(v.gpus or 0 for v in chosen)
                continue
            free -= need
            why = "--now" if job.urgent else "it would miss its deadline otherwise"
            for victim in chosen:
                victims.remove(victim)
                self._checkpoint(victim, f"preempted by job {job.id} ({why})", now)
            assert job.id is not None
            self.store.note(job.id, at=now, reason="preempting job(s) " + ", ".join(str(v.id) for v in chosen)
                            + f" for their devices ({why})")

    def _dispatch_due(self, now: datetime, queued: list[Job]) -> None:
        running = self.store.jobs([JobState.RUNNING])
        busy = {uuid for job in running for uuid in json.loads(job.devices_json or "[]")}
        busy.update(uuid for _group, devices in self._lingering.values() for uuid in devices)
        in_use: dict[int, int] = {}
        for job in running:
            in_use[job.owner_uid] = in_use.get(job.owner_uid, 0) + (job.gpus or 0)
        cap = self.config.limits.max_gpus_per_user
        due = [j for j in queued if j.state == JobState.PLANNED and j.planned_start and j.planned_start <= now]
        for job in sorted(due, key=lambda j: (j.planned_start, j.id)):
            assert job.id is not None and job.plan_json is not None
            mode = json.loads(job.plan_json)["mode"]
            free = [d for d in self.devices if d.uuid not in busy]
            if len(free) < mode["gpus"]:
                continue
            if cap and job.owner_uid != 0 and in_use.get(job.owner_uid, 0) + mode["gpus"] > cap:
                reason = (f"waits: {job.owner_name} has {in_use.get(job.owner_uid, 0)} device(s) in use and "
                          f"limits.max_gpus_per_user is {cap}")
                if job.plan_reason != reason:
                    self.store.update(job.id, plan_reason=reason)
                continue
            chosen = free[: mode["gpus"]]
            busy.update(d.uuid for d in chosen)
            in_use[job.owner_uid] = in_use.get(job.owner_uid, 0) + len(chosen)
            try:
                self._dispatch(job.id, self.spec_of(job), chosen, now, mode)
            except Exception as exc:  # one job that cannot start must not keep the others from starting
                log.exception("job %s: cannot start", job.id)
                try:
                    self.store.transition(job.id, JobState.FAILED, at=now, reason=f"cannot start: {exc}",
                                          finished_at=now)
                except GschedError:
                    pass

    def _dispatch(self, job_id: int, spec: JobSpec, devices: list[Device], now: datetime, mode: dict[str, Any]
                  ) -> None:
        job = self.store.get(job_id)
        if job.state not in QUEUED:
            return
        uid, gid = acting_ids(job.owner_uid, job.owner_uid)
        cap_w = mode.get("power_limit_w")
        if cap_w and self.power is not None and devices[0].kind == "gpu":
            try:
                originals = self.power.apply([d.uuid for d in devices], float(cap_w))
                self.store.update(job_id, power_restore_json=json.dumps(originals))
            except GschedError as exc:
                log.warning("job %s: runs without its %s W cap: %s", job_id, cap_w, exc)
                self.store.note(job_id, at=now, reason=f"power cap not set: {exc}")
        # Exactly once: the start is recorded (with a fresh token) before the runner exists, and the runner
        # claims the token before it runs anything. A daemon killed in between finds the claim, or takes the
        # start back (Launcher.give_up), at its next reconcile.
        token = secrets.token_hex(8)
        names = ",".join(d.name for d in devices)
        try:
            runfile = self.launcher.prepare(job_id, spec, devices, uid, gid, mode, token)
        except OSError as exc:
            self.store.transition(job_id, JobState.FAILED, at=now, reason=f"cannot prepare the run: {exc}",
                                  finished_at=now)
            return
        self.store.transition(job_id, JobState.RUNNING, at=now, reason=f"started on {names}", expect=QUEUED,
                              started_at=now, gpus=len(devices), devices_json=json.dumps([d.uuid for d in devices]),
                              run_token=token, runner_pid=None, runner_start_ticks=None)
        crash_point("dispatch.after_intent")
        try:
            launched = self.launcher.start(job_id, runfile, token)
        except OSError as exc:
            self.launcher.give_up(job_id, token)
            self.store.finish(job_id, JobState.FAILED, at=now, reason=f"cannot start runner: {exc}",
                              measurement=None, finished_at=now)
            return
        crash_point("dispatch.after_spawn")
        self._children[job_id] = launched.process
        self.store.update(job_id, runner_pid=launched.process.pid, runner_start_ticks=launched.start_ticks)
        threading.Thread(target=self._watch, args=(launched.process,), daemon=True).start()
        log.info("job %s RUNNING on %s (runner pid %s)", job_id, names, launched.process.pid)

    def _watch(self, process: Any) -> None:
        process.wait()
        self.wake()

    # --- Slurm (executor.kind = "slurm") --------------------------------------------------------------
    # Each planned job is one Slurm job, submitted as its owner with the planned start as --begin; replans move
    # its start (scontrol update). Slurm's view, read once a tick (squeue), moves the job through gsched's states;
    # its run's result comes back through executor.shared_dir. Slurm down: the jobs stay as they are until it
    # answers again.

    def _slurm_reap(self, now: datetime) -> None:
        assert self.slurm is not None
        try:
            jobs = self.slurm.jobs()
        except GschedError as exc:
            if self.slurm_error != str(exc):
                log.error("slurm: %s; following the jobs again once it answers", exc)
            self.slurm_error = str(exc)
            return
        if self.slurm_error is not None:
            log.info("slurm answers again")
        self.slurm_error = None
        self._slurm_jobs = jobs
        foreign = tuple(sorted((j.job_id, j.gpus, j.end) for j in jobs
                               if j.gsched_id is None and j.state in SLURM_RUNNING and j.gpus))
        if foreign != self._slurm_foreign:  # someone else's jobs took or freed GPUs: replan around them
            self._slurm_foreign = foreign
            self._dirty.set()
        by_id = {j.job_id: j for j in jobs}
        by_name = {j.gsched_id: j for j in jobs if j.gsched_id is not None}
        for job in self.store.jobs([*QUEUED, JobState.RUNNING]):
            assert job.id is not None
            try:
                if job.slurm_token and job.slurm_job_id is None:
                    # The daemon stopped between recording the token and recording sbatch's answer. Submission
                    # runs in the tick, so none is in flight now: Slurm has the job under its name, or never got it.
                    found = by_name.get((job.id, job.slurm_token))
                    if found is None:
                        self.store.update(job.id, slurm_token=None, slurm_mode_json=None)
                        continue
                    job = self.store.update(job.id, slurm_job_id=found.job_id)
                    self.store.note(job.id, at=now, reason=f"re-adopted Slurm job {found.job_id} after a restart")
                if job.slurm_job_id is not None:
                    self._slurm_follow(job, by_id.get(job.slurm_job_id), now)
            except StoreError as exc:
                log.error("job %s: cannot record its Slurm state yet: %s", job.id, exc)
            except Exception as exc:  # one job's odd record or output must never stop the others
                log.exception("job %s: following its Slurm job failed", job.id)
                self._end_broken(job, now, exc)

    def _slurm_follow(self, job: Job, sj: SlurmJob | None, now: datetime) -> None:
        assert job.id is not None and self.slurm_runs is not None
        slurm_id = job.slurm_job_id
        if job.state != JobState.RUNNING:
            # Runs are numbered by SLURM_RESTART_COUNT; slurm_restarts is the last one gsched saw start. A
            # requeued job shows its old run (RUNNING, COMPLETING) until Slurm has requeued it: not a new run.
            seen = job.slurm_restarts
            if sj is not None and seen is not None and sj.restarts <= seen:
                if sj.state in SLURM_ENDED:  # ended instead of going back to the queue
                    self._end_queued(job, sj, now, _slurm_why(sj) + " instead of running again")
                return
            run = sj.restarts if sj is not None else (0 if seen is None else seen + 1)
            raw = self.slurm_runs.read_result(job.id, job.slurm_token or "", run)
            if raw is None and sj is not None and sj.state in SLURM_ENDED:
                self._end_queued(job, sj, now, _slurm_why(sj))
                return
            if raw is None and sj is None:
                self._end_queued(job, sj, now, f"Slurm no longer knows job {slurm_id}, and it left no result")
                return
            # COMPLETING is a run's end (a requeued one's too), never a start
            if raw is None and (sj is None or sj.state not in SLURM_RUNNING or sj.state == "COMPLETING"):
                return  # still pending in Slurm
            wall = sj.start if sj is not None and sj.start is not None else None
            at = min(now, self.clock.from_wall(wall)) if wall else now
            nodes = sj.nodes if sj is not None else ""
            job = self.store.transition(
                job.id, JobState.RUNNING, at=at, expect=QUEUED,
                reason=f"started by Slurm as job {slurm_id}" + (f" on {nodes}" if nodes else ""),
                started_at=at, gpus=(sj.gpus if sj is not None and sj.gpus else job.planned_gpus),
                devices_json="[]", slurm_restarts=run, slurm_nodes=nodes or None)
            log.info("job %s RUNNING as Slurm job %s on %s", job.id, slurm_id, nodes or "?")
            self._dirty.set()
        run = job.slurm_restarts or 0
        raw = self.slurm_runs.read_result(job.id, job.slurm_token or "", run)
        if raw is not None:
            said = None
            if isinstance(raw, dict) and raw.get("terminated") is True and not job.cancel_requested \
                    and not job.preempt_requested and sj is not None:
                # Stopped, and not by gsched: Slurm's time limit, deadline, a node failure or its own requeue.
                # Slurm may still be recording why; give it a moment to say.
                if sj.state not in SLURM_ENDED and sj.state in SLURM_RUNNING and sj.restarts <= run:
                    if time.monotonic() - self._requeued_at.setdefault(job.id, time.monotonic()) < 30:
                        return
                said = ((JobState.PREEMPTED, f"requeued by Slurm ({sj.reason or sj.state})")
                        if sj.restarts > run or sj.state not in SLURM_ENDED else (_slurm_end_state(sj), _slurm_why(sj)))
            self._requeued_at.pop(job.id, None)
            self._finish(job, now, raw, said)
            return
        if sj is None:
            self._end_lost(job, now, f"Slurm no longer knows job {slurm_id}, and its run left no result")
        elif sj.state in SLURM_ENDED:
            self._end_lost(job, now, _slurm_why(sj) + "; its run left no result",
                           None if job.cancel_requested else _slurm_end_state(sj))
        elif sj.state not in SLURM_RUNNING or sj.restarts > run:
            # Requeued (by gsched or by Slurm, after a node failure) and its run wrote nothing; the one gsched
            # asked for gets the kill grace to write its checkpoint's result first.
            asked = self._requeued_at.setdefault(job.id, time.monotonic()) if job.preempt_requested else None
            if asked is not None and time.monotonic() - asked < self.config.daemon.kill_grace_s + 60:
                return
            self._requeued_at.pop(job.id, None)
            self.store.transition(job.id, JobState.PREEMPTED, at=now, expect=[JobState.RUNNING],
                                  reason=f"requeued by Slurm ({sj.reason or sj.state}); its run left no result",
                                  preempt_requested=False, preempt_reason=None,
                                  **{**_CLEARED_RUN, "plan_json": job.plan_json})
            self._dirty.set()

    def _end_queued(self, job: Job, sj: SlurmJob | None, now: datetime, reason: str) -> None:
        """A job Slurm ended (or lost) before gsched saw it run: an admin's scancel, DEADLINE while pending."""
        assert job.id is not None
        state = JobState.CANCELLED if sj is not None and sj.state == "CANCELLED" else JobState.FAILED
        self.store.transition(job.id, state, at=now, reason=reason, expect=QUEUED, finished_at=now)
        self._dirty.set()
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def _slurm_dispatch(self, now: datetime, queued: list[Job]) -> None:
        """Hand newly planned jobs to Slurm; move the start of those it holds when their plan moved."""
        assert self.slurm is not None
        if self.slurm_error is not None:
            return
        by_id = {j.job_id: j for j in self._slurm_jobs}
        wall_now = self.clock.to_wall(now)
        near = timedelta(seconds=min(30.0, self.config.planner.slot_minutes * 30 / self.clock.speed))
        for job in queued:
            if job.state != JobState.PLANNED or job.planned_start is None or not job.plan_json:
                continue
            assert job.id is not None
            try:
                if job.slurm_job_id is None:
                    if time.monotonic() < self._submit_retry_at.get(job.id, 0.0):
                        continue  # Slurm refused it a moment ago: not again every tick
                    self._submit_retry_at.pop(job.id, None)
                    self._slurm_submit(job, now)
                    continue
                sj = by_id.get(job.slurm_job_id)
                if sj is None or sj.state in SLURM_RUNNING or sj.state in SLURM_ENDED:
                    continue
                target = max(self.clock.to_wall(job.planned_start), wall_now)
                current = max(sj.begin or wall_now, wall_now)
                if abs(target - current) > near:
                    self.slurm.move(sj.job_id, target)
                    self.store.note(job.id, at=now, reason=f"Slurm job {sj.job_id} moved to begin at "
                                                           f"{rfc3339(job.planned_start)}")
            except GschedError as exc:  # Slurm refused this one: say why on the job, go on with the others
                log.error("job %s: %s", job.id, exc)
                if job.slurm_job_id is None:
                    self._submit_retry_at[job.id] = time.monotonic() + SUBMIT_RETRY_S
                if job.plan_reason != f"Slurm: {exc}":
                    self.store.update(job.id, plan_reason=f"Slurm: {exc}")

    def _slurm_submit(self, job: Job, now: datetime) -> None:
        assert self.slurm is not None and self.slurm_runs is not None and job.id is not None
        assert job.planned_start is not None and job.plan_json is not None
        spec, plan = self.spec_of(job), json.loads(job.plan_json)
        mode = plan["mode"]
        try:
            owner = pwd.getpwuid(job.owner_uid).pw_name
        except KeyError:
            self.store.finish(job.id, JobState.FAILED, at=now, measurement=None, finished_at=now,
                              reason=f"cannot submit to Slurm: uid {job.owner_uid} has no user name here")
            return
        uid, gid = acting_ids(job.owner_uid, job.owner_uid)
        # Exactly once: the token is recorded before sbatch and names the Slurm job (see _slurm_reap).
        token = secrets.token_hex(8)
        job = self.store.update(job.id, slurm_token=token, slurm_mode_json=json.dumps(mode))
        assert job.id is not None
        crash_point("slurm.after_intent")
        settings = self.config.executor
        try:
            runfile = self.launcher.runfile(job.id, spec, [], uid, gid, mode, token, int(mode["gpus"]))
            script = self.slurm_runs.prepare(job.id, token, runfile, uid, gid)
            if spec.time_limit_s:  # the runner ends it at its limit; Slurm's is a backstop after that
                limit_s = spec.time_limit_s + self.config.daemon.kill_grace_s + 120
            else:
                limit_s = float(plan.get("work_s") or 3600) * (1 + settings.time_margin_pct / 100) + 600
            deadline = None if plan.get("late") else self.clock.to_wall(job.deadline)
            argv = sbatch_argv(job.id, token, owner, int(mode["gpus"]), self.clock.to_wall(job.planned_start),
                               timedelta(seconds=limit_s / self.clock.speed), deadline, mode, spec.preemptible,
                               settings.requeue_grace_s, settings.partition, settings.account, str(script),
                               str(self.slurm_runs.log_path(job.id)), str(self.slurm_runs.run_dir(job.id) / "work"))
            slurm_id = self.slurm.submit(argv)
        except (GschedError, OSError) as exc:
            self.store.update(job.id, slurm_token=None, slurm_mode_json=None)
            raise GschedError(f"cannot submit to Slurm: {exc}") from exc
        crash_point("slurm.after_submit")
        self.store.update(job.id, slurm_job_id=slurm_id)
        self.store.note(job.id, at=now, reason=f"submitted to Slurm as job {slurm_id} (partition "
                                               f"{settings.partition}, begins {rfc3339(job.planned_start)})")
        log.info("job %s: submitted as Slurm job %s, begins %s", job.id, slurm_id, rfc3339(job.planned_start))

    # --- requests ----------------------------------------------------------------------------------

    def cancel(self, job: Job) -> Job:
        assert job.id is not None
        now = self.clock.now()
        if job.state == JobState.RUNNING:
            job = self.store.update(job.id, cancel_requested=True)
            self._stop_run(job, requeue=False)
            return job
        if self.slurm is not None and job.slurm_job_id is not None and job.state in QUEUED:
            self.slurm.cancel(job.slurm_job_id)  # before the record: a failed scancel leaves the job as it was
        try:
            return self.store.transition(job.id, JobState.CANCELLED, at=now, reason="cancelled by user",
                                         expect=QUEUED, finished_at=now)
        except Conflict:
            fresh = self.store.get(job.id)
            if fresh.state == JobState.RUNNING:  # it started meanwhile: stop it as a running job
                return self.cancel(fresh)
            raise

    def requeue(self, job: Job) -> Job:
        """Checkpoint a running preemptible job and put it back in the queue (Slurm's scontrol requeue)."""
        assert job.id is not None
        if job.state != JobState.RUNNING:
            raise Conflict(f"job {job.id} is {job.state.value}; only a running job can be requeued")
        if not self.spec_of(job).preemptible:
            raise Conflict(f"job {job.id} is not preemptible (set preemptible = true in its job file)")
        job = self.store.update(job.id, preempt_requested=True)
        self._stop_run(job, requeue=True)
        return job

    def remaining_fraction(self, job: Job) -> float:
        """Of a requeued workload, the share of its steps still to run (from its runs' metrics)."""
        if job.state != JobState.PREEMPTED:
            return 1.0
        spec = self.spec_of(job)
        done = max((parse_metrics(json.loads(m.metrics_json), spec.steps).steps or 0
                    for m in self.store.measurements(job.id or 0)), default=0)
        return max(0.05, 1 - done / spec.steps) if spec.steps else 1.0

    def report(self, since: datetime | None, until: datetime | None, user: str | None) -> dict[str, Any]:
        """`gsched report`: finished jobs (by their end) priced where they ran against run-now (report.py)."""
        from scheduler.report import FinishedJob, Run, report

        jobs = [j for j in self.store.jobs(sorted(TERMINAL, key=lambda s: s.value))
                if j.finished_at is not None and (since is None or j.finished_at >= since)
                and (until is None or j.finished_at < until) and (user is None or j.owner_name == user)]
        runs = self.store.runs_of([j.id for j in jobs if j.id is not None])
        jobs = [j for j in jobs if runs.get(j.id or 0)]
        if not jobs:
            return report([], lambda a, b: (None, ""), len(self.devices))  # type: ignore[arg-type,return-value]
        span_start = floor_to(min(j.submitted_at for j in jobs), timedelta(hours=1))
        span_end = max(max(m.finished_at for m in runs[j.id or 0]) for j in jobs) + timedelta(hours=1)
        if span_end - span_start > timedelta(days=400):
            raise InputError("report: more than 400 days of jobs; narrow it with --since/--until")
        # One read of the signals for the whole span; each window is priced from it.
        forecast = self.provider.forecast(span_start, span_end)
        points = self.provider.points(span_start, span_end)  # type: ignore[attr-defined]
        starts = [parse_rfc3339(p["start"]) for p in points]  # consecutive steps, in order
        trace = self.provider.name.startswith("trace:")

        def signals(start: datetime, end: datetime) -> tuple[Any, str]:
            if trace:
                return forecast, "trace"
            window = points[max(0, bisect.bisect_right(starts, start) - 1):bisect.bisect_left(starts, end)]
            if any(p.get("estimated") for p in window):
                return forecast, "estimated"
            return forecast, "realised" if window and all(p.get("realised") for p in window) else "forecast"

        finished = []
        for job in jobs:
            ratios, requested_gpus = self._rate_ratios(job)
            finished.append(FinishedJob(
                job.id or 0, job.name, job.owner_name, job.state.value, job.submitted_at, job.finished_at,  # type: ignore[arg-type]
                tuple(Run(m.started_at, m.finished_at, m.energy_j, m.energy_source,
                          ratios.get(_mode_key(json.loads(m.mode_json)) if m.mode_json else None, 1.0))
                      for m in runs[job.id or 0]), requested_gpus or job.gpus or job.gpus_min))
        return report(finished, signals, len(self.devices))

    def _rate_ratios(self, job: Job) -> tuple[dict[Any, float], int | None]:
        """Each mode (by _mode_key) -> its speed relative to the job's requested mode, in the planner's model;
        and the requested mode's device count."""
        try:
            jm = self.modes_of(self.spec_of(job), job.owner_uid)
        except Exception:  # an old record the model cannot read: the runs' own durations stand
            return {}, None
        requested = jm.modes[jm.requested]
        return ({_mode_key(d): m.rate / requested.rate for d, m in zip(jm.described, jm.modes) if requested.rate > 0},
                requested.gpus)

    def info(self) -> dict[str, Any]:
        return {"version": __version__, "now": self.clock.now(), "clock_speed": self.clock.speed,
                "forecast_providers": [vars(st) for st in getattr(self.provider, "status", {}).values()],
                "home": str(self.paths.home), "socket": str(self.paths.socket), "devices": len(self.devices),
                "forecast_source": self.provider.name, "forecast_error": self.forecast_error, "uid": self.uid,
                "metrics": self.config.metrics.listen or None}


def _mode_key(mode: dict[str, Any]) -> tuple[Any, ...]:
    """A mode as the job file chose it; not where its numbers came from (a default, then a profile)."""
    return (mode.get("gpus"), mode.get("precision"), str(mode.get("pruning")), mode.get("power_limit_w"),
            bool(mode.get("compile")))


def _slurm_end_state(sj: SlurmJob) -> JobState:
    """How a job Slurm ended ends in gsched when its run's result does not say otherwise: Slurm's state, except
    that "COMPLETED" without a result is a failure."""
    state = JobState(sj.gsched_state)
    return JobState.FAILED if state == JobState.COMPLETED else state


def _slurm_why(sj: SlurmJob) -> str:
    """Slurm's own words for how its job ended: DEADLINE, NODE_FAIL, TIMEOUT, cancelled by an admin."""
    reason = "" if sj.reason in ("", "None") else f" ({sj.reason})"
    return f"Slurm ended job {sj.job_id}: {sj.state}{reason}"


def _has_runner(job: Job) -> bool:
    """A running job whose run has started: a local runner's pid is known, or Slurm runs it."""
    return job.runner_pid is not None or job.slurm_job_id is not None


def _run_end(job: Job) -> datetime | None:
    """When a running job's devices are planned to be free: its segment's end (elastic) or its planned end."""
    if job.plan_json:
        pause_at = json.loads(job.plan_json).get("pause_at")
        if pause_at:
            return parse_rfc3339(pause_at)
    return job.planned_end


def _previous(plan: dict[str, Any], described: list[dict[str, Any]], grid0: datetime, slot: timedelta
              ) -> tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]] | None:
    """A job's last plan on today's grid, for hysteresis: its segments still ahead, each in its mode (matched by
    _mode_key: a mode measured since is still the same mode)."""
    modes = plan.get("segment_modes") or [plan["mode"]] * len(plan["segments"])
    keys = [_mode_key(d) for d in described]
    if any(_mode_key(m) not in keys for m in modes):
        return None
    segments, indices = [], []
    for (a, b), m in zip(plan["segments"], modes):
        start, end = round((parse_rfc3339(a) - grid0) / slot), round((parse_rfc3339(b) - grid0) / slot)
        if end <= 0:
            continue
        segments.append((max(0, start), end))
        indices.append(keys.index(_mode_key(m)))
    if not segments:
        return None
    return indices[0], tuple(segments), tuple(indices) if len(set(indices)) > 1 else ()


_CLEARED_RUN: dict[str, Any] = {
    "started_at": None, "gpus": None, "devices_json": None, "runner_pid": None, "runner_start_ticks": None,
    "run_token": None, "plan_json": None, "planned_start": None, "planned_end": None}


def plausible_profile(profile: Profile, default_steps_per_s: float | None, nominal_w: float) -> str | None:
    """Why a measured mode is not believable (None if it is): its speed must lie within PROFILE_SPAN of the
    default model's and its power be positive and below MAX_WATTS_PER_DEVICE per device."""
    if not math.isfinite(profile.steps_per_s) or not math.isfinite(profile.watts):
        return "not a finite measurement"
    if default_steps_per_s:
        expected = default_steps_per_s * profile.gpus ** 0.9
        if not expected / PROFILE_SPAN <= profile.steps_per_s <= expected * PROFILE_SPAN:
            return (f"steps_per_s {profile.steps_per_s:.3g} is more than {PROFILE_SPAN:g}x away from the default "
                    f"model's {expected:.3g} on {profile.gpus} device(s)")
    top_w = max(4 * nominal_w, MAX_WATTS_PER_DEVICE) * profile.gpus  # RAPL counts a whole CPU package
    if not 0 < profile.watts <= top_w:
        return f"{profile.watts:.3g} W is outside (0, {top_w:g}] W for {profile.gpus} device(s)"
    return None


PROFILE_SPAN = 100.0
MAX_WATTS_PER_DEVICE = 2000.0


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping (running jobs keep running)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
