"""The daemon's lifecycle: start, reconcile after a restart, tick (reap, plan, dispatch), stop.

Job state lives only in the database. Each tick reads it, acts, and writes the outcome, so a
daemon killed at any point restarts into a consistent picture: runners it started carry on
without it and are re-adopted by pid + kernel start time, or ended with a stated reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pwd
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
from scheduler.errors import Conflict, GschedError
from scheduler.executor.launch import Launcher, runner_alive
from scheduler.executor.power import PowerLimiter
from scheduler.forecasts.base import Provider
from scheduler.jobfile import JobSpec, calibration_job, parse_job, pruning_label
from scheduler.models import Job, JobState, Measurement, Profile
from scheduler.planner.cost import run_cost
from scheduler.planner.estimate import JobModes, job_modes
from scheduler.planner.options import Costing
from scheduler.planner.problem import PJob, Problem
from scheduler.planner.solve import solve
from scheduler.store import Store
from scheduler.timeutil import floor_to, parse_rfc3339, rfc3339

log = logging.getLogger("gsched.daemon")
QUEUED = (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED)


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
                 power: PowerLimiter | None = None) -> None:
        self.config, self.paths, self.store, self.clock = config, paths, store, clock
        self.devices, self.provider, self.launcher = devices, provider, launcher
        self.steps_per_s = steps_per_s
        self.power = power  # set only for a root daemon on GPUs with devices.power_limits = "auto"
        self.uid = os.geteuid()
        self._children: dict[int, Any] = {}  # job id -> Popen of runners this process started
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
            if self.launcher.read_result(job.id) is not None:
                self._finish(job, now)
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
        for job in self.store.jobs([JobState.RUNNING]):
            assert job.id is not None
            child = self._children.get(job.id)
            if child is not None and child.poll() is not None:
                self._children.pop(job.id)
            if self.launcher.read_result(job.id) is not None:
                self._finish(job, now)
            elif child is None and not runner_alive(job.runner_pid, job.runner_start_ticks):
                self._end_lost(job, now, "runner exited without a result (see the job's log)")
            elif child is not None and child.returncode is not None:
                self._end_lost(job, now, f"runner exited with {child.returncode} without a result (see the log)")

    def _finish(self, job: Job, now: datetime) -> None:
        assert job.id is not None and job.started_at is not None
        result = self.launcher.read_result(job.id) or {}
        duration_s = float(result.get("duration_s") or 0.0)
        # Times are on the daemon's clock, which may run faster than the wall (the demo).
        finished = job.started_at + timedelta(seconds=duration_s * self.clock.speed)
        exit_code = result.get("exit_code")
        metrics = result.get("metrics") or {}
        if job.cancel_requested:
            state, reason = JobState.CANCELLED, "cancelled by user"
        elif job.preempt_requested and not (exit_code == 0 and metrics.get("preempted") is False):
            # A workload that reports it finished all its steps completed; anything else goes back to the queue.
            state = JobState.PREEMPTED
            reason = (f"requeued: checkpointed at step {metrics['steps']}" if metrics.get("preempted")
                      else f"requeued (exit code {exit_code})")
        elif result.get("timed_out"):
            state, reason = JobState.TIMEOUT, "reached its time_limit"
        elif exit_code == 0:
            state, reason = JobState.COMPLETED, "exit code 0"
        else:
            state = JobState.FAILED
            reason = result.get("error") or (f"killed by {result['signal']}" if result.get("signal")
                                             else f"exit code {exit_code}")
        energy_j = float(result.get("energy_j") or 0.0)
        cost_eur = co2_g = None
        try:
            forecast = self.provider.forecast(job.started_at, finished + timedelta(hours=1))
            cost_eur, co2_g = run_cost(energy_j, job.started_at, finished, forecast)
        except GschedError as exc:
            log.warning("job %s: no signals to price its energy: %s", job.id, exc)
        measurement = Measurement(job_id=job.id, started_at=job.started_at, finished_at=finished,
                                  duration_s=duration_s, energy_j=energy_j,
                                  energy_source=result.get("energy_source", "estimate"),
                                  cost_eur=cost_eur, co2_g=co2_g, metrics_json=json.dumps(metrics))
        self._restore_power(job)
        self._learn(job, metrics, duration_s, energy_j, measurement.energy_source, finished)
        ended = {"finished_at": finished, "exit_code": exit_code} if state != JobState.PREEMPTED else {
            "preempt_requested": False, "started_at": None, "gpus": None, "devices_json": None, "runner_pid": None,
            "runner_start_ticks": None, "plan_json": None, "planned_start": None, "planned_end": None}
        try:
            self.store.finish(job.id, state, at=finished, reason=reason, measurement=measurement, **ended)
        except Conflict:
            return  # another thread ended it first
        self._dirty.set()  # its devices are free: replan
        self._calibration_scan = True
        log.info("job %s %s: %s, %.1f J (%s)", job.id, state.value, reason, energy_j, measurement.energy_source)

    def _learn(self, job: Job, metrics: dict[str, Any], duration_s: float, energy_j: float, source: str,
               at: datetime) -> None:
        """A workload's run measured its mode: keep it as a profile for planning the next runs."""
        spec = self.spec_of(job)
        steps_per_s = metrics.get("steps_per_s")
        if not spec.profile_key or not steps_per_s or duration_s < 1 or not job.plan_json or not job.gpus:
            return
        mode = json.loads(job.plan_json)["mode"]
        self.store.record_profile(Profile(
            key=spec.profile_key, device_kind=self.devices[0].kind, gpus=job.gpus, precision=mode["precision"],
            pruning=pruning_label(mode.get("pruning") or 0.0), compile=bool(mode.get("compile")),
            power_limit_w=int(mode.get("power_limit_w") or 0), steps_per_s=float(steps_per_s),
            watts=energy_j / duration_s, energy_source=source, measured_at=at))

    def _end_lost(self, job: Job, now: datetime, reason: str) -> None:
        assert job.id is not None
        self._restore_power(job)
        state = JobState.CANCELLED if job.cancel_requested else JobState.FAILED
        try:
            self.store.finish(job.id, state, at=now, reason=reason, measurement=None, finished_at=now)
        except Conflict:
            return
        self._dirty.set()
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def spec_of(self, job: Job) -> JobSpec:
        return JobSpec.from_json(json.loads(job.spec_json))

    def plan_and_dispatch(self, now: datetime) -> None:
        slot = timedelta(minutes=self.config.planner.slot_minutes)
        grid0 = floor_to(now, slot)
        queued = self.store.jobs(QUEUED)
        if queued and (self._dirty.is_set() or grid0 != self._planned_grid):
            self._dirty.clear()
            self._planned_grid = grid0
            self._replan(now, grid0, queued)
            queued = self.store.jobs(QUEUED)
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
            if spec.profile_key is None or spec.profile_key in seen or job.name.startswith("calibrate-"):
                continue
            seen.add(spec.profile_key)
            for mode in self.modes_of(spec).described:
                choice = (spec.profile_key, mode["gpus"], mode["precision"], pruning_label(mode["pruning"]))
                if mode["source"] == "profile" or mode["power_limit_w"] is not None or choice in self._calibrated:
                    continue
                self._calibrated.add(choice)  # once per daemon run, whether or not it measures
                steps = max(10, math.ceil(self.steps_per_s.get(spec.workload or "", 1.0)
                                          * mode["gpus"] * self.config.daemon.calibration_s))
                label, text = calibration_job(spec, "calibrate", mode["gpus"], mode["precision"], mode["pruning"],
                                              steps)
                derived = parse_job(text, source=f"calibration of job {job.id} ({label})",
                                    base_dir=Path(spec.workdir), now=now)
                added = self.store.add_job(derived, owner_uid=job.owner_uid, owner_name=job.owner_name, urgent=True,
                                           now=now)
                assert added.id is not None
                self.store.note(added.id, at=now, reason=f"calibrating {label} of job {job.id}'s workload: "
                                                         "devices idle and no profile for this mode")
                log.info("job %s: calibrating %s of job %s's workload while idle", added.id, label, job.id)
                self._idle_since = None
                self._dirty.set()
                return

    def modes_of(self, spec: JobSpec) -> JobModes:
        kind = self.devices[0].kind if self.devices else "cpu"
        settings = self.config.planner
        nominal_w = settings.gpu_power_w if kind == "gpu" else settings.cpu_device_power_w
        profiles = self.store.profiles(spec.profile_key, kind) if spec.profile_key else []
        return job_modes(spec, len(self.devices), kind, nominal_w,
                         self.steps_per_s.get(spec.workload) if spec.workload else None, self.clock.speed, profiles)

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
        capacity = [len(self.devices)] * horizon
        for job in self.store.jobs([JobState.RUNNING]):
            end = job.planned_end if job.planned_end and job.planned_end > now else now
            for k in range(min(horizon, max(1, math.ceil((end - grid0) / slot)))):
                capacity[k] -= job.gpus or 0
        capacity = [max(0, c) for c in capacity]
        pjobs, modes_of, previous = [], {}, {}
        for job in queued:
            jm = self.modes_of(self.spec_of(job))
            indices = [jm.requested] if job.urgent else list(range(len(jm.modes)))
            modes = tuple(jm.modes[i] for i in indices)
            described = [jm.described[i] for i in indices]
            deadline_slot = max(0, min(horizon, math.floor((job.deadline - grid0) / slot)))
            if job.urgent:  # --now: as soon as devices allow; any wait shows as lateness, so none is chosen
                deadline_slot = min(deadline_slot, max(1, math.ceil(jm.work / modes[0].rate / (slot / timedelta(hours=1)))))
            work = jm.work * self.remaining_fraction(job)
            pjobs.append(PJob(str(job.id), 0, deadline_slot, work, modes, 0 if job.urgent else jm.requested))
            modes_of[str(job.id)] = described
            if job.plan_json:
                old = json.loads(job.plan_json)
                if old["mode"] in described:
                    segments = tuple((round((parse_rfc3339(a) - grid0) / slot), round((parse_rfc3339(b) - grid0) / slot))
                                     for a, b in old["segments"])
                    previous[str(job.id)] = (described.index(old["mode"]), segments)
        problem = Problem(grid0, settings.slot_minutes, len(self.devices), settings.carbon_price_eur_per_t,
                          tuple(price), tuple(carbon), tuple(pjobs), settings.objective, tuple(capacity))
        solution = solve(problem, settings.time_limit_s, previous, settings.hysteresis_pct / 100)
        log.info("planned %d job(s) in %.2f s (%s)", len(pjobs), solution.stats["solve_s"], solution.stats["method"])
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
            start = max(now, grid0 + option.start * slot)
            end = start + timedelta(hours=pjob.work / mode.rate)
            updates[int(pjob.id)] = {
                "state": JobState.PLANNED, "planned_start": start, "planned_end": end, "planned_gpus": mode.gpus,
                "plan_json": json.dumps({"mode": modes_of[pjob.id][option.mode], "label": mode.label,
                                         "segments": [[rfc3339(grid0 + a * slot), rfc3339(grid0 + b * slot)]
                                                      for a, b in option.segments]}),
                "plan_reason": solution.late.get(pjob.id) or self._explain(costing, j, option, start, end,
                                                                           queued[j].urgent),
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

    def _dispatch_due(self, now: datetime, queued: list[Job]) -> None:
        busy = {uuid for job in self.store.jobs([JobState.RUNNING]) for uuid in json.loads(job.devices_json or "[]")}
        due = [j for j in queued if j.state == JobState.PLANNED and j.planned_start and j.planned_start <= now]
        for job in sorted(due, key=lambda j: (j.planned_start, j.id)):
            assert job.id is not None and job.plan_json is not None
            mode = json.loads(job.plan_json)["mode"]
            free = [d for d in self.devices if d.uuid not in busy]
            if len(free) < mode["gpus"]:
                continue
            chosen = free[: mode["gpus"]]
            busy.update(d.uuid for d in chosen)
            self._dispatch(job.id, self.spec_of(job), chosen, now, mode)

    def _dispatch(self, job_id: int, spec: JobSpec, devices: list[Device], now: datetime, mode: dict[str, Any]
                  ) -> None:
        job = self.store.get(job_id)
        if job.state not in QUEUED:
            return
        try:
            gid = pwd.getpwuid(job.owner_uid).pw_gid if self.uid == 0 else os.getegid()
        except KeyError:
            gid = job.owner_uid
        uid = job.owner_uid if self.uid == 0 else self.uid
        cap_w = mode.get("power_limit_w")
        if cap_w and self.power is not None and devices[0].kind == "gpu":
            try:
                originals = self.power.apply([d.uuid for d in devices], float(cap_w))
                self.store.update(job_id, power_restore_json=json.dumps(originals))
            except GschedError as exc:
                log.warning("job %s: runs without its %s W cap: %s", job_id, cap_w, exc)
                self.store.note(job_id, at=now, reason=f"power cap not set: {exc}")
        try:
            launched = self.launcher.start(job_id, spec, devices, uid, gid, mode)
        except OSError as exc:
            self.store.transition(job_id, JobState.FAILED, at=now, reason=f"cannot start runner: {exc}",
                                  finished_at=now)
            return
        self._children[job_id] = launched.process
        names = ",".join(d.name for d in devices)
        self.store.transition(job_id, JobState.RUNNING, at=now, reason=f"started on {names}",
                              started_at=now, gpus=len(devices), devices_json=json.dumps([d.uuid for d in devices]),
                              runner_pid=launched.process.pid, runner_start_ticks=launched.start_ticks)
        threading.Thread(target=self._watch, args=(launched.process,), daemon=True).start()
        log.info("job %s RUNNING on %s (runner pid %s)", job_id, names, launched.process.pid)

    def _watch(self, process: Any) -> None:
        process.wait()
        self.wake()

    # --- requests ----------------------------------------------------------------------------------

    def cancel(self, job: Job) -> Job:
        assert job.id is not None
        now = self.clock.now()
        if job.state == JobState.RUNNING:
            job = self.store.update(job.id, cancel_requested=True)
            if not self.launcher.signal(job.runner_pid or 0, job.runner_start_ticks or -1, signal.SIGTERM):
                self.wake()
            return job
        return self.store.transition(job.id, JobState.CANCELLED, at=now, reason="cancelled by user",
                                     expect=QUEUED, finished_at=now)

    def requeue(self, job: Job) -> Job:
        """Checkpoint a running preemptible job and put it back in the queue (Slurm's scontrol requeue)."""
        assert job.id is not None
        if job.state != JobState.RUNNING:
            raise Conflict(f"job {job.id} is {job.state.value}; only a running job can be requeued")
        if not self.spec_of(job).preemptible:
            raise Conflict(f"job {job.id} is not preemptible (set preemptible = true in its job file)")
        job = self.store.update(job.id, preempt_requested=True)
        if not self.launcher.signal(job.runner_pid or 0, job.runner_start_ticks or -1, signal.SIGTERM):
            self.wake()
        return job

    def remaining_fraction(self, job: Job) -> float:
        """Of a requeued workload, the share of its steps still to run (from its runs' metrics)."""
        if job.state != JobState.PREEMPTED:
            return 1.0
        spec = self.spec_of(job)
        done = max((json.loads(m.metrics_json).get("steps") or 0 for m in self.store.measurements(job.id or 0)),
                   default=0)
        return max(0.05, 1 - done / spec.steps) if spec.steps else 1.0

    def info(self) -> dict[str, Any]:
        return {"version": __version__, "now": self.clock.now(), "clock_speed": self.clock.speed,
                "forecast_providers": [vars(st) for st in getattr(self.provider, "status", {}).values()],
                "home": str(self.paths.home), "socket": str(self.paths.socket), "devices": len(self.devices),
                "forecast_source": self.provider.name, "forecast_error": self.forecast_error, "uid": self.uid}


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping (running jobs keep running)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
