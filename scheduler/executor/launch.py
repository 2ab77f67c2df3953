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
from scheduler.environment import SERVICE_PATH
from scheduler.executor.procs import TOKEN_VAR, RunGroup, alive, proc_start_ticks
from scheduler.jobfile import JobSpec

# Python reads these before any of a workload's code runs; a workload is gsched's own code from the
# installed package, so none may point it at modules of the owner's choosing. PYTHONSAFEPATH keeps the
# workdir off the module path (`python -m jobs.linear` would otherwise run a planted jobs/linear.py),
# for torchrun's workers too.
UNSAFE_FOR_WORKLOADS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
                        "PYTHONPLATLIBDIR", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE", "PYTHONSAFEPATH")


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    start_ticks: int


class Launcher:
    def __init__(self, paths: Paths, config: Config, cgroup_base: Path | None = None) -> None:
        self.paths, self.config, self.cgroup_base = paths, config, cgroup_base

    def claim_path(self, job_id: int, token: str) -> Path:
        return self.paths.runs / str(job_id) / f"claim-{token}"

    def group(self, job_id: int, token: str) -> RunGroup:
        cgroup = self.cgroup_base / f"job-{job_id}-{token}" if self.cgroup_base is not None else None
        return RunGroup(token, cgroup)

    def read_claim(self, job_id: int, token: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.claim_path(job_id, token).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"by": "unreadable"}
        return data if isinstance(data, dict) else {"by": "unreadable"}

    def give_up(self, job_id: int, token: str) -> bool:
        """Take a start back from a runner that has not claimed it yet (after a daemon crash). True: the
        runner will never run the job. False: the runner claimed it first."""
        from scheduler.executor.runner import claim

        path = self.claim_path(job_id, token)
        if not path.parent.is_dir():
            return True
        return claim(path, {"by": "daemon", "reason": "start given up after a daemon restart"})

    def log_path(self, job_id: int) -> Path:
        return self.paths.logs / f"{job_id}.log"

    def result_path(self, job_id: int) -> Path:
        return self.paths.runs / str(job_id) / "result.json"

    def work_dir(self, job_id: int) -> Path:
        """Where the job itself may write (its checkpoint): owned by the job's owner."""
        return self.paths.runs / str(job_id) / "work"

    def job_env(self, job_id: int, spec: JobSpec, devices: list[Device], owner_uid: int,
                mode: dict[str, Any] | None = None, token: str = "", processes: int = 1,
                cpus_per_gpu: int = 1) -> dict[str, str]:
        """``processes``: the run's processes on this host; ``cpus_per_gpu``: a local GPU's share of the host's CPUs.
        Together they set the run's torch threads."""
        mode = mode or {}
        try:
            account = pwd.getpwuid(owner_uid)
            home, user = account.pw_dir, account.pw_name
        except KeyError:
            home, user = "/", str(owner_uid)
        # The service's baseline, then the submitter's environment (as the job file's export keeps it), then the
        # job file's env table; gsched's own variables below always win.
        env = {
            "PATH": os.environ.get("PATH", SERVICE_PATH),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
        }
        env.update(spec.environment)
        env.update(spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        if spec.workload is not None:
            for key in UNSAFE_FOR_WORKLOADS:
                env.pop(key, None)
            env.update(PYTHONSAFEPATH="1", PYTHONNOUSERSITE="1")
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
            GSCHED_STEPS=str(spec.steps or ""),
            CUDA_VISIBLE_DEVICES=uuids if devices and devices[0].kind == "gpu" else "",
        )
        env[TOKEN_VAR] = token
        if devices:  # the CPUs gsched gave the run, shared by its processes, whatever the submitter's shell says:
            # torch's default, a thread per core of the host in every process, oversubscribes a shared host
            cpus = len(devices) * (1 if devices[0].kind == "cpu" else cpus_per_gpu)
            env["OMP_NUM_THREADS"] = str(max(1, cpus // max(1, processes)))
        if devices and devices[0].kind == "cpu":
            env["GLOO_SOCKET_IFNAME"] = "lo"  # DDP between processes on this host
        return env

    def runfile(self, job_id: int, spec: JobSpec, devices: list[Device], owner_uid: int, owner_gid: int,
                mode: dict[str, Any] | None, token: str, processes: int, nodes: int = 1,
                cpus_per_gpu: int = 1) -> dict[str, Any]:
        """What the runner reads: the program, its environment and the limits of one run (``processes`` on each
        of ``nodes``)."""
        per_node = processes if spec.workload is not None else 1  # a command is one process; they share the CPUs
        return {
            "token": token,
            "argv": spec.argv(sys.executable, processes, nodes),
            "processes": per_node,
            "cwd": spec.workdir,
            "env": self.job_env(job_id, spec, devices, owner_uid, mode, token, per_node, cpus_per_gpu),
            "uid": owner_uid,
            "gid": owner_gid,
            "device_kind": devices[0].kind if devices else "gpu",
            "device_uuids": [d.uuid for d in devices],
            "cpu_cores": [c for c in (core_of(d) for d in devices) if c is not None],
            "time_limit_s": spec.time_limit_s,
            "kill_grace_s": self.config.daemon.kill_grace_s,
            "cpu_watts_per_core": self.config.energy.cpu_watts_per_core,
            "power_sample_s": self.config.energy.power_sample_s,
            "max_log_bytes": int(self.config.daemon.max_log_mb * 1024 * 1024),
        }

    def prepare(self, job_id: int, spec: JobSpec, devices: list[Device], owner_uid: int, owner_gid: int,
                mode: dict[str, Any] | None, token: str, cpus_per_gpu: int = 1) -> Path:
        """Everything a run needs before its runner starts: its directories, cgroup and run file."""
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
        group = self.group(job_id, token)
        group.create()
        runfile = {**self.runfile(job_id, spec, devices, owner_uid, owner_gid, mode, token, len(devices),
                                  cpus_per_gpu=cpus_per_gpu),
                   "claim_path": str(self.claim_path(job_id, token)),
                   "cgroup": str(group.cgroup) if group.cgroup else None,
                   "result_path": str(result)}
        path = run_dir / f"run-{token}.json"
        path.write_text(json.dumps(runfile))
        return path

    def start(self, job_id: int, path: Path, token: str) -> Launched:
        """Start the runner of a prepared run, in a session of its own."""
        fd = os.open(self.log_path(job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "scheduler.executor.runner", str(path)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=path.parent, close_fds=True, env={**os.environ, TOKEN_VAR: token},
            )
        finally:
            os.close(fd)
        ticks = proc_start_ticks(process.pid)
        return Launched(process, ticks if ticks is not None else -1)

    def read_result(self, job_id: int) -> Any:
        """The raw result (untrusted: validate with untrusted.parse_result), or None before there is one."""
        try:
            with self.result_path(job_id).open("rb") as f:
                data = f.read(1 << 20)
            return json.loads(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {"exit_code": None, "error": "runner result unreadable"}

    @staticmethod
    def signal(pid: int, start_ticks: int, signum: int = signal.SIGTERM) -> bool:
        """Signal a runner, only if the pid is still that runner; it passes the signal to the job's process
        group and kills what is left after the grace period."""
        if not alive(pid, start_ticks):
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
