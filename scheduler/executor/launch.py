"""Start, watch and signal job runners. The daemon holds no state here that the database lacks:
a runner is found again by its pid and the start time the kernel gives that pid.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.config import Config, Paths
from scheduler.devices import Device, core_of
from scheduler.jobfile import JobSpec


def proc_start_ticks(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def runner_alive(pid: int | None, start_ticks: int | None) -> bool:
    return pid is not None and start_ticks is not None and proc_start_ticks(pid) == start_ticks


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    start_ticks: int


class Launcher:
    def __init__(self, paths: Paths, config: Config) -> None:
        self.paths, self.config = paths, config

    def log_path(self, job_id: int) -> Path:
        return self.paths.logs / f"{job_id}.log"

    def result_path(self, job_id: int) -> Path:
        return self.paths.runs / str(job_id) / "result.json"

    def work_dir(self, job_id: int) -> Path:
        """Where the job itself may write (its checkpoint): owned by the job's owner."""
        return self.paths.runs / str(job_id) / "work"

    def job_env(self, job_id: int, spec: JobSpec, devices: list[Device], owner_uid: int,
                mode: dict[str, Any] | None = None) -> dict[str, str]:
        mode = mode or {}
        try:
            account = pwd.getpwuid(owner_uid)
            home, user = account.pw_dir, account.pw_name
        except KeyError:
            home, user = "/", str(owner_uid)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(spec.env)
        uuids = ",".join(d.uuid for d in devices)
        env.update(
            GSCHED_JOB_ID=str(job_id),
            GSCHED_JOB_NAME=spec.name,
            GSCHED_DEVICES=uuids,
            GSCHED_NUM_DEVICES=str(len(devices)),
            GSCHED_PRECISION=str(mode.get("precision", "fp32")),
            GSCHED_PRUNING=str(mode.get("pruning", 0.0)),
            GSCHED_COMPILE="1" if mode.get("compile") else "0",
            GSCHED_CHECKPOINT=str(self.work_dir(job_id) / "checkpoint.pt"),
            CUDA_VISIBLE_DEVICES=uuids if devices and devices[0].kind == "gpu" else "",
        )
        if devices and devices[0].kind == "cpu":
            env.setdefault("OMP_NUM_THREADS", "1" if spec.workload and len(devices) > 1 else str(len(devices)))
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # DDP between processes on this host
        return env

    def start(self, job_id: int, spec: JobSpec, devices: list[Device], owner_uid: int, owner_gid: int,
              mode: dict[str, Any] | None = None) -> Launched:
        run_dir = self.paths.runs / str(job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.paths.runs.chmod(0o711)
        run_dir.chmod(0o711)  # the owner may reach its work dir inside, not read the run files
        work = self.work_dir(job_id)
        work.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(work, owner_uid, owner_gid)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        result = self.result_path(job_id)
        result.unlink(missing_ok=True)
        runfile: dict[str, Any] = {
            "argv": spec.argv(sys.executable, len(devices)),
            "cwd": spec.workdir,
            "env": self.job_env(job_id, spec, devices, owner_uid, mode),
            "uid": owner_uid,
            "gid": owner_gid,
            "device_kind": devices[0].kind,
            "device_uuids": [d.uuid for d in devices],
            "cpu_cores": [c for c in (core_of(d) for d in devices) if c is not None],
            "time_limit_s": spec.time_limit_s,
            "kill_grace_s": self.config.daemon.kill_grace_s,
            "cpu_watts_per_core": self.config.energy.cpu_watts_per_core,
            "power_sample_s": self.config.energy.power_sample_s,
            "log_path": str(self.log_path(job_id)),
            "result_path": str(result),
        }
        path = run_dir / "run.json"
        path.write_text(json.dumps(runfile))
        fd = os.open(self.log_path(job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "scheduler.executor.runner", str(path)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=run_dir, close_fds=True,
            )
        finally:
            os.close(fd)
        ticks = proc_start_ticks(process.pid)
        return Launched(process, ticks if ticks is not None else -1)

    def read_result(self, job_id: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path(job_id).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"exit_code": None, "error": "runner result unreadable"}

    @staticmethod
    def signal(pid: int, start_ticks: int, signum: int = signal.SIGTERM) -> bool:
        """Signal a runner's whole process group (the job too), only if the pid is still that runner."""
        if not runner_alive(pid, start_ticks):
            return False
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return False
        return True
