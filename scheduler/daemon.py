"""The daemon's lifecycle: start, reconcile after a restart, tick (reap, plan, dispatch), stop.

Job state lives only in the database. Each tick reads it, acts, and writes the outcome, so a
daemon killed at any point restarts into a consistent picture: runners it started carry on
without it and are re-adopted by pid + kernel start time, or ended with a stated reason.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import socket
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.config import Config, Paths
from scheduler.devices import Device
from scheduler.errors import Conflict, GschedError
from scheduler.executor.launch import Launcher, runner_alive
from scheduler.forecasts.base import Forecast, Provider
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState, Measurement
from scheduler.planner.cost import run_cost
from scheduler.planner.estimate import durations_s
from scheduler.planner.placeholder import PlanJob, Reservation, Signals, plan
from scheduler.store import Store
from scheduler.timeutil import floor_to

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
                 provider: Provider, launcher: Launcher, steps_per_s: dict[str, float]) -> None:
        self.config, self.paths, self.store, self.clock = config, paths, store, clock
        self.devices, self.provider, self.launcher = devices, provider, launcher
        self.steps_per_s = steps_per_s
        self.uid = os.geteuid()
        self._children: dict[int, Any] = {}  # job id -> Popen of runners this process started
        self._tick_lock = threading.Lock()
        self._again = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self.forecast_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)  # in-memory job store: ticks only
        self._scheduler.add_job(self.tick, "interval", seconds=self.config.daemon.tick_s, id="tick",
                                max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
        self._scheduler.start()

    def stop(self) -> None:
        """Stop ticking. Running jobs are left alone: their runners outlive us and are re-adopted."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def wake(self) -> None:
        """Tick soon: after a submit, a cancel or a job's end."""
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
                if not self._again.is_set():
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
        if job.cancel_requested:
            state, reason = JobState.CANCELLED, "cancelled by user"
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
                                  cost_eur=cost_eur, co2_g=co2_g, metrics_json=json.dumps(result.get("metrics") or {}))
        try:
            self.store.finish(job.id, state, at=finished, reason=reason, measurement=measurement,
                              finished_at=finished, exit_code=exit_code)
        except Conflict:
            return  # another thread ended it first
        log.info("job %s %s: %s, %.1f J (%s)", job.id, state.value, reason, energy_j, measurement.energy_source)

    def _end_lost(self, job: Job, now: datetime, reason: str) -> None:
        assert job.id is not None
        state = JobState.CANCELLED if job.cancel_requested else JobState.FAILED
        try:
            self.store.finish(job.id, state, at=now, reason=reason, measurement=None, finished_at=now)
        except Conflict:
            return
        log.warning("job %s %s: %s", job.id, state.value, reason)

    def _signals(self, now: datetime) -> Signals:
        slot_s = self.config.planner.slot_minutes * 60
        grid0 = floor_to(now, timedelta(seconds=slot_s))
        slots = self.config.planner.horizon_hours * 3600 // slot_s
        forecast = self.forecast(grid0, grid0 + timedelta(seconds=slots * slot_s))
        price, carbon = forecast.on_grid(grid0, slot_s, slots)
        return Signals(grid0, slot_s, price, carbon)

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        return self.provider.forecast(start, end)

    def spec_of(self, job: Job) -> JobSpec:
        return JobSpec.from_json(json.loads(job.spec_json))

    def plan_durations_s(self, spec: JobSpec) -> tuple[float, ...]:
        rate = self.steps_per_s.get(spec.workload) if spec.workload else None
        return tuple(d * self.clock.speed for d in durations_s(spec, rate))

    def plan_and_dispatch(self, now: datetime) -> None:
        queued = self.store.jobs(QUEUED)
        if not queued:
            return
        running = self.store.jobs([JobState.RUNNING])
        reservations = []
        for job in running:
            assert job.started_at is not None and job.gpus is not None
            expected = job.started_at + timedelta(seconds=self.plan_durations_s(self.spec_of(job))[job.gpus - 1])
            reservations.append(Reservation(job.gpus, max(expected, now)))
        capacity = len(self.devices)
        plan_jobs, specs = [], {}
        for job in queued:
            assert job.id is not None
            specs[job.id] = spec = self.spec_of(job)
            plan_jobs.append(PlanJob(job.id, job.deadline, min(job.gpus_min, capacity), min(job.gpus_max, capacity),
                                     self.plan_durations_s(spec), job.urgent))
        try:
            signals = self._signals(now)
            self.forecast_error = None
        except GschedError as exc:
            # No signals: still meet deadlines, by planning on flat ones (run as soon as devices allow).
            if self.forecast_error != str(exc):
                log.error("forecast unavailable, planning without prices: %s", exc)
            self.forecast_error = str(exc)
            slot_s = self.config.planner.slot_minutes * 60
            slots = self.config.planner.horizon_hours * 3600 // slot_s
            signals = Signals(floor_to(now, timedelta(seconds=slot_s)), slot_s, [1.0] * slots, [1.0] * slots)
        assignments = plan(plan_jobs, signals, capacity, reservations, now,
                           self.config.planner.carbon_price_eur_per_t, self.config.planner.objective)
        planned = {a.job_id: a for a in assignments}
        updates: dict[int, dict[str, Any]] = {}
        for job in queued:
            assert job.id is not None
            a = planned.get(job.id)
            if a is None:
                updates[job.id] = {"state": JobState.PENDING, "planned_start": None, "planned_end": None,
                                   "planned_gpus": None,
                                   "plan_reason": "no free devices within the planning horizon"}
            else:
                updates[job.id] = {"state": JobState.PLANNED, "planned_start": a.start, "planned_end": a.end,
                                   "planned_gpus": a.gpus, "plan_reason": a.reason}
        self.store.save_plans(updates, at=now)
        busy = {uuid for job in running for uuid in json.loads(job.devices_json or "[]")}
        for a in sorted(assignments, key=lambda a: a.start):
            if a.start > now:
                continue
            free = [d for d in self.devices if d.uuid not in busy]
            if len(free) < a.gpus:
                continue
            chosen = free[: a.gpus]
            busy.update(d.uuid for d in chosen)
            self._dispatch(a.job_id, specs[a.job_id], chosen, now)

    def _dispatch(self, job_id: int, spec: JobSpec, devices: list[Device], now: datetime) -> None:
        job = self.store.get(job_id)
        if job.state not in QUEUED:
            return
        try:
            gid = pwd.getpwuid(job.owner_uid).pw_gid if self.uid == 0 else os.getegid()
        except KeyError:
            gid = job.owner_uid
        uid = job.owner_uid if self.uid == 0 else self.uid
        try:
            launched = self.launcher.start(job_id, spec, devices, uid, gid)
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

    def info(self) -> dict[str, Any]:
        return {"version": __version__, "now": self.clock.now(), "clock_speed": self.clock.speed,
                "home": str(self.paths.home), "socket": str(self.paths.socket), "devices": len(self.devices),
                "forecast_source": self.provider.name, "forecast_error": self.forecast_error, "uid": self.uid}


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping (running jobs keep running)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
