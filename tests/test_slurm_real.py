"""Slurm's commands as gsched runs them, against a real single-node Slurm (tests/slurm_cluster.py): capacity,
foreign jobs, submission as another user with a begin time, moving, finding by name, requeue and cancel. Skips with
the reason where a real Slurm cannot run (not root, no apt)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

from conftest import shared_tmp
from scheduler.executor.slurmctl import Slurm, foreign_gpus, sbatch_argv
from slurm_cluster import SlurmCluster


def wait_for(slurm: Slurm, job_id: int, states: set[str], timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = next((j.state for j in slurm.jobs() if j.job_id == job_id), "")
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"slurm job {job_id} is {state}, never {states}")


def test_submit_move_find_requeue_cancel_on_a_real_slurm(slurm_cluster: SlurmCluster, unix_users: tuple[str, str]
                                                        ) -> None:
    cluster = slurm_cluster
    slurm = Slurm("gpu", env=cluster.env)
    assert slurm.gpus() == 4
    user = unix_users[0]
    tmp_path = shared_tmp("gsched-slurm-job-", 0o777)  # the job's user must reach it
    script = tmp_path / "batch.sh"
    script.write_text("#!/bin/sh\nid -un > \"$1\"\necho \"$CUDA_VISIBLE_DEVICES\" >> \"$1\"\nsleep 30\n")
    script.chmod(0o755)
    foreign = slurm.submit(["sbatch", "--parsable", "--gres=gpu:1", "--time=10", "--output=/dev/null",
                            "--wrap", "sleep 60"])
    wait_for(slurm, foreign, {"RUNNING"})
    now = datetime.now(timezone.utc)
    later = now + timedelta(hours=1)
    mode = {"gpus": 2, "precision": "bf16", "power_limit_w": None}
    argv = sbatch_argv(7, "abc123", user, 2, later, timedelta(minutes=5), mode, True, 60,
                       "gpu", "", str(script), "/dev/null")
    job_id = slurm.submit([*argv, str(tmp_path / "ran.txt")])
    found = next((j for j in slurm.jobs() if j.gsched_id == (7, "abc123")), None)  # as a restarted daemon finds it
    assert found is not None and found.job_id == job_id and found.state == "PENDING" and found.user == user
    assert found.begin is not None and abs((found.begin - later).total_seconds()) < 2
    held = foreign_gpus(slurm.jobs(), now, timedelta(minutes=15), 4, [n.name for n in slurm.nodes()])
    assert list(held) == ["localhost"] and held["localhost"][0] == 1  # the foreign job (until its end), on its node;
    # gsched's own pending one is not "held"
    slurm.move(job_id, datetime.now(timezone.utc))  # a replan moved it to now
    wait_for(slurm, job_id, {"RUNNING"})
    ran = tmp_path / "ran.txt"
    deadline = time.monotonic() + 10
    while not (ran.exists() and len(ran.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.2)  # the shell creates the file before it writes the lines
    seen_user, gpus = ran.read_text().split()
    assert seen_user == user and len(gpus.split(",")) == 2 and "0" not in gpus.split(",")  # the foreign job has 0
    slurm.requeue(job_id, datetime.now(timezone.utc))
    wait_for(slurm, job_id, {"RUNNING", "PENDING"})
    slurm.cancel(job_id)
    assert wait_for(slurm, job_id, {"CANCELLED"}) == "CANCELLED"
    slurm.cancel(foreign)
    assert os.geteuid() == 0
