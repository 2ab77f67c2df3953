#!/usr/bin/env python3
"""A small fake of Slurm's client commands for unit tests where no real Slurm can run (not root, no apt).

One script behind the names sbatch, squeue, sinfo, scontrol, scancel and runuser (symlinks in a directory put
first on PATH). State is a JSON file ($FAKE_SLURM_STATE): jobs as `squeue --json` shows them, and every command
line run. Nothing runs by itself: a test moves a job along with `fake_slurm.py start|finish ID`, which runs the
batch script as it would run on a node (CUDA_VISIBLE_DEVICES and SLURM_* set), or `end ID STATE [REASON]`
(Slurm ending it itself), or `timeout ID [SECONDS]` (its batch script run, then TERMed at a time limit).
After `fake_slurm.py fail squeue,sinfo` those commands exit 1 like a controller that
does not answer (`fail ""` heals it).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_STATE", "/tmp/fake-slurm.json"))


def load() -> dict:
    if STATE.exists():
        return json.loads(STATE.read_text())
    return {"next": 100, "jobs": [], "calls": [], "gpus": int(os.environ.get("FAKE_SLURM_GPUS", "4"))}


def save(state: dict) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, STATE)


def option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def find(state: dict, job_id: str) -> dict:
    for job in state["jobs"]:
        if str(job["job_id"]) == job_id:
            return job
    sys.exit(f"slurm_load_jobs error: Invalid job id specified ({job_id})")


def main() -> None:
    name, argv = Path(sys.argv[0]).name, sys.argv[1:]
    if name == "runuser":  # runuser -u USER -- CMD...: the fake runs it as the caller, recording the user
        user, cmd = argv[1], argv[argv.index("--") + 1:]
        os.environ["FAKE_SLURM_USER"] = user
        os.execvpe(cmd[0], cmd, os.environ)
    with open(STATE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the daemon's commands and the test's moves run concurrently
        state = load()
        if name in state.get("fail", []):
            state["refused"] = state.get("refused", 0) + (name == "sbatch")
            save(state)
            sys.exit(f"{name}: error: Unable to contact slurm controller (connect failure)")
        command(name, argv, state)
        save(state)


def command(name: str, argv: list[str], state: dict) -> None:
    state["calls"].append([name, *argv])
    now = int(time.time())
    if name == "sbatch":
        job_id, state["next"] = state["next"], state["next"] + 1
        gres = option(argv, "gres") or "gpu:0"
        state["jobs"].append({
            "job_id": job_id, "name": option(argv, "job-name") or "", "job_state": "PENDING",
            "state_reason": "BeginTime", "tres_per_node": f"gres:{gres}", "eligible_time": now,
            "start_time": 0, "end_time": 0, "restart_cnt": 0, "exit_code": 0, "nodes": "",
            "user_name": os.environ.get("FAKE_SLURM_USER", "root"), "comment": option(argv, "comment") or "",
            "script": argv[-1], "output": option(argv, "output") or "/dev/null"})
        print(job_id)
    elif name == "squeue":
        print(json.dumps({"meta": {}, "errors": [], "jobs": state["jobs"]}))
    elif name == "sinfo":
        print(json.dumps({"nodes": [{"name": "node1", "state": "IDLE", "partitions": ["gpu"],
                                     "gres": f"gpu:{state['gpus']}"}]}))
    elif name == "scancel":
        job = find(state, argv[-1])
        if job["job_state"] in ("PENDING", "RUNNING"):
            job["job_state"], job["end_time"] = "CANCELLED", now
    elif name == "scontrol" and argv[0] == "update":
        job = find(state, argv[1].split("=", 1)[1])
        when = argv[2].split("=", 1)[1]
        job["eligible_time"] = now if when == "now" else int(time.mktime(time.strptime(when, "%Y-%m-%dT%H:%M:%S")))
    elif name == "scontrol" and argv[0] == "requeue":
        job = find(state, argv[1])
        job["job_state"], job["state_reason"], job["restart_cnt"] = "PENDING", "BeginTime", job["restart_cnt"] + 1
    elif name == "fake_slurm.py" and argv[0] == "fail":
        state["fail"] = [n for n in argv[1].split(",") if n]
    elif name == "fake_slurm.py" and argv[0] == "end":
        job = find(state, argv[1])
        job.update(job_state=argv[2], state_reason=argv[3] if len(argv) > 3 else "None", end_time=now)
    elif name == "fake_slurm.py" and argv[0] == "timeout":  # Slurm's time limit: TERM to the job, then TIMEOUT
        job = find(state, argv[1])
        with open(job["output"], "ab") as out:
            batch = subprocess.Popen([job["script"]], env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"}, stdout=out,
                                     stderr=out, start_new_session=True)
            time.sleep(float(argv[2]) if len(argv) > 2 else 2.0)
            os.killpg(batch.pid, 15)
            batch.wait(timeout=60)
        job.update(job_state="TIMEOUT", state_reason="TimeLimit", end_time=int(time.time()), exit_code=15)
    elif name == "fake_slurm.py" and argv[0] in ("start", "finish"):
        job = find(state, argv[1])
        if argv[0] == "start":
            job.update(job_state="RUNNING", state_reason="None", start_time=now, nodes="node1")
        else:
            gpus = int(job["tres_per_node"].rsplit(":", 1)[1])
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus))),
                   "SLURM_JOB_ID": str(job["job_id"]), "SLURM_RESTART_COUNT": str(job["restart_cnt"])}
            with open(job["output"], "ab") as out:
                code = subprocess.run([job["script"]], env=env, stdout=out, stderr=out).returncode
            job.update(job_state="COMPLETED" if code == 0 else "FAILED", end_time=int(time.time()),
                       exit_code=code << 8)
    else:
        sys.exit(f"fake slurm: {name} {' '.join(argv)}: not faked")


if __name__ == "__main__":
    main()
