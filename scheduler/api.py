"""The daemon's HTTP API on a Unix socket. Callers are identified by SO_PEERCRED, never by what they say.

Routes (JSON in and out; errors are {"error": message} with 400/403/404/409/413/429/503):
    GET  /v1/info                  daemon version, clock, home, forecast source
    GET  /v1/jobs                  every job, oldest first (others' env, args, command, workdir withheld)
    POST /v1/jobs                  {"text", "source", "base_dir", "urgent"} -> {"id"}   (201)
    GET  /v1/jobs/ID               one job with its events and runs
    POST /v1/jobs/ID/cancel        owner or root
    POST /v1/jobs/ID/requeue       owner or root: checkpoint a running preemptible job, back to the queue
    GET  /v1/jobs/ID/log?offset=N  owner or root; raw bytes, X-Log-Size and X-Job-State headers
    GET  /v1/devices               what the daemon schedules on
    GET  /v1/forecast?hours=48     the signals ahead, per step with its source and flags
    GET  /v1/report?since=&until=&user=   finished jobs' energy, cost and CO2 against run-now (report.py)
"""

from __future__ import annotations

import json
import logging
import math
import os
import pwd
import re
import stat
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from scheduler import dependencies
from scheduler.daemon import Daemon
from scheduler.dependencies import Dependency
from scheduler.errors import (Conflict, InputError, LimitExceeded, NotFound,
                              PermissionDenied)
from scheduler.environment import exported, from_request, job_path
from scheduler.jobfile import JobSpec, parse_job
from scheduler.models import TERMINAL, Job, JobState
from scheduler.timeutil import parse_duration_s, parse_rfc3339
from scheduler.userpath import acting_ids, owner_dir, owner_which

log = logging.getLogger("gsched.api")
LOG_CHUNK = 1 << 20
MAX_JOB_ID = 2**63 - 1
MAX_SUBMIT_FILES = 1000  # job files in one submit
SUBMIT_KEYS = {"text": str, "source": str, "base_dir": str, "urgent": bool, "environment": dict, "after": str}


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int

    @property
    def name(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def job_id(text: str) -> int:
    value = int(text)
    if value > MAX_JOB_ID:
        raise NotFound(f"no job {text[:40]}")
    return value


def time_query(query: dict[str, str], key: str) -> datetime | None:
    """A date (YYYY-MM-DD, midnight UTC) or an RFC 3339 time, or None when absent."""
    raw = query.get(key, "")
    if not raw:
        return None
    try:
        if len(raw) == 10:
            return datetime.fromisoformat(raw).replace(tzinfo=timezone.utc)
        return parse_rfc3339(raw)
    except ValueError:
        raise InputError(f"--{key}: must be a date (2026-11-28) or an RFC 3339 time, got {raw[:40]!r}") from None


def whole_query(query: dict[str, str], key: str, default: int) -> int:
    raw = query.get(key, "")
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise InputError(f"{key}: must be a whole number >= 0, got {raw[:40]!r}")
    return int(raw)


PAUSED = ("paused", "preempted by", "requeued")  # how the reasons of runs that end in PREEMPTED begin


def job_json(job: Job, totals: dict[str, Any] | None, metrics: dict[str, Any] | None = None,
             private: bool = True, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as the API shows it; ``run``: its executor's public facts about the run (Slurm's job id). ``private``:
    the caller is its owner or root and sees everything; others see id, name, owner, state, devices, times, energy,
    cost, CO2 and reasons, not what the job runs or its output."""
    totals = totals or {}
    spec = json.loads(job.spec_json)
    queued = job.state in (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED)
    plan = json.loads(job.plan_json) if job.plan_json else {}
    segments = plan.get("segments", [])
    seg_modes = plan.get("segment_modes") or [plan.get("mode")] * len(segments)
    seg_labels = plan.get("segment_labels") or [plan.get("label", "")] * len(segments)
    reason = job.plan_reason if queued else job.reason
    if queued and job.reason and job.reason.startswith(PAUSED):  # why it paused, then when it resumes
        reason = f"{job.reason}; {reason}" if reason else job.reason
    elif job.state == JobState.RUNNING and job.preempt_reason:
        reason = f"{job.preempt_reason}: checkpointing"
    elif job.state == JobState.RUNNING and plan.get("pause_at"):
        reason = f"{job.reason}; pauses at {plan['pause_at']}"
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner_name,
        "owner_uid": job.owner_uid,
        "state": job.state.value,
        "gpus": job.gpus if job.gpus is not None else job.planned_gpus,
        "gpus_min": job.gpus_min,
        "gpus_max": job.gpus_max,
        "urgent": job.urgent,
        "submitted_at": job.submitted_at,
        "deadline": job.deadline,
        "planned_start": job.planned_start,
        "planned_end": job.planned_end,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "reason": reason,
        "devices": json.loads(job.devices_json or "[]"),
        **(run or {}),
        "energy_j": totals.get("energy_j"),
        "energy_source": totals.get("energy_source"),
        "cost_eur": totals.get("cost_eur"),
        "co2_g": totals.get("co2_g"),
        "mode": plan.get("mode"),
        "segments": [{"start": a, "end": b, "gpus": m["gpus"], "mode": m, "label": label}
                     for (a, b), m, label in zip(segments, seg_modes, seg_labels)],
        "pause_at": plan.get("pause_at"),
        "metrics": (metrics or {}) if private else None,
        "workload": spec.get("workload"),
        "command": spec.get("command") if private else None,
        "args": spec.get("args") if private else None,
        "workdir": spec.get("workdir") if private else None,
        # which program `command` runs and the PATH it was found on (the submitter's, as exported)
        "command_path": spec.get("command_path") if private else None,
        "job_path": job_path(spec.get("environment") or {}, spec.get("env") or {}) if private and spec.get("command")
        else None,
        "private_withheld": not private,
        "after": [{"id": d["job_id"], "kind": d["kind"]} for d in spec.get("after", ())],
    }


class Api:
    """Routes -> daemon calls, with the authorisation rules in one place."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.store = daemon.store
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = [
            ("GET", re.compile(r"/v1/info"), self.info),
            ("GET", re.compile(r"/v1/devices"), self.devices),
            ("GET", re.compile(r"/v1/forecast"), self.forecast),
            ("GET", re.compile(r"/v1/jobs"), self.list_jobs),
            ("POST", re.compile(r"/v1/jobs"), self.submit),
            ("GET", re.compile(r"/v1/jobs/(\d+)"), self.show),
            ("POST", re.compile(r"/v1/jobs/(\d+)/cancel"), self.cancel),
            ("POST", re.compile(r"/v1/jobs/(\d+)/requeue"), self.requeue),
            ("GET", re.compile(r"/v1/jobs/(\d+)/log"), self.log),
            ("GET", re.compile(r"/v1/report"), self.report),
        ]

    def info(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, self.daemon.info()

    def devices(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, {"devices": [d.to_json() for d in self.daemon.executor.devices]}

    def forecast(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        try:
            hours = float(query.get("hours", "48") or 48)
        except ValueError:
            raise InputError("hours: must be a number in (0, 336]") from None
        if not math.isfinite(hours) or not 0 < hours <= 24 * 14:
            raise InputError("hours: must be in (0, 336]")
        now = self.daemon.clock.now()
        provider = self.daemon.provider
        return 200, {"currency": self.daemon.config.forecast.currency,
                     "points": provider.points(now, now + timedelta(hours=hours)),  # type: ignore[attr-defined]
                     "providers": [vars(st) for st in getattr(provider, "status", {}).values()],
                     "error": self.daemon.forecast_error}

    def list_jobs(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        jobs = self.store.jobs()
        totals = self.store.totals([j.id for j in jobs if j.id is not None and j.started_at is not None])
        return 200, {"now": self.daemon.clock.now(),
                     "jobs": [job_json(j, None if j.id is None else totals.get(j.id), None,
                                      caller.uid in (0, j.owner_uid), self.daemon.executor.describe(j))
                              for j in jobs]}

    def show(self, caller: Caller, query: dict[str, str], body: Any, id_text: str) -> tuple[int, Any]:
        jid = job_id(id_text)
        job, runs, events, totals = self.store.record(jid)
        private = caller.uid in (0, job.owner_uid)
        metrics = json.loads(runs[-1].metrics_json) if runs else {}
        data = job_json(job, totals, metrics, private, self.daemon.executor.describe(job))
        data["events"] = [{"at": e.at, "state": e.state.value, "reason": e.reason} for e in events]
        data["runs"] = [{"started_at": r.started_at, "finished_at": r.finished_at, "duration_s": r.duration_s,
                         "gpus": r.gpus, "mode": json.loads(r.mode_json) if r.mode_json else None, "steps": r.steps,
                         "energy_j": r.energy_j, "energy_source": r.energy_source, "cost_eur": r.cost_eur,
                         "co2_g": r.co2_g, "metrics": json.loads(r.metrics_json) if private else None} for r in runs]
        data["spec"] = json.loads(job.spec_json) if private else None
        data["dependents"] = [{"id": other.id, "kind": dep["kind"], "state": other.state.value}
                              for other in self.store.dependents(jid)
                              for dep in json.loads(other.spec_json).get("after", ()) if dep["job_id"] == jid]
        return 200, data

    def report(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        since, until = time_query(query, "since"), time_query(query, "until")
        user = query.get("user") or None
        if user is not None and len(user) > 256:
            raise InputError("user: longer than 256 characters")
        return 200, self.daemon.report(since, until, user)

    def submit(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """One job file, or a list of them (``gsched submit A B ...``): all are checked before any is stored, and
        they are stored together, so they are planned together (the demo's event clock has not moved between
        them)."""
        daemon = self.daemon
        if daemon.uid != 0 and caller.uid not in (0, daemon.uid):
            owner = pwd.getpwuid(daemon.uid).pw_name
            raise PermissionDenied(f"this daemon runs as {owner}, not root: only {owner} and root may submit")
        items = body if isinstance(body, list) else [body]
        if not 1 <= len(items) <= MAX_SUBMIT_FILES:
            raise InputError(f"request body: a list of 1..{MAX_SUBMIT_FILES} job objects, got {len(items)}")
        limits = daemon.config.limits
        if limits.max_queued_jobs_per_user and caller.uid != 0 \
                and self.store.count_queued(caller.uid) + len(items) > limits.max_queued_jobs_per_user:
            raise LimitExceeded(f"{caller.name} would have more than {limits.max_queued_jobs_per_user} jobs queued "
                                f"(limits.max_queued_jobs_per_user); wait for some to start or cancel some")
        checked = [self._checked(caller, item) for item in items]
        now = daemon.clock.now()
        jobs = [self.store.add_job(spec, owner_uid=caller.uid, owner_name=caller.name, urgent=urgent, now=now)
                for spec, urgent in checked]
        daemon.wake()
        replies = [{"id": job.id, "name": job.name, "state": job.state.value} for job in jobs]
        return 201, replies if isinstance(body, list) else replies[0]

    def _checked(self, caller: Caller, body: Any) -> tuple[JobSpec, bool]:
        """One job object of a submit, validated: its spec and whether it is urgent (--now)."""
        daemon = self.daemon
        if not isinstance(body, dict):
            raise InputError('request body must be a JSON object {"text": job file contents, "source", "base_dir", '
                             '"urgent"}, or a list of them')
        for key, value in body.items():
            if key not in SUBMIT_KEYS:
                raise InputError(f"request body: {str(key)[:40]}: unknown key (known: {', '.join(SUBMIT_KEYS)})")
            if not isinstance(value, SUBMIT_KEYS[key]):
                raise InputError(f"request body: {key}: must be a JSON {SUBMIT_KEYS[key].__name__}, "
                                 f"got {type(value).__name__}")
        if "text" not in body:
            raise InputError("request body: text: required (the job file's contents)")
        source = body.get("source") or "job.toml"
        if len(source) > 4096 or "\0" in source:
            raise InputError("request body: source: at most 4096 characters, no NUL")
        base_dir = Path(body.get("base_dir") or "/")
        if not base_dir.is_absolute():
            raise InputError(f"request body: base_dir: must be an absolute path, got {str(base_dir)[:200]!r}")
        limits = daemon.config.limits
        uid, gid = acting_ids(caller.uid, caller.gid)
        spec = parse_job(body["text"], source=source, base_dir=base_dir, now=daemon.clock.now(),
                         default_max_delay_s=parse_duration_s(daemon.config.default_max_delay),
                         resolve_dir=lambda path: owner_dir(uid, gid, path))
        spec = self._in_environment(spec, from_request(body.get("environment")), uid, gid, caller, source)
        spec = replace(spec, after=self._predecessors(caller, source, spec.after, body.get("after")))
        if spec.gpus_min > len(daemon.executor.devices):
            raise InputError(f"{source}: gpus: needs {spec.gpus_min} devices, this daemon schedules on "
                             f"{len(daemon.executor.devices)}")
        try:
            daemon.profiles.modes_of(spec, caller.uid)  # a command with steps and no duration needs its profile
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        if limits.max_gpus_per_user and caller.uid != 0 and spec.gpus_min > limits.max_gpus_per_user:
            raise LimitExceeded(f"{source}: gpus: needs {spec.gpus_min} devices, limits.max_gpus_per_user is "
                                f"{limits.max_gpus_per_user}")
        return spec, bool(body.get("urgent", False))

    def _predecessors(self, caller: Caller, source: str, in_file: tuple[Dependency, ...],
                      option: str | None) -> tuple[Dependency, ...]:
        """The job file's ``after`` and the submit's ``--dependency``, each predecessor an existing job of the
        submitter's (root's may wait for anyone's). A new job can only wait for jobs stored before it, so no
        dependency can close a cycle."""
        try:
            found = dependencies.unique([*in_file, *(dependencies.parse(option) if option else ())])
        except ValueError as exc:
            raise InputError(f"--dependency: {exc}") from None
        for dep in found:
            try:
                other = self.store.get(dep.job_id)
            except NotFound:
                raise InputError(f"{source}: after: job {dep.job_id} does not exist") from None
            if caller.uid not in (0, other.owner_uid):
                raise PermissionDenied(f"{source}: after: job {dep.job_id} belongs to {other.owner_name}; a job "
                                       f"may wait only for its owner's jobs")
        return found

    def _owned(self, caller: Caller, id_text: str, action: str) -> Job:
        job = self.store.get(job_id(id_text))
        if caller.uid not in (0, job.owner_uid):
            raise PermissionDenied(f"job {job.id} belongs to {job.owner_name}: only its owner or root may {action}")
        return job

    @staticmethod
    def _in_environment(spec: JobSpec, environment: dict[str, str], uid: int, gid: int, caller: Caller,
                        source: str) -> JobSpec:
        """The submitter's environment as the job file's ``export`` keeps it, and command[0] found on the job's
        PATH as its owner would find it: a command that is not there is refused now, naming the PATH searched."""
        environment = exported(environment, spec.export)
        command_path = None
        if spec.command and "/" not in spec.command[0]:
            path = job_path(environment, spec.env)
            try:
                command_path = owner_which(uid, gid, spec.command[0], path, spec.workdir)
            except ValueError as exc:
                raise InputError(f"{source}: command: {exc}") from None
            if command_path is None:
                raise InputError(f"{source}: command: {spec.command[0][:200]!r} is not on the job's PATH as "
                                 f"{caller.name} sees it ({path[:1000]}); give its full path, or submit from a "
                                 "shell where it is on PATH (the job file's export decides what is kept)")
        return replace(spec, environment=environment, command_path=command_path)

    def cancel(self, caller: Caller, query: dict[str, str], body: Any, job_id: str) -> tuple[int, Any]:
        job = self._owned(caller, job_id, "cancel it")
        if job.state in TERMINAL:
            raise Conflict(f"job {job_id} already ended ({job.state.value})")
        job = self.daemon.cancel(job)
        return 200, {"id": job.id, "state": job.state.value, "cancel_requested": job.cancel_requested}

    def requeue(self, caller: Caller, query: dict[str, str], body: Any, job_id: str) -> tuple[int, Any]:
        job = self.daemon.requeue(self._owned(caller, job_id, "requeue it"))
        return 200, {"id": job.id, "state": job.state.value, "preempt_requested": job.preempt_requested}

    def log(self, caller: Caller, query: dict[str, str], body: Any, job_id: str) -> tuple[int, Any]:
        job = self._owned(caller, job_id, "read its log")
        offset = whole_query(query, "offset", 0)
        assert job.id is not None
        path = self.daemon.log_path(job.id)
        size, chunk = 0, b""
        try:  # under Slurm the log is in the owner's directory: never follow a link, read only a regular file
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Conflict(f"job {job.id}: its log cannot be read: {exc.strerror}") from exc
        else:
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    size = f.seek(0, os.SEEK_END)
                    f.seek(min(offset, size))
                    chunk = f.read(LOG_CHUNK)
        return 200, (chunk, {"X-Log-Size": str(size), "X-Job-State": job.state.value})

    def handle(self, method: str, path: str, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for route_method, pattern, fn in self.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return fn(caller, query, body, *match.groups())
        raise NotFound(f"no route {method} {path[:100]}")


