"""The local executor: each run is a runner process on this host (launch.py), in a session and cgroup of its own,
on devices this executor chooses. Its handle is the run's token (claim file, cgroup, GSCHED_RUN_TOKEN), the
runner's pid with the kernel's start time for that pid, and the power limits to restore.

A runner outlives the daemon: after a restart it is re-adopted by pid + start time, or its result is read, or it
is reported lost. Exactly once: the runner claims its token before it runs anything, and a restarted daemon that
finds an unclaimed intent takes the start back (Launcher.give_up), so the run never happens twice.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler.config import Config, Paths
from scheduler.devices import Device
from scheduler.errors import GschedError, StoreError
from scheduler.executor.base import (Broken, Capabilities, CapacityChanged, Ended, Executor, Handle, Intent,
                                     LaunchFailed, Lost, NeverStarted, Observation, handle_of)
from scheduler.executor.launch import Launcher
from scheduler.executor.power import PowerLimiter
from scheduler.executor.procs import RunGroup, alive
from scheduler.executor.runner import EXIT_NO_RESULT
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState
from scheduler.store import Store
from scheduler.userpath import acting_ids

log = logging.getLogger("gsched.executor.local")


class LocalExecutor(Executor):
    capabilities = Capabilities(holds_pending=False)

    def __init__(self, config: Config, paths: Paths, store: Store, devices: list[Device], launcher: Launcher,
                 power: PowerLimiter | None = None) -> None:
        self.config, self.paths, self.store, self.devices = config, paths, store, devices
        self.launcher = launcher
        gpus = sum(d.kind == "gpu" for d in devices)
        self.cpus_per_gpu = max(1, len(os.sched_getaffinity(0)) // gpus) if gpus else 1  # each GPU's share
        base = launcher.cgroup_base
        self.where = f"in cgroups under {base}" if base else "in process groups (no writable cgroup v2)"
        self.power = power  # set only for a root daemon on GPUs with devices.power_limits = "auto"
        self.notify: Callable[[], None] = lambda: None  # the daemon's wake: a runner exited
        self._children: dict[int, Any] = {}  # job id -> Popen of runners this process started
        self._runner_exits: dict[str, int] = {}  # run token -> exit code of such a runner, until its run is ended
        # Runs that ended but left processes SIGKILL has not removed yet: their devices stay busy.
        self._lingering: dict[int, tuple[RunGroup, set[str]]] = {}

    # --- capacity and starts ---------------------------------------------------------------------------------

    def capacity(self, start: datetime, slot_s: float, slots: int) -> dict[str, list[int]]:
        return {"local": [len(self.devices) - sum(len(d) for _g, d in self._lingering.values())] * slots}

    def _busy(self) -> set[str]:
        busy = {uuid for job in self.store.jobs([JobState.RUNNING]) for uuid in json.loads(job.devices_json or "[]")}
        busy.update(uuid for _group, devices in self._lingering.values() for uuid in devices)
        return busy

    def prepare(self, job: Job, spec: JobSpec, mode: dict[str, Any], now: datetime) -> Intent | None:
        assert job.id is not None
        busy = self._busy()
        free = [d for d in self.devices if d.uuid not in busy]
        if len(free) < mode["gpus"]:
            return None
        devices = free[: mode["gpus"]]
        handle: Handle = {"token": secrets.token_hex(8), "pid": None, "start_ticks": None}
        cap_w = mode.get("power_limit_w")
        if cap_w and self.power is not None and devices[0].kind == "gpu":
            try:
                handle["power_restore"] = self.power.apply([d.uuid for d in devices], float(cap_w))
            except GschedError as exc:
                log.warning("job %s: runs without its %s W cap: %s", job.id, cap_w, exc)
                self.store.note(job.id, at=now, reason=f"power cap not set: {exc}")
        uid, gid = acting_ids(job.owner_uid, job.owner_uid)
        try:
            self.launcher.prepare(job.id, spec, devices, uid, gid, mode, handle["token"], self.cpus_per_gpu)
        except OSError as exc:
            self._restore_power(job.id, handle)
            raise LaunchFailed(f"cannot prepare the run: {exc}") from exc
        return Intent(handle, len(devices), [d.uuid for d in devices], "on " + ",".join(d.name for d in devices))

    def start(self, job: Job, spec: JobSpec, intent: Intent, now: datetime) -> Handle:
        assert job.id is not None
        token = intent.handle["token"]
        path = self.paths.runs / str(job.id) / f"run-{token}.json"
        try:
            launched = self.launcher.start(job.id, path, token)
        except OSError as exc:
            self.launcher.give_up(job.id, token)
            self._restore_power(job.id, intent.handle)
            raise LaunchFailed(f"cannot start runner: {exc}") from exc
        self._children[job.id] = launched.process
        threading.Thread(target=self._watch, args=(launched.process,), daemon=True).start()
        log.info("job %s: runner pid %s", job.id, launched.process.pid)
        return {**intent.handle, "pid": launched.process.pid, "start_ticks": launched.start_ticks}

    def _watch(self, process: Any) -> None:
        process.wait()
        self.notify()

    # --- following runs ----------------------------------------------------------------------------------------

    def poll(self, jobs: list[Job], now: datetime) -> list[Observation]:
        # A runner's exit code is kept until its job has left RUNNING: until then the daemon may not have recorded
        # the end (a full disk), and the next look must say the same thing.
        live = {handle_of(j).get("token") for j in jobs if j.state == JobState.RUNNING}
        for token in set(self._runner_exits) - live:
            del self._runner_exits[token]
        seen: list[Observation] = []
        for job_id, (group, _devices) in list(self._lingering.items()):
            if group.kill(timeout_s=0.2):
                group.remove()
                del self._lingering[job_id]
                seen.append(CapacityChanged())
        for job in jobs:
            if job.state != JobState.RUNNING:
                continue
            try:
                obs = self._reap_one(job)
            except StoreError as exc:  # the database cannot take the record now (disk full): the next tick retries
                log.error("job %s: cannot record its run yet: %s", job.id, exc)
                continue
            except Exception as exc:  # one job's bad record must never stop the others' reaping
                log.exception("job %s: reaping failed", job.id)
                obs = Broken(job.id or 0, exc)
            if obs is not None:
                seen.append(obs)
        return seen

    def _reap_one(self, job: Job) -> Observation | None:
        assert job.id is not None
        handle = handle_of(job)
        token = handle.get("token") or ""
        child = self._children.get(job.id)
        if child is not None and child.poll() is not None:
            self._children.pop(job.id)
            self._runner_exits[token] = child.returncode
        raw = self.launcher.read_result(job.id)
        if raw is not None:
            return self._ended(job, Ended(job.id, raw))
        if handle.get("pid") is None:
            return None  # being started by this daemon right now
        if token in self._runner_exits:
            code = self._runner_exits[token]
            if code == EXIT_NO_RESULT:
                why = f"its runner could not write its claim or result: the disk holding {self.paths.home} is full or unwritable"
            else:
                why = f"runner exited with {code} without a result" + self._disk_hint()
            return self._ended(job, Lost(job.id, why))
        if not alive(handle.get("pid"), handle.get("start_ticks")):
            return self._ended(job, Lost(job.id, "runner exited without a result" + self._disk_hint()))
        return None

    def _ended(self, job: Job, obs: Observation) -> Observation:
        """A run ended: nothing of it may run on before it is reported."""
        self.reclaim(job)
        return obs

    def _disk_hint(self) -> str:
        try:
            free = shutil.disk_usage(self.paths.home).free
        except OSError:
            return " (see the job's log)"
        if free < 1024 * 1024:
            return f": the disk holding {self.paths.home} is full ({free // 1024} KiB free), so it could not write one"
        return " (see the job's log)"

    def recover(self, jobs: list[Job], now: datetime) -> list[Observation]:
        """After a (re)start: finish runs whose result is in, re-adopt live runners, report the lost ones."""
        seen: list[Observation] = []
        for job in jobs:
            if job.state != JobState.RUNNING:
                continue
            try:
                obs = self._recover_one(job, now)
            except Exception:  # one bad record must not keep the daemon from starting
                log.exception("job %s: recovery failed; it is retried at every tick", job.id)
                continue
            if obs is not None:
                seen.append(obs)
        return seen

    def _recover_one(self, job: Job, now: datetime) -> Observation | None:
        assert job.id is not None
        job_id = job.id
        handle = handle_of(job)
        token = handle.get("token")
        if handle.get("pid") is None and token:
            # The daemon died between recording the intent and recording the runner's pid: the claim file says
            # whether the runner took the run; if it did not, take it back so it never runs.
            claimed = self.launcher.read_claim(job.id, token)
            if claimed is None and not self.launcher.give_up(job.id, token):
                claimed = self.launcher.read_claim(job.id, token)  # the runner was first after all
            if claimed is None or claimed.get("by") == "daemon":  # taken back, now or by an earlier restart
                self.launcher.group(job.id, token).remove()
                self._restore_power(job.id, handle)
                return NeverStarted(job.id, "requeued: the daemon stopped while starting it, before its runner began")
            if claimed.get("by") == "runner" and isinstance(claimed.get("pid"), int):
                handle = {**handle, "pid": claimed["pid"], "start_ticks": claimed.get("start_ticks")}
                job = self.store.set_handle(job_id, handle)
        raw = self.launcher.read_result(job_id)
        if raw is not None:
            return self._ended(job, Ended(job_id, raw))
        if alive(handle.get("pid"), handle.get("start_ticks")):
            log.info("job %s: re-adopted runner pid %s after daemon restart", job_id, handle["pid"])
            self.store.note(job_id, at=now, reason=f"re-adopted runner pid {handle['pid']} after daemon restart")
            return None
        return self._ended(job, Lost(job_id, "runner lost while the daemon was down (no result recorded)"))

    # --- requests ----------------------------------------------------------------------------------------------

    def stop(self, job: Job, requeue: bool) -> bool:
        """SIGTERM to the runner: it passes it on (the workload checkpoints) and writes the result."""
        handle = handle_of(job)
        if handle.get("pid") is None:
            return False
        return self.launcher.signal(handle["pid"], handle.get("start_ticks") or -1, signal.SIGTERM)

    def retime(self, job: Job, start: datetime, now: datetime) -> None:
        """Nothing is held here: a job starts when it is due."""

    def withdraw(self, job: Job) -> None:
        """Nothing is held here before it starts."""

    def reclaim(self, job: Job) -> None:
        """Restore the run's power caps and kill whatever of it is left. Its devices are reused only once nothing
        of it lives."""
        assert job.id is not None
        handle = handle_of(job)
        self._restore_power(job.id, handle)
        if not handle.get("token"):
            return
        group = self.launcher.group(job.id, handle["token"])
        if group.kill(timeout_s=2.0):
            group.remove()
        else:
            self._lingering[job.id] = (group, set(json.loads(job.devices_json or "[]")))

    def _restore_power(self, job_id: int, handle: Handle) -> None:
        originals = handle.get("power_restore")
        if not originals or self.power is None:
            return
        try:
            self.power.restore({k: int(v) for k, v in originals.items()})
        except GschedError as exc:
            log.error("job %s: %s", job_id, exc)
            return
        handle.pop("power_restore", None)
        try:
            if handle_of(self.store.get(job_id)).get("token") == handle.get("token"):
                self.store.set_handle(job_id, handle)
        except GschedError:
            pass

    def started(self, job: Job) -> bool:
        return handle_of(job).get("pid") is not None

    def held_mode(self, job: Job) -> dict[str, Any] | None:
        return None

    def describe(self, job: Job) -> dict[str, Any]:
        return {}

    def log_path(self, job_id: int) -> Path:
        return self.launcher.log_path(job_id)

    def close(self, running: list[Job]) -> None:
        """Runners outlive the daemon and are re-adopted; the power limits set for them are restored."""
        for job in running:
            self._restore_power(job.id or 0, handle_of(job))
