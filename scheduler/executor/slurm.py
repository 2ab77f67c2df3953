"""The Slurm executor: each planned job is one Slurm job, submitted as its owner with the planned start as
``--begin``; replans move its start (scontrol update). Slurm's view, read once a tick (squeue), becomes
observations; the run's result comes back through ``executor.shared_dir`` (slurmctl.SlurmRuns). Slurm down: no
observations, the jobs stay as they are until it answers again.

Its handle: the token that names the Slurm job (``gsched-<id>-<token>``, recorded before sbatch runs, so a
restarted daemon finds the job, never submits it twice), the Slurm job id, the mode it was submitted in, the run
number (SLURM_RESTART_COUNT) gsched last saw start, and the nodes. A Slurm job outlives the daemon and keeps its
handle across requeues: Slurm runs the same job again.
"""

from __future__ import annotations

import json
import logging
import pwd
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.clock import Clock
from scheduler.config import Config
from scheduler.devices import Device
from scheduler.errors import GschedError, StoreError
from scheduler.executor.base import (Broken, Capabilities, CapacityChanged, Dropped, Ended, Executor, Handle, Intent,
                                     LaunchDeferred, LaunchFailed, Lost, NeverStarted, Observation, Requeued,
                                     Started, handle_of)
from scheduler.executor.launch import Launcher
from scheduler.executor.slurmctl import (ENDED, RUNNING, Slurm, SlurmJob, SlurmNode, SlurmRuns, foreign_gpus,
                                         hostlist, mode_comment, node_energy_note, sbatch_argv)
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState
from scheduler.profiles import mode_key
from scheduler.store import Store
from scheduler.timeutil import rfc3339
from scheduler.userpath import acting_ids

log = logging.getLogger("gsched.executor.slurm")
SUBMIT_RETRY_S = 30.0  # a job sbatch refused (no account, a partition limit) is offered to Slurm again after this
WORDS_GRACE_S = 30.0  # a run Slurm stopped: how long Slurm may take to say why before gsched ends it
RESULT_GRACE_S = 5.0  # a run Slurm has ended: how long its result may take to appear on the shared file system


def end_state(sj: SlurmJob) -> JobState:
    """How a job Slurm ended ends in gsched when its run's result does not say otherwise: Slurm's state, except
    that "COMPLETED" without a result is a failure."""
    state = JobState(sj.gsched_state)
    return JobState.FAILED if state == JobState.COMPLETED else state


def planned_nodes(job: Job) -> list[str]:
    """The nodes the plan put the job's next run on, on a partition of several nodes."""
    nodes = json.loads(job.plan_json).get("nodes") if job.plan_json else None
    first = nodes[0] if isinstance(nodes, list) and nodes else None
    return [n for n in first if isinstance(n, str)] if isinstance(first, list) else []


def spread(mode: dict[str, Any]) -> int:
    """How many nodes a mode's GPUs are on."""
    return max(1, int(mode.get("nodes") or 1))


def slurm_why(sj: SlurmJob) -> str:
    """Slurm's own words for how its job ended: DEADLINE, NODE_FAIL, TIMEOUT, cancelled by an admin."""
    reason = "" if sj.reason in ("", "None") else f" ({sj.reason})"
    return f"Slurm ended job {sj.job_id}: {sj.state}{reason}"


class SlurmExecutor(Executor):
    capabilities = Capabilities(holds_pending=True)

    def __init__(self, config: Config, store: Store, clock: Clock, devices: list[Device], ctl: Slurm,
                 runs: SlurmRuns, launcher: Launcher) -> None:
        self.config, self.store, self.clock, self.devices = config, store, clock, devices
        self.ctl, self.runs, self.launcher = ctl, runs, launcher
        self.where = f"in Slurm partition {config.executor.partition}"
        self.notify = lambda: None
        self.error: str | None = None  # Slurm not answering: why
        self._jobs: list[SlurmJob] = []  # the last squeue
        self._by_id: dict[Any, SlurmJob] = {}  # the same, by Slurm job id (each tick retimes every held job)
        self._nodes: list[SlurmNode] = []  # the partition's nodes, from the last sinfo
        self._node_key: tuple[tuple[str, int, bool], ...] | None = None
        self._foreign: tuple[Any, ...] = ()
        self._reshapeable: frozenset[int] = frozenset()  # gsched's jobs pending in Slurm: any mode may be planned
        self._stopped_at: dict[int, float] = {}  # job id -> time.monotonic() a run Slurm stopped itself was seen
        self._over_at: dict[int, float] = {}  # job id -> time.monotonic() its run was first seen over without a result
        self._retry_at: dict[int, float] = {}  # job id -> time.monotonic() before which no new sbatch
        # (Slurm job id, run) of gsched's jobs Slurm held for Resources past their planned start: a plan Slurm could
        # not start, which per-node planning exists to prevent (gsched_slurm_held_past_start_total counts them)
        self.held_past_start: set[tuple[int, int]] = set()

    # --- capacity and starts ---------------------------------------------------------------------------------

    def capacity(self, start: datetime, slot_s: float, slots: int) -> dict[str, list[int]]:
        """Per node of the partition, its GPUs (none while it is down or drained), less those of jobs gsched did
        not submit, slot by slot."""
        self._read_nodes()
        nodes = self._nodes or [SlurmNode(self.config.executor.partition, len(self.devices), True, "unknown")]
        held = foreign_gpus(self._jobs, self.clock.to_wall(start), timedelta(seconds=slot_s / self.clock.speed),
                            slots, [n.name for n in nodes])
        return {n.name: [max(0, (n.gpus if n.usable else 0) - h) for h in held[n.name]] for n in nodes}

    def _read_nodes(self) -> bool:
        """sinfo; True when a node came, went, or changed its GPUs or whether it takes jobs."""
        try:
            self._nodes = self.ctl.nodes()
        except GschedError as exc:  # plan on the last list; the tick's squeue says whether Slurm is down
            log.warning("slurm: %s; planning on the last node list", exc)
            return False
        key = tuple((n.name, n.gpus, n.usable) for n in self._nodes)
        if key == self._node_key:
            return False
        if self._node_key is not None:
            log.info("slurm: partition nodes now %s", ", ".join(f"{n.name} ({n.state}, {n.gpus} GPUs)"
                                                               for n in self._nodes))
        self._node_key = key
        return True

    def prepare(self, job: Job, spec: JobSpec, mode: dict[str, Any], now: datetime) -> Intent | None:
        assert job.id is not None
        if self.error is not None or time.monotonic() < self._retry_at.get(job.id, 0.0):
            return None  # Slurm is down, or refused this job a moment ago: not again every tick
        self._retry_at.pop(job.id, None)
        try:
            pwd.getpwuid(job.owner_uid)
        except KeyError:
            raise LaunchFailed(f"cannot submit to Slurm: uid {job.owner_uid} has no user name here") from None
        handle = {"token": secrets.token_hex(8), "slurm_job_id": None, "mode": mode, "restarts": None, "nodes": None}
        return Intent(handle, int(mode["gpus"]), [], "in Slurm")

    def start(self, job: Job, spec: JobSpec, intent: Intent, now: datetime) -> Handle:
        assert job.id is not None and job.planned_start is not None and job.plan_json is not None
        plan, mode, token = json.loads(job.plan_json), intent.handle["mode"], intent.handle["token"]
        settings = self.config.executor
        try:
            owner = pwd.getpwuid(job.owner_uid).pw_name
            uid, gid = acting_ids(job.owner_uid, job.owner_uid)
            script = self._write_run(job.id, spec, mode, token, uid, gid)
            if spec.time_limit_s:  # the runner ends it at its limit; Slurm's is a backstop after that
                limit_s = spec.time_limit_s + self.config.daemon.kill_grace_s + 120
            else:
                limit_s = float(plan.get("work_s") or 3600) * (1 + settings.time_margin_pct / 100) + 600
            argv = sbatch_argv(job.id, token, owner, int(mode["gpus"]), self.clock.to_wall(job.planned_start),
                               timedelta(seconds=limit_s / self.clock.speed), mode, spec.preemptible,
                               settings.requeue_grace_s, settings.partition, settings.account, str(script),
                               str(self.runs.log_path(job.id)), str(self.runs.run_dir(job.id) / "work"),
                               planned_nodes(job))
            slurm_id = self.ctl.submit(argv)
        except (GschedError, OSError, KeyError) as exc:
            self._retry_at[job.id] = time.monotonic() + SUBMIT_RETRY_S
            raise LaunchDeferred(f"cannot submit to Slurm: {exc}") from exc
        self.store.note(job.id, at=now, reason=f"submitted to Slurm as job {slurm_id} (partition "
                                               f"{settings.partition}, begins {rfc3339(job.planned_start)})")
        log.info("job %s: submitted as Slurm job %s, begins %s", job.id, slurm_id, rfc3339(job.planned_start))
        return {**intent.handle, "slurm_job_id": slurm_id}

    def retime(self, job: Job, start: datetime, now: datetime) -> None:
        handle = handle_of(job)
        sj = self._by_id.get(handle.get("slurm_job_id"))
        if self.error is not None or sj is None or sj.state in RUNNING or sj.state in ENDED:
            return
        wall_now = self.clock.to_wall(now)
        near = timedelta(seconds=min(30.0, self.config.planner.slot_minutes * 30 / self.clock.speed))
        target = max(self.clock.to_wall(start), wall_now)
        current = max(sj.begin or wall_now, wall_now)
        nodes = planned_nodes(job)
        planned = json.loads(job.plan_json or "{}").get("mode")
        if sj.state == "PENDING" and planned and mode_key(planned) != mode_key(handle.get("mode") or {}):
            self._reshape(job, sj, handle, planned, nodes, now)  # a replan chose another mode: devices, nodes
        elif nodes and sorted(hostlist(sj.required_nodes)) != sorted(nodes):  # a replan moved it (a node went down)
            self.ctl.pin(sj.job_id, nodes)
            self.store.note(job.id or 0, at=now, reason=f"Slurm job {sj.job_id} moved to node(s) {','.join(nodes)}")
        if abs(target - current) > near:
            self.ctl.move(sj.job_id, target)
            self.store.note(job.id or 0, at=now, reason=f"Slurm job {sj.job_id} moved to begin at {rfc3339(start)}")

    def _reshape(self, job: Job, sj: SlurmJob, handle: Handle, mode: dict[str, Any], nodes: list[str],
                 now: datetime) -> None:
        """A pending Slurm job takes the mode a replan chose (a requeued job resumes on another device or node
        count): Slurm's request first, then the run file the runner reads when it starts, then the handle."""
        assert job.id is not None
        uid, gid = acting_ids(job.owner_uid, job.owner_uid)
        self.ctl.reshape(sj.job_id, spread(mode), int(mode["gpus"]) // spread(mode), nodes, mode_comment(mode))
        self._write_run(job.id, JobSpec.from_json(json.loads(job.spec_json)), mode, handle["token"], uid, gid)
        self.store.set_handle(job.id, {**handle, "mode": mode})
        where = f" on {','.join(nodes)}" if nodes else ""
        self.store.note(job.id, at=now, reason=f"Slurm job {sj.job_id} now asks for {mode['gpus']} GPU(s) on "
                                               f"{spread(mode)} node(s){where}, {mode.get('precision')}")

    def _write_run(self, job_id: int, spec: JobSpec, mode: dict[str, Any], token: str, uid: int, gid: int) -> Path:
        """The run file (the mode's GPUs on each of its nodes) and batch script in shared_dir; returns the script."""
        runfile = self.launcher.runfile(job_id, spec, [], uid, gid, mode, token, int(mode["gpus"]) // spread(mode),
                                        spread(mode))
        return self.runs.prepare(job_id, token, runfile, uid, gid, spread(mode))

    # --- following runs ----------------------------------------------------------------------------------------

    def poll(self, jobs: list[Job], now: datetime) -> list[Observation]:
        try:
            sjobs = self.ctl.jobs()
        except GschedError as exc:
            if self.error != str(exc):
                log.error("slurm: %s; following the jobs again once it answers", exc)
            self.error = str(exc)
            return []
        if self.error is not None:
            log.info("slurm answers again")
        self.error = None
        self._jobs = sjobs
        self._by_id = {j.job_id: j for j in sjobs}
        seen: list[Observation] = []
        foreign = tuple(sorted((j.job_id, j.gpus, j.end, j.nodes) for j in sjobs
                               if j.gsched_id is None and j.state in RUNNING and j.gpus))
        nodes_changed = self._read_nodes()
        # gsched's jobs back in Slurm's queue (a requeue's run is over) may take another mode from now on
        reshapeable = frozenset(j.job_id for j in sjobs if j.gsched_id is not None and j.state == "PENDING"
                                and j.restarts > 0)
        if foreign != self._foreign or nodes_changed or reshapeable - self._reshapeable:
            self._foreign = foreign  # others' jobs, or nodes, took or freed GPUs, or a held job is free: replan
            seen.append(CapacityChanged())
        self._reshapeable = reshapeable
        by_name = {j.gsched_id: j for j in sjobs if j.gsched_id is not None}
        for job in jobs:
            assert job.id is not None
            handle = handle_of(job)
            try:
                if not handle.get("token"):
                    if job.state == JobState.RUNNING:
                        seen.append(Lost(job.id, "no Slurm job is recorded for this run"))
                    continue
                if handle.get("slurm_job_id") is None:
                    # The daemon stopped between recording the intent and recording sbatch's answer. Submission runs
                    # in the tick, so none is in flight now: Slurm has the job under its name, or never got it.
                    found = by_name.get((job.id, handle["token"]))
                    if found is None:
                        seen.append(NeverStarted(job.id, "Slurm never got it"))
                        continue
                    handle = {**handle, "slurm_job_id": found.job_id}
                    job = self.store.set_handle(job.id, handle)
                    self.store.note(job.id or 0, at=now, reason=f"re-adopted Slurm job {found.job_id} after a restart")
                seen.extend(self._follow(job, handle, self._by_id.get(handle["slurm_job_id"]), now))
            except StoreError as exc:
                log.error("job %s: cannot record its Slurm state yet: %s", job.id, exc)
            except Exception as exc:  # one job's odd record or output must never stop the others
                log.exception("job %s: following its Slurm job failed", job.id)
                seen.append(Broken(job.id or 0, exc))
        return seen

    def recover(self, jobs: list[Job], now: datetime) -> list[Observation]:
        """Slurm runs on without the daemon: its jobs are followed from where Slurm has them."""
        return self.poll(jobs, now)

    def _follow(self, job: Job, handle: Handle, sj: SlurmJob | None, now: datetime) -> list[Observation]:
        assert job.id is not None
        sid, token = handle["slurm_job_id"], handle["token"]
        seen: list[Observation] = []
        if job.state != JobState.RUNNING:
            # Runs are numbered by SLURM_RESTART_COUNT; "restarts" is the last one gsched saw start. A requeued job
            # shows its old run (RUNNING, COMPLETING) until Slurm has requeued it: not a new run.
            last = handle.get("restarts")
            if sj is not None and last is not None and sj.restarts <= last:
                if sj.state in ENDED:  # ended instead of going back to the queue
                    return [self._dropped(job, sj, slurm_why(sj) + " instead of running again")]
                return []
            run = sj.restarts if sj is not None else (0 if last is None else last + 1)
            raw = self.runs.read_result(job.id, token, run, spread(handle.get("mode") or {}))
            if raw is None and sj is not None and sj.state in ENDED:
                return [self._dropped(job, sj, slurm_why(sj))]
            if raw is None and sj is None:
                return [self._dropped(job, sj, f"Slurm no longer knows job {sid}, and it left no result")]
            # COMPLETING is a run's end (a requeued one's too), never a start
            if raw is None and (sj is None or sj.state not in RUNNING or sj.state == "COMPLETING"):
                if sj is not None:
                    self._held(job, sj, now)
                return []  # still pending in Slurm
            at = self.clock.from_wall(sj.start) if sj is not None and sj.start is not None else None
            nodes = sj.nodes if sj is not None else ""
            handle = {**handle, "restarts": run, "nodes": nodes or None}
            seen.append(Started(job.id, at, sj.gpus_total if sj is not None and sj.gpus else None,
                                f"by Slurm as job {sid}" + (f" on {nodes}" if nodes else ""), handle))
        run = handle.get("restarts") or 0
        raw = self.runs.read_result(job.id, token, run, spread(handle.get("mode") or {}))
        if raw is not None:
            said = None
            if isinstance(raw, dict) and raw.get("terminated") is True and not job.cancel_requested \
                    and not job.preempt_requested and sj is not None:
                # Stopped, and not by gsched: Slurm's time limit, deadline, a node failure or its own requeue.
                # Slurm may still be recording why; give it a moment to say.
                if sj.state not in ENDED and sj.state in RUNNING and sj.restarts <= run:
                    if time.monotonic() - self._stopped_at.setdefault(job.id, time.monotonic()) < WORDS_GRACE_S:
                        return seen
                said = ((JobState.PREEMPTED, f"requeued by Slurm ({self._requeue_why(sj, handle)})")
                        if sj.restarts > run or sj.state not in ENDED else (end_state(sj), slurm_why(sj)))
            self._stopped_at.pop(job.id, None)
            self._over_at.pop(job.id, None)
            if isinstance(raw, dict) and "node_energy_j" in raw:
                self.store.note(job.id, at=now, reason=node_energy_note(raw["node_energy_j"],
                                                                       hostlist(handle.get("nodes") or ""), run))
            return [*seen, Ended(job.id, raw, said)]
        if sj is None:
            seen.append(Lost(job.id, f"Slurm no longer knows job {sid}, and its run left no result"))
        elif sj.state in ENDED:
            seen.append(Lost(job.id, slurm_why(sj) + "; its run left no result",
                             None if job.cancel_requested else end_state(sj)))
        elif sj.state not in RUNNING or sj.restarts > run:
            # Requeued (by gsched or by Slurm, after a node failure) and its run wrote nothing. Slurm shows the job
            # queued again only once the run's processes are gone, so only a shared file system's delay can still
            # bring its result: wait that long, not a kill grace.
            over = self._over_at.setdefault(job.id, time.monotonic())
            if time.monotonic() - over < RESULT_GRACE_S:
                return seen
            self._over_at.pop(job.id, None)
            self._stopped_at.pop(job.id, None)
            why = (job.preempt_reason or "requeued") if job.preempt_requested else \
                f"requeued by Slurm ({self._requeue_why(sj, handle)})"
            seen.append(Requeued(job.id, f"{why}; its run left no result"))
        return seen

    def _held(self, job: Job, sj: SlurmJob, now: datetime) -> None:
        """A pending job past its planned start (by more than the scheduler's own delay) that Slurm holds for
        Resources: the plan put it where Slurm had no room. Recorded once a run, in its history and the log."""
        late = timedelta(seconds=3 * self.config.daemon.tick_s)  # Slurm says Resources only once it tried
        if sj.state != "PENDING" or sj.reason != "Resources" or job.planned_start is None \
                or now - job.planned_start <= late or (sj.job_id, sj.restarts) in self.held_past_start:
            return
        self.held_past_start.add((sj.job_id, sj.restarts))
        log.warning("job %s: Slurm holds job %s for Resources past its planned start %s", job.id, sj.job_id,
                    rfc3339(job.planned_start))
        self.store.note(job.id or 0, at=now, reason=f"Slurm holds job {sj.job_id} for Resources past its planned "
                                                   f"start {rfc3339(job.planned_start)}")

    def _requeue_why(self, sj: SlurmJob, handle: Handle) -> str:
        """Slurm's reason, or the state of the node the run was on (a node failure leaves the reason "None")."""
        if sj.reason not in ("", "None", "BeginTime"):
            return sj.reason
        ran_on = set(hostlist(handle.get("nodes") or ""))
        gone = [f"node {n.name} {n.state}" for n in self._nodes if n.name in ran_on and not n.usable]
        return ", ".join(gone) or sj.state

    @staticmethod
    def _dropped(job: Job, sj: SlurmJob | None, reason: str) -> Dropped:
        """A job Slurm ended (or lost) before gsched saw it run: an admin's scancel, DEADLINE while pending."""
        state = JobState.CANCELLED if sj is not None and sj.state == "CANCELLED" else JobState.FAILED
        return Dropped(job.id or 0, reason, state)

    # --- requests ----------------------------------------------------------------------------------------------

    def stop(self, job: Job, requeue: bool) -> bool:
        """scancel, or scontrol requeue for a checkpoint: Slurm signals the batch shell, the runner passes it on
        and writes the result, and Slurm runs the same job again later."""
        sid = handle_of(job).get("slurm_job_id")
        if sid is None:
            return False
        if requeue:
            self.ctl.requeue(sid)
        else:
            self.ctl.cancel(sid)
        return True

    def withdraw(self, job: Job) -> None:
        sid = handle_of(job).get("slurm_job_id")
        if sid is not None:
            self.ctl.cancel(sid)  # before the record: a failed scancel leaves the job as it was

    def reclaim(self, job: Job) -> None:
        """gsched no longer follows this Slurm job: it must not run on unseen."""
        sid = handle_of(job).get("slurm_job_id")
        if sid is None:
            return
        try:
            self.ctl.cancel(sid)
        except GschedError as exc:
            log.error("job %s: %s", job.id, exc)

    def started(self, job: Job) -> bool:
        return handle_of(job).get("slurm_job_id") is not None

    def held_mode(self, job: Job) -> dict[str, Any] | None:
        """A job pending in Slurm takes any mode (retime reshapes it); one being submitted or run keeps its own."""
        handle = handle_of(job)
        sj = self._by_id.get(handle.get("slurm_job_id"))
        if not handle.get("token") or (sj is not None and sj.state == "PENDING"):
            return None
        return handle.get("mode")

    def describe(self, job: Job) -> dict[str, Any]:
        handle = handle_of(job)
        return {"slurm_job_id": handle.get("slurm_job_id"), "slurm_nodes": handle.get("nodes")}

    def log_path(self, job_id: int) -> Path:
        return self.runs.log_path(job_id)

    def close(self, running: list[Job]) -> None:
        """Slurm runs its jobs on; the Epilog restores their power caps."""
