"""The daemon's Slurm executor against a fake of Slurm's commands (tests/fake_slurm/), for machines where no real
Slurm can run, for what only a fake can stage: the sbatch line, a Slurm that stops answering, a job Slurm ends
itself (DEADLINE, its time limit) and a refused sbatch. The cases every executor shares are in
test_executor_contract.py; the real thing: test_slurm_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, DaemonProc, fake_slurm_bin, make_home, write_job
from test_elastic import alternating_trace
from test_report import free_port, scrape

FAKE = ROOT / "tests" / "fake_slurm" / "fake_slurm.py"


def fake_path(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    return fake_slurm_bin(bin_dir)


def submitted(d: DaemonProc, job_id: int) -> int:
    """The Slurm job id of a gsched job, once the daemon has submitted it."""
    deadline = time.monotonic() + 30
    while d.show(job_id)["slurm_job_id"] is None:
        assert time.monotonic() < deadline, d.show(job_id)
        time.sleep(0.2)
    return int(d.show(job_id)["slurm_job_id"])


def test_the_daemon_submits_follows_and_survives_a_fake_slurm(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    state = tmp_path / "slurm.json"
    env = {"PATH": f"{fake_path(tmp_path)}:{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state)}

    def slurm(*argv: str) -> None:
        subprocess.run([sys.executable, str(FAKE), *argv], env={**os.environ, **env}, check=True, timeout=60)

    def slurm_jobs() -> list[dict[str, Any]]:
        return json.loads(state.read_text())["jobs"]

    port = free_port()
    d = DaemonProc(make_home(), f"""
[daemon]
tick_s = 0.3
calibrate_when_idle = false
clock_origin = "2024-01-01T01:10:00Z"
[executor]
kind = "slurm"
partition = "gpu"
shared_dir = "{tmp_path / 'shared'}"
[planner]
slot_minutes = 1
horizon_hours = 3
time_limit_s = 0.5
[forecast]
trace = "{alternating_trace(tmp_path / 'trace.csv')}"
[metrics]
listen = "127.0.0.1:{port}"
""", env=env).start()
    try:
        body = f'command = ["sh", "-c", "echo out-of-the-batch"]\nduration = "1m"\ngpus = 2\nworkdir = "{tmp_path}"\n'
        jid = d.submit(write_job(tmp_path, "one", body.replace("out-of-the-batch", "out-of-the-batch; sleep 5")),
                       "--now")
        sid = submitted(d, jid)
        argv = next(c for c in json.loads(state.read_text())["calls"] if c[0] == "sbatch")
        for flag in ("--parsable", "--gres=gpu:2", f"--job-name=gsched-{jid}-", "--begin=", "--time=",
                     "--comment=gsched:gpus=2,", "--nodes=1", "--export=NONE"):
            assert any(a.startswith(flag) for a in argv), (flag, argv)
        assert not any(a.startswith("--requeue") for a in argv)  # not preemptible
        d.wait_state(jid, {"RUNNING"})
        # Slurm stops answering while it runs: the job stays as it is until Slurm answers, the daemon keeps serving
        slurm("fail", "squeue,sinfo")
        time.sleep(6)  # its run ends meanwhile (it had seconds left when seen RUNNING, even on a loaded machine)
        assert d.show(jid)["state"] == "RUNNING"
        slurm("fail", "")
        job = d.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"})
        assert job["state"] == "COMPLETED" and job["energy_j"] > 0 and job["gpus"] == 2, job
        assert job["slurm_job_id"] == sid and job["slurm_nodes"] == "node1", job
        assert "out-of-the-batch" in d.cli("logs", str(jid)).stdout
        # Slurm ends one itself (its deadline passed while pending): gsched says so with Slurm's words
        slurm("hold", "1")  # held back from starting while the test ends it
        other = d.submit(write_job(tmp_path, "two", body), "--now")
        other_sid = submitted(d, other)
        # held for Resources past its planned start: a plan Slurm could not start, said once, in its history
        until = time.monotonic() + 20
        while not any("for Resources past its planned start" in e["reason"] for e in d.show(other)["events"]):
            assert time.monotonic() < until, d.show(other)["events"]
            time.sleep(0.3)
        assert scrape(port)["gsched_slurm_held_past_start_total"] == {(): 1.0}
        slurm("end", str(other_sid), "DEADLINE", "DeadLine")
        slurm("hold", "0")
        ended = d.wait_state(other, {"FAILED", "CANCELLED", "COMPLETED"})
        assert ended["state"] == "FAILED" and ended["reason"].startswith(
            f"Slurm ended job {other_sid}: DEADLINE (DeadLine)"), ended
        # Slurm's time limit stops a running one: it ends TIMEOUT with Slurm's reason, its energy measured
        third = d.submit(write_job(tmp_path, "three", body.replace('"echo out-of-the-batch"', '"sleep 60"')),
                         "--now")
        d.wait_state(third, {"RUNNING"})
        time.sleep(1)
        slurm("expire", str(submitted(d, third)))
        timed = d.wait_state(third, {"TIMEOUT", "FAILED", "COMPLETED", "CANCELLED"})
        assert timed["state"] == "TIMEOUT" and "TIMEOUT (TimeLimit)" in timed["reason"], timed
        assert timed["energy_j"] > 0 and len(timed["runs"]) == 1, timed
        assert [j["job_state"] for j in slurm_jobs()] == ["COMPLETED", "DEADLINE", "TIMEOUT"]
        # sbatch refuses a job: the job says why and waits, and gsched does not retry it every tick
        slurm("fail", "sbatch")
        refused = d.submit(write_job(tmp_path, "four", body), "--now")
        time.sleep(3)
        job = d.show(refused)
        assert job["state"] == "PLANNED" and job["slurm_job_id"] is None, job
        assert job["reason"].startswith("cannot submit to Slurm: ") and "Unable to contact" in job["reason"], job
        tries = json.loads(state.read_text()).get("refused", 0)
        assert d.show(refused)["slurm_job_id"] is None and tries <= 1, tries
    finally:
        d.stop()
