"""The daemon's HTTP API on a Unix socket. Callers are identified by SO_PEERCRED, never by what they say.

Routes (JSON in and out; errors are {"error": message} with 400/403/404/409):
    GET  /v1/info                  daemon version, clock, home, forecast source
    GET  /v1/jobs                  every job, oldest first
    POST /v1/jobs                  {"text", "source", "base_dir", "urgent"} -> {"id"}   (201)
    GET  /v1/jobs/ID               one job with its events and runs
    POST /v1/jobs/ID/cancel        owner or root
    POST /v1/jobs/ID/requeue       owner or root: checkpoint a running preemptible job, back to the queue
    GET  /v1/jobs/ID/log?offset=N  owner or root; raw bytes, X-Log-Size and X-Job-State headers
    GET  /v1/devices               what the daemon schedules on
    GET  /v1/forecast?hours=48     the signals ahead, per step with its source and flags
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import socket
import socketserver
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from scheduler.daemon import Daemon
from scheduler.errors import HTTP_STATUS, Conflict, GschedError, InputError, NotFound, PermissionDenied
from scheduler.jobfile import parse_job
from scheduler.models import TERMINAL, Job, JobState
from scheduler.timeutil import parse_duration_s, rfc3339

log = logging.getLogger("gsched.api")
MAX_BODY = 1 << 20
LOG_CHUNK = 1 << 20


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


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    raise TypeError(type(value).__name__)


def job_json(job: Job, totals: dict[str, Any] | None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    totals = totals or {}
    spec = json.loads(job.spec_json)
    queued = job.state in (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED)
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
        "reason": job.plan_reason if queued else job.reason,
        "devices": json.loads(job.devices_json or "[]"),
        "energy_j": totals.get("energy_j"),
        "energy_source": totals.get("energy_source"),
        "cost_eur": totals.get("cost_eur"),
        "co2_g": totals.get("co2_g"),
        "mode": json.loads(job.plan_json)["mode"] if job.plan_json else None,
        "metrics": metrics or {},
        "workload": spec.get("workload"),
        "command": spec.get("command"),
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
        ]

    def info(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, self.daemon.info()

    def devices(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, {"devices": [d.to_json() for d in self.daemon.devices]}

    def forecast(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        hours = float(query.get("hours", "48") or 48)
        if not 0 < hours <= 24 * 14:
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
        return 200, {"now": self.daemon.clock.now(), "jobs": [job_json(j, totals.get(j.id)) for j in jobs]}

    def show(self, caller: Caller, query: dict[str, str], body: Any, job_id: str) -> tuple[int, Any]:
        job = self.store.get(int(job_id))
        runs = self.store.measurements(int(job_id))
        metrics = json.loads(runs[-1].metrics_json) if runs else {}
        data = job_json(job, self.store.totals([int(job_id)]).get(int(job_id)), metrics)
        data["events"] = [{"at": e.at, "state": e.state.value, "reason": e.reason}
                          for e in self.store.events(int(job_id))]
        data["runs"] = [{"started_at": r.started_at, "finished_at": r.finished_at, "duration_s": r.duration_s,
                         "energy_j": r.energy_j, "energy_source": r.energy_source, "cost_eur": r.cost_eur,
                         "co2_g": r.co2_g, "metrics": json.loads(r.metrics_json)} for r in runs]
        data["spec"] = json.loads(job.spec_json)
        return 200, data

    def submit(self, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        daemon = self.daemon
        if daemon.uid != 0 and caller.uid not in (0, daemon.uid):
            owner = pwd.getpwuid(daemon.uid).pw_name
            raise PermissionDenied(f"this daemon runs as {owner}, not root: only {owner} and root may submit")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise InputError("request body must be {\"text\": job file contents, \"source\", \"base_dir\"}")
        source = str(body.get("source") or "job.toml")
        spec = parse_job(body["text"], source=source, base_dir=Path(str(body.get("base_dir") or "/")),
                         now=daemon.clock.now(), default_max_delay_s=parse_duration_s(daemon.config.default_max_delay))
        if spec.gpus_min > len(daemon.devices):
            raise InputError(f"{source}: gpus: needs {spec.gpus_min} devices, this daemon schedules on "
                             f"{len(daemon.devices)}")
        job = self.store.add_job(spec, owner_uid=caller.uid, owner_name=caller.name, urgent=bool(body.get("urgent")),
                                 now=daemon.clock.now())
        daemon.wake()
        return 201, {"id": job.id, "name": job.name, "state": job.state.value}

    def _owned(self, caller: Caller, job_id: str, action: str) -> Job:
        job = self.store.get(int(job_id))
        if caller.uid not in (0, job.owner_uid):
            raise PermissionDenied(f"job {job_id} belongs to {job.owner_name}: only its owner or root may {action}")
        return job

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
        offset = int(query.get("offset", "0") or 0)
        path = self.daemon.launcher.log_path(int(job_id))
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(min(offset, size))
                chunk = f.read(LOG_CHUNK)
        except FileNotFoundError:
            size, chunk = 0, b""
        return 200, (chunk, {"X-Log-Size": str(size), "X-Job-State": job.state.value})

    def handle(self, method: str, path: str, caller: Caller, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for route_method, pattern, fn in self.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return fn(caller, query, body, *match.groups())
        raise NotFound(f"no route {method} {path}")


class _Handler(BaseHTTPRequestHandler):
    server: "ApiServer"
    protocol_version = "HTTP/1.0"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _caller(self) -> Caller:
        creds = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return Caller(*struct.unpack("3i", creds))

    def _send(self, status: int, payload: Any) -> None:
        headers: dict[str, str] = {}
        if isinstance(payload, tuple):
            data, headers = payload
            content_type = "application/octet-stream"
        else:
            data = json.dumps(payload, default=_json_default).encode()
            content_type = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise InputError(f"request body larger than {MAX_BODY} bytes")
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = self.server.api.handle(method, url.path, self._caller(), query, body)
        except GschedError as exc:
            status = next((code for cls, code in HTTP_STATUS.items() if isinstance(exc, cls)), 500)
            payload = {"error": str(exc), "kind": type(exc).__name__}
        except (ValueError, TypeError) as exc:
            status, payload = 400, {"error": f"bad request: {exc}", "kind": "InputError"}
        except Exception as exc:  # never let one request take the daemon down
            log.exception("request %s %s failed", method, self.path)
            status, payload = 500, {"error": f"internal error: {exc}", "kind": "GschedError"}
        self._send(status, payload)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # the default 5 refuses bursts of concurrent clients outright

    def __init__(self, path: Path, api: Api) -> None:
        self.api = api
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # a stale socket from a daemon that died
            else:
                raise GschedError(f"another gsched daemon is already listening on {path}")
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o666)  # anyone may connect; SO_PEERCRED decides what they may do
