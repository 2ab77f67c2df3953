"""One contract, every executor: each case runs against the local executor, the fake Slurm (tests/fake_slurm/,
which runs jobs by itself as slurmctld does) and a real Slurm (tests/slurm_cluster.py; skipped where none can run).

Every case drives a real daemon process through the real CLI and asserts what a user sees (states, reasons,
energy, the job's own output), never how an executor does it. Where executors differ, the difference is a
capability of the backend (``holds``: the executor holds a planned job before its start, as Slurm does with
--begin), not a second copy of the case. Clocks run at speed 1, shifted into a synthetic trace's cheap or dear
hours (odd hours cheap), because Slurm's clock is the wall clock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProc, fake_slurm_bin, make_home, write_job
from test_elastic import alternating_trace, steps_add_up
from test_security import runner_pid
from test_workloads import ONE_DEVICE_THREADS, train

CHEAP = "2024-01-01T01:10:00Z"  # inside a cheap hour: a job runs at once
BEFORE_CHEAP = "2024-01-01T00:59:48Z"  # a cheap hour begins 12 s later
DEAR = "2024-01-01T00:30:00Z"  # the next cheap hour is 30 minutes away
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


@dataclass
class Backend:
    kind: str  # "local", "fake-slurm", "slurm"
    devices: int
    base: Path
    env: dict[str, str] = field(default_factory=dict)
    cluster: Any = None
    homes: list[Path] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """The executor holds a planned job from its plan on and starts it itself."""
        return self.kind != "local"

    def daemon(self, origin: str, home: Path | None = None, env: dict[str, str] | None = None,
               planner: str = "", slot_minutes: int = 1) -> DaemonProc:
        if home is None:
            home = make_home()
            self.homes.append(home)
        trace = self.base / "trace.csv"
        if not trace.exists():
            alternating_trace(trace)
        if self.kind == "local":
            executor = f"[devices]\ngpus = \"none\"\ncpu_devices = {self.devices}\n"
        else:
            executor = f'[executor]\nkind = "slurm"\npartition = "gpu"\nshared_dir = "{self.base / "shared"}"\n'
        return DaemonProc(home, f"""
[daemon]
tick_s = 0.3
kill_grace_s = 4.0
calibrate_when_idle = false
clock_origin = "{origin}"
{executor}
[planner]
slot_minutes = {slot_minutes}
horizon_hours = 3
time_limit_s = 1.0
{planner}
[forecast]
trace = "{trace}"
""", env={**self.env, **(env or {})})

    def workdir(self, name: str) -> Path:
        path = self.base / name
        path.mkdir()
        path.chmod(0o777)
        return path

    def _slurm(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)

    def held_state(self, job: dict[str, Any]) -> str | None:
        """The executor's own state of a job it holds (Slurm's job_state), None where nothing is held."""
        if not self.holds or job.get("slurm_job_id") is None:
            return None
        out = self._slurm("squeue", "--states=all", "--json")
        assert out.returncode == 0, out.stderr
        found = [j for j in json.loads(out.stdout)["jobs"] if j["job_id"] == job["slurm_job_id"]]
        return found[0]["job_state"] if found else None

    def kill_underneath(self, d: DaemonProc, job: dict[str, Any]) -> None:
        """The run ends behind the daemon's back: its runner killed, or an administrator's scancel."""
        if self.kind == "local":
            os.killpg(runner_pid(d.home, job["id"]), signal.SIGKILL)
        else:
            done = self._slurm("scancel", str(job["slurm_job_id"]))
            assert done.returncode == 0, done.stderr

    def clean(self) -> None:
        if self.kind == "slurm":
            self.cluster.run("scancel", "--full", "--user=root")
        elif self.kind == "fake-slurm":
            for job in json.loads((self.base / "slurm.json").read_text() or "{}").get("jobs", []):
                if job.get("pgid"):
                    try:
                        os.killpg(job["pgid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        for home in self.homes:
            for run in (home / "runs").glob("*/run-*.json"):
                subprocess.run(["pkill", "-KILL", "-f", str(run)], check=False)


@pytest.fixture(params=["local", "fake-slurm", "slurm"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    base = Path(tempfile.mkdtemp(prefix=f"gsched-contract-{request.param}-"))
    base.chmod(0o755)
    if request.param == "local":
        b = Backend("local", 2, base)
    elif request.param == "fake-slurm":
        bin_dir = base / "bin"
        bin_dir.mkdir()
        fake_slurm_bin(bin_dir)
        b = Backend("fake-slurm", 2, base, {"PATH": f"{bin_dir}:{os.environ['PATH']}",
                                             "FAKE_SLURM_STATE": str(base / "slurm.json"), "FAKE_SLURM_GPUS": "2"})
    else:
        cluster = request.getfixturevalue("slurm_cluster")  # skips, saying why, where no Slurm can run
        b = Backend("slurm", cluster.gpus, base, {"SLURM_CONF": cluster.env["SLURM_CONF"]}, cluster)
    try:
        yield b
    finally:
        b.clean()
        shutil.rmtree(base, ignore_errors=True)


def ended(d: DaemonProc, job_id: int, timeout_s: float = 90) -> dict[str, Any]:
    return d.until(job_id, lambda j: j["state"] in ENDED, timeout_s)


def events(job: dict[str, Any], state: str) -> list[str]:
    return [e["reason"] for e in job["events"] if e["state"] == state]


def job_text(work: Path, body: str) -> str:
    return body + f'workdir = "{work}"\n'


def test_a_job_completes_with_its_energy_cost_and_log(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        jid = d.submit(write_job(work, "hello", job_text(
            work, 'command = ["sh", "-c", "echo said-hello; sleep 1"]\nduration = "1m"\n')), "--now")
        job = ended(d, jid)
        assert job["state"] == "COMPLETED", job
        assert job["energy_j"] > 0 and job["energy_source"] and job["cost_eur"] > 0 and job["co2_g"] > 0, job
        assert len(job["runs"]) == 1 and job["runs"][0]["gpus"] == 1, job
        assert "said-hello" in d.cli("logs", str(jid), check=True).stdout
    finally:
        d.stop()


def test_a_command_job_runs_in_its_submitters_environment_as_its_export_says(backend: Backend) -> None:
    """sbatch's --export: all (the default), none (the service's environment), or a list; the job file's env table
    on top; gsched's own variables win; what the job runs with is nobody else's to read."""
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    shell = {"MY_TEST_MARK": "mark-4242", "PATH": f"/opt/mark/bin:{os.environ['PATH']}",
             "CUDA_VISIBLE_DEVICES": "99", "OMP_NUM_THREADS": "64"}
    show = ('command = ["sh", "-c", "echo \\"${MY_TEST_MARK:-unset}|$PATH|${CUDA_VISIBLE_DEVICES}|'
            '$OMP_NUM_THREADS\\" > seen-$GSCHED_JOB_ID"]\n')
    try:
        ids = {}
        for name, extra in (("all", ""), ("none", 'export = "none"\n'), ("path", 'export = ["PATH"]\n'),
                            ("table", 'env = { MY_TEST_MARK = "from-the-file" }\n')):
            path = write_job(work, name, job_text(work, show + 'duration = "1m"\n' + extra))
            done = d.cli("submit", str(path), "--parsable", "--now", env=shell)
            assert done.returncode == 0, done.stderr
            ids[name] = int(done.stdout)
        seen = {}
        for name, jid in ids.items():
            assert ended(d, jid)["state"] == "COMPLETED", d.show(jid)
            seen[name] = (work / f"seen-{jid}").read_text().strip().split("|")
        assert seen["all"][0] == "mark-4242" and seen["all"][1].startswith("/opt/mark/bin:"), seen
        assert seen["none"][0] == "unset" and "/opt/mark/bin" not in seen["none"][1], seen
        assert seen["path"][0] == "unset" and seen["path"][1].startswith("/opt/mark/bin:"), seen
        assert seen["table"][0] == "from-the-file", seen
        for values in seen.values():  # gsched's device and CPU settings, never the shell's
            assert values[2] != "99" and values[3] == "1", seen  # one device, or Slurm's one CPU for one task
        if backend.holds:  # the run files that carry the environment to the nodes are the owner's alone
            for runfile in (backend.base / "shared").glob("*/run-*.json"):
                assert runfile.stat().st_mode & 0o077 == 0, runfile
    finally:
        d.stop()


def test_cancel_while_queued_and_while_running(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(DEAR).start()
    try:
        later = d.submit(write_job(work, "later", job_text(
            work, 'command = ["sh", "-c", "echo ran > later-ran"]\nduration = "1m"\nmax_delay = "3h"\n')))
        queued = d.until(later, lambda j: j["state"] == "PLANNED" and (not backend.holds or j["slurm_job_id"]))
        assert queued["planned_start"].startswith("2024-01-01T01:00"), queued  # it waits for the cheap hour
        ticker = d.submit(write_job(work, "ticker", job_text(
            work, 'command = ["sh", "-c", "while true; do echo x >> ticks; sleep 0.2; done"]\nduration = "10m"\n')),
            "--now")
        d.wait_state(ticker, {"RUNNING"})
        d.until(ticker, lambda j: (work / "ticks").exists())
        assert d.cli("cancel", str(later)).returncode == 0
        assert d.show(later)["state"] == "CANCELLED"
        if backend.holds:  # what the executor held is gone with it
            assert backend.held_state(queued) == "CANCELLED"
        assert d.cli("cancel", str(ticker)).returncode == 0
        stopped = ended(d, ticker, 60)
        assert stopped["state"] == "CANCELLED" and stopped["reason"] == "cancelled by user", stopped
        size = (work / "ticks").stat().st_size
        time.sleep(1.5)
        assert (work / "ticks").stat().st_size == size  # its processes are gone, not only its record
        assert not (work / "later-ran").exists()
    finally:
        d.stop()


def test_a_pipeline_runs_each_step_after_the_last_and_a_failed_step_cancels_the_rest(backend: Backend) -> None:
    """gsched holds a dependent itself: the executor gets it only once its predecessors ended as it asks."""
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        def step(name: str, script: str, *after: str) -> int:
            body = job_text(work, f'command = ["sh", "-c", "{script}"]\nduration = "1m"\n')
            return d.submit(write_job(work, name, body), "--now", *after)

        first = step("first", "while [ ! -e go ]; do sleep 0.1; done; echo one >> order")
        second = step("second", "echo two >> order; exit 3", "--after", str(first))
        third = step("third", "echo three >> order", "--dependency", f"afterok:{second}")
        waiting = d.until(third, lambda j: (j["reason"] or "").startswith("Dependency: waits for job"))
        assert waiting["state"] == "PENDING", waiting
        assert waiting.get("slurm_job_id") is None  # nothing handed to Slurm while it waits
        assert d.show(second)["state"] == "PENDING"
        (work / "go").touch()
        done = {j: ended(d, j) for j in (first, second, third)}
        assert [done[j]["state"] for j in (first, second, third)] == ["COMPLETED", "FAILED", "CANCELLED"], done
        assert done[second]["started_at"] >= done[first]["finished_at"]
        assert done[third]["reason"] == f"DependencyNeverSatisfied: job {second} ended FAILED (afterok)", done[third]
        assert not done[third]["runs"] and done[third].get("slurm_job_id") is None
        assert (work / "order").read_text() == "one\ntwo\n"
    finally:
        d.stop()


def test_a_job_past_its_time_limit_ends_timeout_with_its_energy(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        jid = d.submit(write_job(work, "slow", job_text(
            work, 'command = ["sleep", "120"]\nduration = "1m"\ntime_limit = "4s"\n')), "--now")
        job = ended(d, jid)
        assert job["state"] == "TIMEOUT" and "time_limit" in job["reason"], job
        assert job["energy_j"] > 0 and len(job["runs"]) == 1, job
    finally:
        d.stop()


def test_requeue_resumes_from_the_checkpoint_to_the_identical_loss(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        jid = d.submit(write_job(work, "resumed", job_text(
            work, 'workload = "jobs.linear"\nsteps = 6000\nargs = { seed = 3 }\npreemptible = true\ngpus = 1\n')),
            "--now")
        d.wait_state(jid, {"RUNNING"})
        d.wait_trained(jid)
        requeued = d.cli("requeue", str(jid))
        assert requeued.returncode == 0, requeued.stderr
        d.until(jid, lambda j: events(j, "PREEMPTED"))
        job = ended(d, jid, 150)
        assert job["state"] == "COMPLETED" and len(job["runs"]) == 2, (job, d.stderr_path.read_text()[-3000:])
        steps_add_up(job, 6000)  # the second run went on from the first one's checkpoint
        assert job["metrics"]["loss"] == train("-m", "jobs.linear", "--steps", "6000", "--seed", "3",
                                             env=ONE_DEVICE_THREADS if backend.kind == "local" else None)["loss"]
    finally:
        d.stop()


def test_an_elastic_job_pauses_at_its_segments_end_and_waits_for_its_next(backend: Backend) -> None:
    """The plan runs a preemptible job's first seconds in what is left of the last cheap minute before a dear hour
    (14 s: the planner knows the minute is partly past) and the rest in the next cheap hour (as cheap as running it
    all there, and earlier): at the segment's end it is checkpointed, and it waits (held by an executor that holds
    work) for its next segment. Its resume is the requeue path above; the next cheap hour is an hour away."""
    work = backend.workdir("w")
    d = backend.daemon("2024-01-01T01:59:46Z", planner="elastic_extend_minutes = 0").start()
    try:
        jid = d.submit(write_job(work, "elastic", job_text(
            work, 'command = ["sleep", "600"]\nduration = "3m"\npreemptible = true\nresume_overhead_minutes = 0\n'
                  'deadline = "2024-01-01T03:03:00Z"\n')))
        job = d.wait_state(jid, {"RUNNING"}, timeout_s=30)
        assert job["pause_at"] == "2024-01-01T02:00:00Z" and job["segments"][1]["start"] == "2024-01-01T03:00:00Z", job
        job = d.until(jid, lambda j: j["state"] == "PLANNED" and len(j["runs"]) == 1, 60)
        assert any(r.startswith("paused: its planned segment ended") for r in events(job, "PREEMPTED")), job
        assert job["planned_start"] >= "2024-01-01T02:10:00Z", job  # a command's work is all replanned, not now
        if backend.holds:  # the same held job waits for its next segment
            assert backend.held_state(job) == "PENDING", job
    finally:
        d.cli("cancel", str(jid))
        d.stop()


def test_an_urgent_job_preempts_a_running_preemptible_one(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(CHEAP, planner="elastic = true").start()
    try:
        victim = d.submit(write_job(work, "victim", job_text(
            work, f'command = ["sleep", "600"]\nduration = "10m"\npreemptible = true\ngpus = {backend.devices}\n')))
        d.wait_state(victim, {"RUNNING"}, timeout_s=60)
        urgent = d.submit(write_job(work, "urgent", job_text(
            work, 'command = ["sh", "-c", "echo urgent-ran; sleep 1"]\nduration = "1m"\n')), "--now")
        job = ended(d, urgent, 120)
        assert job["state"] == "COMPLETED", (job, d.stderr_path.read_text()[-3000:])
        assert any(r.startswith("preempting job(s)") for r in events(job, "PLANNED") + events(job, "PENDING")), job
        preempted = d.show(victim)
        assert any(r.startswith(f"preempted by job {urgent} (--now)") for r in events(preempted, "PREEMPTED")), \
            (preempted["events"], d.stderr_path.read_text()[-3000:])
        assert preempted["state"] in ("PLANNED", "PREEMPTED", "RUNNING"), preempted
    finally:
        d.cli("cancel", str(victim))
        d.stop()


def test_a_job_longer_than_the_horizon_runs(backend: Backend) -> None:
    """planner.horizon_hours is a minimum: a 5-hour job due in 6 hours, on a 3-hour horizon, is planned and runs;
    so is one that cannot meet its deadline (it runs now, saying how late it will be). Both stayed PENDING for good
    ("no room in the horizon")."""
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        long = d.submit(write_job(work, "long", job_text(
            work, 'command = ["sleep", "600"]\nduration = "5h"\nmax_delay = "6h"\n')))
        late = d.submit(write_job(work, "late", job_text(
            work, 'command = ["sleep", "600"]\nduration = "5h"\nmax_delay = "1h"\n')))
        job = d.until(late, lambda j: j["state"] == "RUNNING", 60)
        assert any("planned for its earliest finish" in r for r in events(job, "PLANNED")), job["events"]
        job = d.until(long, lambda j: j["state"] in ("PLANNED", "RUNNING") and j.get("planned_start"), 60)
        assert job["planned_end"] <= job["deadline"], job
    finally:
        for jid in (long, late):
            d.cli("cancel", str(jid))
        d.stop()


@pytest.mark.parametrize("kind", ["commands", "workloads"])
def test_an_urgent_job_preempts_on_quarter_hour_slots_mid_slot(backend: Backend, kind: str) -> None:
    """The preemption case as a new user meets it: the default 15-minute slots, the urgent job submitted mid-slot,
    a long preemptible job holding every device with hours of slack. The urgent job must start now (not at the next
    quarter hour, "GPUs are busy ... after its deadline" while its deadline was an hour away), and the preemptible
    one is asked to checkpoint. Workloads on a fresh daemon run with no calibrated profile yet."""
    work = backend.workdir("w")
    d = backend.daemon(CHEAP, planner="elastic = true", slot_minutes=15).start()
    if kind == "commands":
        victim_body = 'command = ["sleep", "3000"]\nduration = "5h"\n'
        urgent_body = 'command = ["sh", "-c", "echo urgent-ran; sleep 1"]\nduration = "1m"\n'
    else:
        victim_body = 'workload = "jobs.linear"\nsteps = 400000\n'
        urgent_body = 'workload = "jobs.linear"\nsteps = 2000\n'
    try:
        victim = d.submit(write_job(work, "victim", job_text(
            work, f'{victim_body}preemptible = true\nmax_delay = "12h"\ngpus = {backend.devices}\n')))
        d.wait_state(victim, {"RUNNING"}, timeout_s=60)
        urgent = d.submit(write_job(work, "urgent", job_text(work, f'{urgent_body}max_delay = "1h"\n')), "--now")
        job = ended(d, urgent, 120)
        assert job["state"] == "COMPLETED", (job, d.stderr_path.read_text()[-3000:])
        preempted = d.show(victim)
        assert any(r.startswith(f"preempted by job {urgent} (--now)") for r in events(preempted, "PREEMPTED")), \
            (preempted["events"], d.stderr_path.read_text()[-3000:])
        reasons = events(job, "PLANNED") + events(job, "PENDING")
        assert not any("after its deadline" in r for r in reasons), reasons
    finally:
        d.cli("cancel", str(victim))
        d.stop()


def test_a_running_job_survives_a_daemon_sigkill_and_completes_with_its_energy(backend: Backend) -> None:
    work = backend.workdir("w")
    home = make_home()
    backend.homes.append(home)
    d = backend.daemon(CHEAP, home=home).start()
    # it ends on `touch go`: a fixed sleep could end while a loaded machine restarts the daemon
    jid = d.submit(write_job(work, "long", job_text(
        work, 'command = ["sh", "-c", "echo ran >> runs; while [ ! -e go ]; do sleep 0.1; done"]\n'
              'duration = "1m"\n')), "--now")
    d.wait_state(jid, {"RUNNING"})
    d.stop(signal.SIGKILL)
    again = backend.daemon(CHEAP, home=home).start()
    try:
        time.sleep(1.5)  # a restart that lost the run would have ended it by now
        assert again.show(jid)["state"] == "RUNNING", again.show(jid)
        (work / "go").touch()
        job = ended(again, jid)
        assert job["state"] == "COMPLETED", (job, again.stderr_path.read_text()[-3000:])
        assert job["energy_j"] > 0 and len(job["runs"]) == 1, job
        assert (work / "runs").read_text() == "ran\n"
    finally:
        again.stop()


def test_a_planned_job_survives_a_daemon_sigkill_and_starts_at_its_time(backend: Backend) -> None:
    """Killed while the job waits for its window (held by the executor where it holds work): it starts there."""
    work = backend.workdir("w")
    home = make_home()
    backend.homes.append(home)
    d = backend.daemon(BEFORE_CHEAP, home=home).start()
    jid = d.submit(write_job(work, "waits", job_text(
        work, 'command = ["sh", "-c", "echo ran >> runs; sleep 1"]\nduration = "1m"\nmax_delay = "2h"\n')))
    job = d.until(jid, lambda j: j["state"] == "PLANNED" and (not backend.holds or j["slurm_job_id"]))
    assert job["planned_start"] == "2024-01-01T01:00:00Z", job
    d.stop(signal.SIGKILL)
    again = backend.daemon(BEFORE_CHEAP, home=home).start()
    try:
        job = ended(again, jid)
        assert job["state"] == "COMPLETED", (job, again.stderr_path.read_text()[-3000:])
        assert job["started_at"] >= "2024-01-01T00:59:55Z", job  # at its window, not at the restart
        assert (work / "runs").read_text() == "ran\n"
    finally:
        again.stop()


def test_a_checkpoint_asked_for_before_a_daemon_sigkill_still_pauses_and_resumes(backend: Backend) -> None:
    """The daemon asks a running job to checkpoint (gsched requeue) and is SIGKILLed before it sees the result: the
    restarted daemon records the pause from the run's result and resumes the job from its checkpoint."""
    work = backend.workdir("w")
    home = make_home()
    backend.homes.append(home)
    d = backend.daemon(CHEAP, home=home).start()
    jid = d.submit(write_job(work, "paused", job_text(
        work, 'workload = "jobs.linear"\nsteps = 6000\nargs = { seed = 5 }\npreemptible = true\ngpus = 1\n')),
        "--now")
    d.wait_state(jid, {"RUNNING"})
    d.wait_trained(jid)
    assert d.cli("requeue", str(jid)).returncode == 0
    d.stop(signal.SIGKILL)
    again = backend.daemon(CHEAP, home=home).start()
    try:
        job = ended(again, jid, 150)
        assert job["state"] == "COMPLETED" and len(job["runs"]) == 2, (job, again.stderr_path.read_text()[-3000:])
        assert events(job, "PREEMPTED"), job
        steps_add_up(job, 6000)
    finally:
        again.stop()


@pytest.mark.parametrize("fault", ["launch.after_intent", "launch.after_start"])
def test_a_daemon_killed_at_each_point_of_a_start_runs_the_job_exactly_once(backend: Backend, fault: str) -> None:
    work = backend.workdir("w")
    home = make_home()
    backend.homes.append(home)
    d = backend.daemon(CHEAP, home=home, env={"GSCHED_FAULT": fault}).start()
    jid = d.submit(write_job(work, "once", job_text(
        work, 'command = ["sh", "-c", "echo ran >> runs; sleep 1"]\nduration = "1m"\n')), "--now")
    assert d.proc is not None
    d.proc.wait(timeout=60)  # it killed itself at the fault
    assert d.proc.returncode == -signal.SIGKILL
    again = backend.daemon(CHEAP, home=home).start()
    try:
        job = ended(again, jid)
        assert job["state"] == "COMPLETED", (job, again.stderr_path.read_text()[-3000:])
        time.sleep(2)  # a second start, if there were one, would have run by now
        assert (work / "runs").read_text() == "ran\n"
    finally:
        again.stop()


def test_a_run_lost_underneath_the_daemon_ends_with_a_reason(backend: Backend) -> None:
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        jid = d.submit(write_job(work, "lost", job_text(work, 'command = ["sleep", "300"]\nduration = "10m"\n')),
                       "--now")
        job = d.wait_state(jid, {"RUNNING"})
        time.sleep(1)
        backend.kill_underneath(d, job)
        job = ended(d, jid)
        assert job["state"] in ("FAILED", "CANCELLED") and job["reason"], job
        assert "cancelled by user" not in job["reason"], job
        other = d.submit(write_job(work, "after", job_text(work, 'command = ["true"]\nduration = "1m"\n')), "--now")
        assert ended(d, other)["state"] == "COMPLETED"  # the daemon goes on
    finally:
        d.stop()

