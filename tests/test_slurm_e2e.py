"""gsched in front of a real Slurm (tests/slurm_cluster.py: one node, 4 fake GPUs), for what only Slurm has: the
daemon submits a second user's job as that user with the planned start as --begin, and plans around jobs it did
not submit, moving a pending start as they come. What every executor does (completing, cancelling, requeueing,
timing out, pausing, preempting, surviving restarts, starting exactly once, losing a run) is the contract suite,
test_executor_contract.py, run against this Slurm too.

The daemon's clock is the wall clock shifted (daemon.clock_origin at speed 1) to just before a cheap hour of a
synthetic trace, so a cheap window opens seconds after the test starts. Skips where a real Slurm cannot run."""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProc, cli, write_job
from scheduler.executor.slurmctl import Slurm, SlurmJob
from scheduler.timeutil import parse_rfc3339
from test_executor_contract import Backend


def slurm_daemon(cluster: Any, base: Path, origin: str) -> DaemonProc:
    """A daemon with executor.kind = "slurm" on the test cluster, 1-minute slots, over the alternating trace (odd
    hours cheap), its clock starting at ``origin``: the contract suite's, for the real Slurm."""
    return Backend("slurm", cluster.gpus, base, {"SLURM_CONF": cluster.env["SLURM_CONF"]}, cluster).daemon(origin)


@pytest.fixture()
def base(slurm_cluster: Any) -> Any:
    """A directory every user can reach (the jobs' owners write into it), and no Slurm jobs left over after."""
    path = Path(tempfile.mkdtemp(prefix="gsched-slurm-e2e-", dir=slurm_cluster.base))
    path.chmod(0o755)
    yield path
    slurm_cluster.run("scancel", "--full", "--user=root")
    for user in ("gsched-test2", "gsched-test3"):
        slurm_cluster.run("scancel", "--full", f"--user={user}")


def slurm_of(cluster: Any) -> Slurm:
    return Slurm("gpu", env=cluster.env)


def slurm_job(cluster: Any, job_id: int) -> SlurmJob:
    return next(j for j in slurm_of(cluster).jobs() if j.job_id == job_id)


def wait_slurm(cluster: Any, job_id: int, ok: Any, timeout_s: float = 20) -> SlurmJob:
    deadline = time.monotonic() + timeout_s
    while True:
        sj = slurm_job(cluster, job_id)
        if ok(sj) or time.monotonic() > deadline:
            assert ok(sj), sj
            return sj
        time.sleep(0.3)


def shared_workdir(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir()
    path.chmod(0o777)
    return path


def test_a_job_planned_for_a_cheap_window_starts_there_on_slurm_as_its_owner(slurm_cluster: Any, base: Path,
                                                                            unix_users: tuple[str, str]) -> None:
    user = unix_users[0]
    work = shared_workdir(base, "work")
    d = slurm_daemon(slurm_cluster, base, "2024-01-01T00:59:25Z").start()
    try:
        body = ('name = "seen"\ncommand = ["sh", "-c", "echo said-on-slurm; echo \\"$CUDA_VISIBLE_DEVICES $(id -un)\\" > seen; sleep 2"]\n'
                f'duration = "1m"\ngpus = 2\nmax_delay = "2h"\nworkdir = "{work}"\n')
        jid = d.submit(write_job(work, "seen", body), user=user)
        job = d.until(jid, lambda j: j["slurm_job_id"] is not None)
        planned = parse_rfc3339(job["planned_start"])
        assert planned == parse_rfc3339("2024-01-01T01:00:00Z"), job  # the cheap hour, not now (00:59)
        assert job["state"] == "PLANNED" and "cheaper" in job["reason"], job
        sj = slurm_job(slurm_cluster, job["slurm_job_id"])
        assert sj.state == "PENDING" and sj.user == user and sj.gpus == 2, sj
        assert sj.comment.startswith("gsched:gpus=2,precision="), sj
        job = d.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=90)
        assert job["state"] == "COMPLETED", (job, d.stderr_path.read_text()[-2000:])
        started = parse_rfc3339(job["started_at"])
        assert abs((started - planned).total_seconds()) <= 5, (started, planned)  # Slurm started it on time
        assert (work / "seen").read_text().split() == ["0,1", user]  # its 2 GPUs, as its owner
        assert (work / "seen").stat().st_uid != 0
        assert job["slurm_job_id"] == sj.job_id and job["slurm_nodes"] == "localhost"
        assert job["energy_j"] > 0 and job["energy_source"] and job["cost_eur"] > 0 and job["co2_g"] > 0, job
        shown = cli("show", str(jid), home=d.home, check=True).stdout
        assert f"slurm_job_id: {sj.job_id}" in shown and "slurm_nodes: localhost" in shown
        logs = cli("logs", str(jid), home=d.home, user=user)
        assert logs.returncode == 0 and "said-on-slurm" in logs.stdout, (logs.stdout, logs.stderr)
    finally:
        d.stop()


def test_jobs_gsched_did_not_submit_move_a_pending_start_and_cancel_reaches_slurm(slurm_cluster: Any,
                                                                                  base: Path) -> None:
    work = shared_workdir(base, "work")
    d = slurm_daemon(slurm_cluster, base, "2024-01-01T00:55:00Z").start()
    try:
        jid = d.submit(write_job(work, "wide", f'command = ["sleep", "5"]\nduration = "2m"\ngpus = 4\n'
                                               f'max_delay = "2h"\nworkdir = "{work}"\n'))
        job = d.until(jid, lambda j: j["slurm_job_id"] is not None)
        first = parse_rfc3339(job["planned_start"])
        assert first == parse_rfc3339("2024-01-01T01:00:00Z"), job
        sid = job["slurm_job_id"]
        # Someone else's job takes all 4 GPUs for 10 minutes, straight through Slurm.
        foreign = slurm_cluster.run("sbatch", "--parsable", "--gres=gpu:4", "--time=10", "--partition=gpu",
                                    "--output=/dev/null", "--wrap", "sleep 600")
        assert foreign.returncode == 0, foreign.stderr
        job = d.until(jid, lambda j: parse_rfc3339(j["planned_start"]) > first)
        moved = parse_rfc3339(job["planned_start"])
        foreign_end = slurm_job(slurm_cluster, int(foreign.stdout.strip().split(";")[0])).end
        assert foreign_end is not None
        # Slurm's begin follows the plan: past the foreign job's end (to within a slot)
        sj = wait_slurm(slurm_cluster, sid, lambda j: j.begin is not None and j.begin >= foreign_end - timedelta(seconds=60))
        assert sj.state == "PENDING" and parse_rfc3339(d.show(jid)["planned_start"]) == moved
        assert any("moved to begin" in e["reason"] for e in d.show(jid)["events"])
        assert cli("cancel", str(jid), home=d.home).returncode == 0
        assert d.show(jid)["state"] == "CANCELLED"
        wait_slurm(slurm_cluster, sid, lambda j: j.state == "CANCELLED")
    finally:
        d.stop()
