"""gsched in front of a real Slurm (tests/slurm_cluster.py: one node, 4 fake GPUs), end to end: the daemon plans,
submits as the job's owner with the planned start as --begin, moves pending starts when the plan moves, follows
Slurm's states, measures the run through executor.shared_dir, cancels, requeues and resumes from the checkpoint,
plans around jobs it did not submit, and submits nothing twice when it is killed mid-submit.

The daemon's clock is the wall clock shifted (daemon.clock_origin at speed 1) to just before a cheap hour of a
synthetic trace, so a cheap window opens seconds after the test starts. Skips where a real Slurm cannot run."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProc, cli, make_home, write_job
from scheduler.executor.slurm import Slurm, SlurmJob
from scheduler.timeutil import parse_rfc3339
from test_elastic import alternating_trace, steps_add_up
from test_workloads import train


def slurm_daemon(cluster: Any, base: Path, origin: str, env: dict[str, str] | None = None,
                 home: Path | None = None, planner: str = "") -> DaemonProc:
    """A daemon with executor.kind = "slurm" on the test cluster, 1-minute slots, over the alternating trace (odd
    hours cheap), its clock starting at ``origin``."""
    trace = base / "trace.csv"
    if not trace.exists():
        alternating_trace(trace)
    d = DaemonProc(home or make_home(), f"""
[daemon]
tick_s = 0.5
kill_grace_s = 5.0
calibrate_when_idle = false
clock_origin = "{origin}"
[executor]
kind = "slurm"
partition = "gpu"
shared_dir = "{base / 'shared'}"
[planner]
slot_minutes = 1
horizon_hours = 3
time_limit_s = 1.0
{planner}
[forecast]
trace = "{trace}"
""", env={"SLURM_CONF": cluster.env["SLURM_CONF"], **(env or {})})
    return d


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


def wait_show(d: DaemonProc, job_id: int, ok: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = d.show(job_id)
        if ok(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never got there: {json.dumps(job, default=str)[:3000]}\n"
                         f"{d.stderr_path.read_text()[-3000:]}")


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
        job = wait_show(d, jid, lambda j: j["slurm_job_id"] is not None)
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
        job = wait_show(d, jid, lambda j: j["slurm_job_id"] is not None)
        first = parse_rfc3339(job["planned_start"])
        assert first == parse_rfc3339("2024-01-01T01:00:00Z"), job
        sid = job["slurm_job_id"]
        # Someone else's job takes all 4 GPUs for 10 minutes, straight through Slurm.
        foreign = slurm_cluster.run("sbatch", "--parsable", "--gres=gpu:4", "--time=10", "--partition=gpu",
                                    "--output=/dev/null", "--wrap", "sleep 600")
        assert foreign.returncode == 0, foreign.stderr
        job = wait_show(d, jid, lambda j: parse_rfc3339(j["planned_start"]) > first)
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


def test_requeue_resumes_from_the_checkpoint_and_cancel_stops_a_running_slurm_job(slurm_cluster: Any,
                                                                                  base: Path) -> None:
    work = shared_workdir(base, "work")
    d = slurm_daemon(slurm_cluster, base, "2024-01-01T01:10:00Z").start()
    try:
        body = ('workload = "jobs.linear"\nsteps = 5000\nargs = { seed = 3 }\npreemptible = true\n'
                f'gpus = 1\nmax_delay = "2h"\nworkdir = "{work}"\n')
        jid = d.submit(write_job(work, "resumed", body), "--now")
        sleeper = d.submit(write_job(work, "sleeper", f'command = ["sleep", "300"]\nduration = "10m"\n'
                                                      f'workdir = "{work}"\n'), "--now")
        job = d.wait_state(jid, {"RUNNING"}, timeout_s=60)
        sid = job["slurm_job_id"]
        time.sleep(3)  # some steps done
        assert cli("requeue", str(jid), home=d.home).returncode == 0
        wait_show(d, jid, lambda j: any(e["state"] == "PREEMPTED" for e in j["events"]), timeout_s=60)
        job = d.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=120)
        assert job["state"] == "COMPLETED", (job, d.stderr_path.read_text()[-3000:])
        assert job["slurm_job_id"] == sid and len(job["runs"]) == 2, job  # the same Slurm job, run twice
        steps_add_up(job, 5000)  # the second run went on from the first one's checkpoint
        assert job["metrics"]["loss"] == train("-m", "jobs.linear", "--steps", "5000", "--seed", "3")["loss"]
        assert slurm_job(slurm_cluster, sid).restarts == 1
        d.wait_state(sleeper, {"RUNNING"}, timeout_s=30)
        assert cli("cancel", str(sleeper), home=d.home).returncode == 0
        stopped = d.wait_state(sleeper, {"CANCELLED", "FAILED", "COMPLETED"}, timeout_s=60)
        assert stopped["state"] == "CANCELLED", stopped
        wait_slurm(slurm_cluster, stopped["slurm_job_id"], lambda j: j.state == "CANCELLED")
    finally:
        d.stop()


@pytest.mark.parametrize("fault", ["slurm.after_intent", "slurm.after_submit"])
def test_a_daemon_killed_mid_submit_submits_nothing_twice(slurm_cluster: Any, base: Path, fault: str) -> None:
    work = shared_workdir(base, "work")
    home = make_home()
    before = max((j.job_id for j in slurm_of(slurm_cluster).jobs()), default=0)
    d = slurm_daemon(slurm_cluster, base, "2024-01-01T01:10:00Z", env={"GSCHED_FAULT": fault}, home=home).start()
    body = f'command = ["sh", "-c", "echo ran >> runs; sleep 1"]\nduration = "1m"\nworkdir = "{work}"\n'
    jid = d.submit(write_job(work, "once", body), "--now")
    assert d.proc is not None
    d.proc.wait(timeout=60)  # it killed itself at the fault
    assert d.proc.returncode == -signal.SIGKILL
    again = slurm_daemon(slurm_cluster, base, "2024-01-01T01:10:00Z", home=home).start()
    try:
        job = again.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=60)
        assert job["state"] == "COMPLETED", (job, again.stderr_path.read_text()[-3000:])
        time.sleep(2)  # a second submission, if there were one, would have run by now
        ours = [j for j in slurm_of(slurm_cluster).jobs() if j.job_id > before]
        assert len(ours) == 1, ours
        assert (work / "runs").read_text() == "ran\n"
        if fault == "slurm.after_submit":
            assert any("re-adopted Slurm job" in e["reason"] for e in job["events"]), job["events"]
    finally:
        again.stop()


def test_an_elastic_job_pauses_at_its_segments_end_and_slurm_holds_it_for_the_next(slurm_cluster: Any,
                                                                                   base: Path) -> None:
    """The plan runs a preemptible job's first minute in the last cheap minute before a dear hour and the rest
    later: at the segment's end gsched requeues it in Slurm, and Slurm's begin moves to its next segment."""
    work = shared_workdir(base, "work")
    d = slurm_daemon(slurm_cluster, base, "2024-01-01T01:59:20Z", planner="elastic_extend_minutes = 0").start()
    try:
        # 4 minutes of work, and 4 cheap minutes before its deadline: this one and 03:00-03:03
        body = ('command = ["sleep", "600"]\nduration = "4m"\npreemptible = true\nresume_overhead_minutes = 0\n'
                f'deadline = "2024-01-01T03:03:00Z"\nworkdir = "{work}"\n')
        jid = d.submit(write_job(work, "elastic", body))
        job = d.wait_state(jid, {"RUNNING"}, timeout_s=30)
        assert job["pause_at"] == "2024-01-01T02:00:00Z" and job["segments"][1]["start"] == "2024-01-01T03:00:00Z", job
        sid = job["slurm_job_id"]
        job = wait_show(d, jid, lambda j: j["state"] in ("PREEMPTED", "PLANNED") and len(j["runs"]) == 1,
                        timeout_s=60)
        assert any(e["reason"].startswith("paused: its planned segment ended") for e in job["events"]), job
        # A command's progress is unknown, so all its work is replanned: inside the deadline, not now
        daemon_now = parse_rfc3339(json.loads(d.cli("status", "--json").stdout)["now"])
        planned = parse_rfc3339(d.show(jid)["planned_start"])
        assert planned - daemon_now > timedelta(minutes=10), (planned, daemon_now)
        wall_planned = datetime.now(timezone.utc) + (planned - daemon_now)
        sj = wait_slurm(slurm_cluster, sid, lambda j: j.state == "PENDING" and j.restarts == 1 and j.begin is not None
                        and abs((j.begin - wall_planned).total_seconds()) < 60)
        assert sj.job_id == sid  # the same Slurm job, requeued and held for the next cheap hour
    finally:
        d.stop()
