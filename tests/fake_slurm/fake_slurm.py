#!/usr/bin/env python3
"""A small fake of Slurm's client commands, for machines where no real Slurm can run (not root, no apt).

One script behind the names sbatch, squeue, sinfo, scontrol, scancel and runuser (symlinks in a directory put
first on PATH). State is a JSON file ($FAKE_SLURM_STATE): jobs as `squeue --json` shows them, and every command
line run. Like slurmctld it moves jobs along by itself, each time any of its commands runs (the daemon's squeue
every tick drives it): a pending job whose begin time has come starts when its GPUs are free, its batch script
run detached as on a node (CUDA_VISIBLE_DEVICES and SLURM_* set); a job whose script ended is COMPLETED or
FAILED; one past its time limit is signalled and ends TIMEOUT. Where the real Slurm 22.05 does (NOTES.md), a job
being stopped shows COMPLETING until its processes are gone, and `scontrol requeue` holds the job about two
minutes (Reason=BeginTime) unless its start is set again. The contract suite (test_executor_contract.py) runs
the same cases against this fake and a real Slurm, so the fake cannot drift from it.

Test hooks: `fake_slurm.py fail squeue,sinfo` makes those commands exit 1 like a controller that does not answer
(`fail ""` heals it), and nothing moves meanwhile; `fake_slurm.py end ID STATE [REASON]` ends a job as Slurm
would on its own (DEADLINE, NODE_FAIL); `fake_slurm.py expire ID` makes a running job's time limit come now;
`fake_slurm.py hold 1` keeps pending jobs from starting (`hold 0` lets them).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_STATE", "/tmp/fake-slurm.json"))
REQUEUE_HOLD_S = 120  # Slurm 22.05 holds a requeued job this long (Reason=BeginTime) unless its start is set
KILL_WAIT_S = 30  # SIGKILL this long after SIGTERM, as Slurm's KillWait


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


def epoch(text: str, now: int) -> int:
    return now if text == "now" else int(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))


def gpus_of(job: dict) -> int:
    return int(job["tres_per_node"].rsplit(":", 1)[1])


def exit_file(job: dict) -> Path:
    return STATE.parent / f"fake-slurm-{job['job_id']}-{job['restart_cnt']}.exit"


def alive(job: dict) -> bool:
    return job.get("pgid") is not None and not exit_file(job).exists()


def signal_job(job: dict, signum: int) -> None:
    try:
        os.killpg(job["pgid"], signum)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def launch(job: dict, now: int) -> None:
    """Run the batch script detached, as slurmd would on the node; its exit status lands in a file."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus_of(job)))),
           "SLURM_JOB_ID": str(job["job_id"]), "SLURM_RESTART_COUNT": str(job["restart_cnt"]),
           "SLURM_JOB_GPUS": ",".join(map(str, range(gpus_of(job)))), "SLURMD_NODENAME": "node1",
           "SLURM_CPUS_ON_NODE": "1"}  # Slurm's default allocation: one CPU for the one task
    exit_file(job).unlink(missing_ok=True)
    with open(job["output"], "ab") as out:
        # slurmstepd stands outside the job's process group; this wrapper shares it, so it traps TERM (a handler,
        # which the script does not inherit, unlike an ignored signal) to outlive the script and record its status.
        batch = subprocess.Popen(["sh", "-c", 'trap : TERM; "$0"; echo $? > "$1"', job["script"], str(exit_file(job))],
                                 env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                                 cwd=job.get("chdir") or "/")
    job.update(job_state="RUNNING", state_reason="None", start_time=now, nodes="node1", pgid=batch.pid,
               end_time=now + job["time_min"] * 60)


def progress(state: dict, now: int) -> None:
    """What slurmctld would have done since the last look."""
    for job in state["jobs"]:
        if job["job_state"] in ("RUNNING", "COMPLETING") and job.get("stopping_at") \
                and now - job["stopping_at"] >= KILL_WAIT_S and alive(job):
            signal_job(job, signal.SIGKILL)
            exit_file(job).write_text("137\n")  # the wrapper died with it
        if job["job_state"] == "RUNNING" and not alive(job):
            code = int(exit_file(job).read_text().strip() or 1)
            job.update(job_state="COMPLETED" if code == 0 else "FAILED", end_time=now, exit_code=code << 8)
        elif job["job_state"] == "RUNNING" and now >= job["end_time"]:
            signal_job(job, signal.SIGTERM)
            job.update(job_state="COMPLETING", state_reason="TimeLimit", stopping_at=now, then="TIMEOUT")
        elif job["job_state"] == "COMPLETING" and not alive(job):
            then = job.pop("then")
            job.pop("stopping_at", None)
            if then == "REQUEUE":
                job.update(job_state="PENDING", state_reason="BeginTime", restart_cnt=job["restart_cnt"] + 1,
                           eligible_time=now + REQUEUE_HOLD_S, start_time=0, end_time=0, pgid=None)
            else:
                job.update(job_state=then, end_time=now, exit_code=int(exit_file(job).read_text().strip() or 0) << 8)
    busy = sum(gpus_of(j) for j in state["jobs"] if j["job_state"] in ("RUNNING", "COMPLETING"))
    for job in sorted(state["jobs"], key=lambda j: j["job_id"]):
        if job["job_state"] != "PENDING":
            continue
        if job.get("deadline") and now > job["deadline"]:
            job.update(job_state="DEADLINE", state_reason="DeadLine", end_time=now)
        elif job["eligible_time"] <= now and busy + gpus_of(job) <= state["gpus"] and not state.get("hold"):
            busy += gpus_of(job)
            launch(job, now)
        elif job["eligible_time"] <= now:
            job["state_reason"] = "Resources"


def stop(job: dict, now: int, then: str) -> None:
    """scancel or requeue: pending jobs at once, running ones through COMPLETING."""
    if job["job_state"] == "PENDING":
        if then == "REQUEUE":
            return
        job.update(job_state=then, end_time=now)
    elif job["job_state"] == "RUNNING":
        signal_job(job, signal.SIGTERM)
        job.update(job_state="COMPLETING", stopping_at=now, then=then)


def main() -> None:
    name, argv = Path(sys.argv[0]).name, sys.argv[1:]
    if name == "runuser":  # runuser -u USER -- CMD...: the fake runs it as the caller, recording the user
        user, cmd = argv[1], argv[argv.index("--") + 1:]
        os.environ["FAKE_SLURM_USER"] = user
        os.execvpe(cmd[0], cmd, os.environ)
    with open(STATE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the daemon's commands and the test's run concurrently
        state = load()
        if name in state.get("fail", []):
            state["refused"] = state.get("refused", 0) + (name == "sbatch")
            save(state)
            sys.exit(f"{name}: error: Unable to contact slurm controller (connect failure)")
        now = int(time.time())
        if not state.get("fail"):
            progress(state, now)
        command(name, argv, state, now)
        save(state)


def command(name: str, argv: list[str], state: dict, now: int) -> None:
    state["calls"].append([name, *argv])
    if name == "sbatch":
        job_id, state["next"] = state["next"], state["next"] + 1
        begin, deadline = option(argv, "begin"), option(argv, "deadline")
        if begin and deadline and epoch(begin, now) > epoch(deadline, now):
            sys.exit("sbatch: error: Batch job submission failed: Requested time limit is invalid")
        state["jobs"].append({
            "job_id": job_id, "name": option(argv, "job-name") or "", "job_state": "PENDING",
            "state_reason": "BeginTime", "tres_per_node": f"gres:{option(argv, 'gres') or 'gpu:0'}",
            "eligible_time": epoch(begin, now) if begin else now, "deadline": epoch(deadline, now) if deadline else 0,
            "time_min": int(option(argv, "time") or 60), "start_time": 0, "end_time": 0, "restart_cnt": 0,
            "exit_code": 0, "nodes": "", "user_name": os.environ.get("FAKE_SLURM_USER", "root"),
            "comment": option(argv, "comment") or "", "script": argv[-1], "chdir": option(argv, "chdir"),
            "output": option(argv, "output") or "/dev/null"})
        print(job_id)
    elif name == "squeue":
        print(json.dumps({"meta": {}, "errors": [], "jobs": state["jobs"]}))
    elif name == "sinfo":
        print(json.dumps({"nodes": [{"name": "node1", "state": "IDLE", "partitions": ["gpu"],
                                     "gres": f"gpu:{state['gpus']}"}]}))
    elif name == "scancel":
        stop(find(state, argv[-1]), now, "CANCELLED")
    elif name == "scontrol" and argv[0] == "update":
        job = find(state, argv[1].split("=", 1)[1])
        fields = dict(a.split("=", 1) for a in argv[2:])
        if job["job_state"] != "PENDING":
            if set(fields) - {"StartTime"}:
                sys.exit(f"scontrol: error: Job {job['job_id']} is no longer pending: its shape cannot change")
            return
        if "StartTime" in fields:
            job["eligible_time"] = epoch(fields["StartTime"], now)
        if "TresPerNode" in fields:
            job["tres_per_node"] = fields["TresPerNode"]
        if "Comment" in fields:
            job["comment"] = fields["Comment"]
        progress(state, now)
    elif name == "scontrol" and argv[0] == "requeue":
        stop(find(state, argv[1]), now, "REQUEUE")
    elif name == "fake_slurm.py" and argv[0] == "fail":
        state["fail"] = [n for n in argv[1].split(",") if n]
    elif name == "fake_slurm.py" and argv[0] == "hold":  # the scheduler starts nothing until `hold 0`
        state["hold"] = argv[1] == "1"
    elif name == "fake_slurm.py" and argv[0] == "expire":  # its time limit is up now
        find(state, argv[1])["end_time"] = now
        progress(state, now)
    elif name == "fake_slurm.py" and argv[0] == "end":
        job = find(state, argv[1])
        if job["job_state"] in ("RUNNING", "COMPLETING"):
            signal_job(job, signal.SIGKILL)
        job.update(job_state=argv[2], state_reason=argv[3] if len(argv) > 3 else "None", end_time=now)
    else:
        sys.exit(f"fake slurm: {name} {' '.join(argv)}: not faked")


if __name__ == "__main__":
    main()
