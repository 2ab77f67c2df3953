"""The whole path on a real daemon: submit -> plan -> run (real torch) -> measure -> status/show/logs/wait."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, TEST_CONFIG, DaemonProc, cli, make_home, write_job

from scheduler.timeutil import parse_rfc3339

SHOW_FIELDS = {"id", "name", "owner", "state", "gpus", "submitted_at", "planned_start", "started_at", "finished_at",
               "exit_code", "energy_j", "energy_source", "cost_eur", "co2_g"}


def sleeper(directory: Path, seconds: float, name: str = "sleeper", extra: str = "") -> Path:
    return write_job(directory, name, f'command = ["python3", "-c", "import time; time.sleep({seconds}); print(\\"done\\")"]\n'
                                      f'duration = "{max(1, int(seconds))}s"\nmax_delay = "1h"\n{extra}')


def test_linear_workload_runs_measured_and_priced(daemon: DaemonProc) -> None:
    job_id = daemon.submit(EXAMPLES / "linear.toml", "--now")
    assert daemon.cli("wait", str(job_id), timeout=180).returncode == 0
    job = daemon.show(job_id)
    assert SHOW_FIELDS <= set(job)
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0
    assert job["energy_source"] == "estimate" and job["energy_j"] > 0
    assert job["cost_eur"] is not None and job["co2_g"] > 0
    assert job["metrics"]["steps"] == 3000 and job["metrics"]["loss"] > 0
    for key in ("submitted_at", "started_at", "finished_at"):
        assert job[key].endswith("Z")
    assert [e["state"] for e in job["events"]] == ["PENDING", "PLANNED", "RUNNING", "COMPLETED"]
    assert job["events"][1]["reason"] == "runs now (--now) on 1xcpu fp32"
    assert job["mode"] == {"gpus": 1, "precision": "fp32", "power_limit_w": None, "pruning": 0.0, "compile": False,
                           "source": "default-scaling"}
    log = daemon.cli("logs", str(job_id), check=True).stdout
    assert "step 3000/3000" in log and "gsched-metrics" in log
    table = daemon.cli("status", check=True).stdout
    assert "COMPLETED" in table and "ENERGY" in table and "Wh" in table
    listed = json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"]
    assert [j["id"] for j in listed] == [job_id]


def test_wait_exits_with_the_jobs_exit_code_and_failed_state(daemon: DaemonProc, tmp_path: Path) -> None:
    path = write_job(tmp_path, "fails", 'command = ["python3", "-c", "import sys; sys.exit(7)"]\nduration = "5s"\n')
    job_id = daemon.submit(path, "--now")
    assert daemon.cli("wait", str(job_id)).returncode == 7
    job = daemon.show(job_id)
    assert job["state"] == "FAILED" and job["exit_code"] == 7 and job["reason"] == "exit code 7"


def test_missing_program_fails_with_reason(daemon: DaemonProc, tmp_path: Path) -> None:
    path = write_job(tmp_path, "missing", 'command = ["/nonexistent/prog"]\nduration = "5s"\n')
    job_id = daemon.submit(path, "--now")
    assert daemon.cli("wait", str(job_id)).returncode == 127
    assert "command not found" in daemon.show(job_id)["reason"]


def test_cancel_running_and_planned_jobs(daemon: DaemonProc, tmp_path: Path) -> None:
    running = daemon.submit(sleeper(tmp_path, 60), "--now")
    daemon.wait_state(running, {"RUNNING"})
    planned = daemon.submit(sleeper(tmp_path, 1, "later", extra="gpus = 2\n"))  # waits: a device is busy
    daemon.wait_state(planned, {"PLANNED", "PENDING"})
    assert daemon.cli("cancel", str(running), str(planned)).returncode == 0
    assert daemon.wait_state(running, {"CANCELLED"}, timeout_s=20)["state"] == "CANCELLED"
    assert daemon.show(planned)["state"] == "CANCELLED"
    again = daemon.cli("cancel", str(planned))
    assert again.returncode == 6 and "already ended" in again.stderr


def test_time_limit_ends_in_timeout(daemon: DaemonProc, tmp_path: Path) -> None:
    job_id = daemon.submit(sleeper(tmp_path, 60, extra='time_limit = "1s"\n'), "--now")
    job = daemon.wait_state(job_id, {"TIMEOUT", "FAILED", "COMPLETED"}, timeout_s=30)
    assert job["state"] == "TIMEOUT"


def test_two_device_job_is_pinned_to_two_cores(daemon: DaemonProc, tmp_path: Path) -> None:
    path = write_job(tmp_path, "pair", 'command = ["python3", "-c", "import os; print(sorted(os.sched_getaffinity(0)),'
                                       ' os.environ[\'GSCHED_NUM_DEVICES\'])"]\nduration = "5s"\ngpus = 2\n')
    job_id = daemon.submit(path, "--now")
    assert daemon.cli("wait", str(job_id)).returncode == 0
    out = daemon.cli("logs", str(job_id), check=True).stdout
    assert out.strip().endswith("2")
    assert len(daemon.show(job_id)["devices"]) == 2


def test_job_needing_more_devices_than_exist_is_refused(daemon: DaemonProc, tmp_path: Path) -> None:
    result = daemon.cli("submit", str(write_job(tmp_path, "big", 'command = ["true"]\nduration = "1m"\ngpus = 3\n')))
    assert result.returncode == 2 and "gpus" in result.stderr and "2" in result.stderr
    assert json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"] == []


def test_cli_without_daemon_names_the_socket(home: Path) -> None:
    result = cli("status", home=home)
    assert result.returncode == 3
    assert str(home / "gsched.sock") in result.stderr


def test_concurrent_submits_none_lost_or_duplicated(daemon: DaemonProc, tmp_path: Path) -> None:
    path = write_job(tmp_path, "tiny", 'command = ["true"]\nduration = "1m"\nmax_delay = "24h"\n')
    script = (
        "import sys, concurrent.futures as cf; from pathlib import Path; from scheduler.client import Client\n"
        f"text = Path({str(path)!r}).read_text()\n"
        "def one(i):\n"
        f"    with Client(Path({str(daemon.socket)!r})) as c:\n"
        "        return c.submit([(text, 'tiny.toml', '/tmp')])[0]['id']\n"
        "with cf.ThreadPoolExecutor(10) as pool:\n"
        "    print(' '.join(str(i) for i in pool.map(one, range(50))))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(4)]
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids += [int(x) for x in out.split()]
    assert len(ids) == 200 and len(set(ids)) == 200
    listed = json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert all(len(daemon.show(i)["events"]) >= 1 for i in ids[:5])


def test_sigkilled_daemon_readopts_running_job(home: Path, tmp_path: Path) -> None:
    daemon = DaemonProc(home).start()
    try:
        # it ends on `touch go`, after the restart: a fixed sleep could end while a loaded machine restarts the
        # daemon, whose recovery then reads the result (right, but no re-adoption to see)
        gated = write_job(tmp_path, "gated", 'command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.1; done; '
                                             'echo done"]\nduration = "1m"\nmax_delay = "1h"\n')
        job_id = daemon.submit(gated, "--now")
        daemon.wait_state(job_id, {"RUNNING"})
        daemon.stop(signal.SIGKILL)
        daemon.start()
        readopted = daemon.until(job_id, lambda j: any("re-adopted" in e["reason"] for e in j["events"]))
        assert readopted["state"] == "RUNNING", readopted
        (tmp_path / "go").touch()
        job = daemon.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout_s=30)
        assert job["state"] == "COMPLETED"
        assert "done" in daemon.cli("logs", str(job_id), check=True).stdout
    finally:
        daemon.stop()
        daemon.kill_runners()


def test_job_lost_while_daemon_down_is_ended_with_reason(home: Path, tmp_path: Path) -> None:
    daemon = DaemonProc(home).start()
    try:
        job_id = daemon.submit(sleeper(tmp_path, 60), "--now")
        runner_pid = None
        daemon.wait_state(job_id, {"RUNNING"})
        daemon.stop(signal.SIGKILL)
        for run in (home / "runs").glob("*/run-*.json"):
            out = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.split()
            runner_pid = int(out[0])
            os.killpg(runner_pid, signal.SIGKILL)
        assert runner_pid is not None
        time.sleep(0.3)
        daemon.start()
        job = daemon.wait_state(job_id, {"FAILED"}, timeout_s=15)
        assert "runner lost while the daemon was down" in job["reason"]
    finally:
        daemon.stop()
        daemon.kill_runners()


def test_sigterm_stops_daemon_gracefully_and_job_survives(home: Path, tmp_path: Path) -> None:
    notify_path = home.parent / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    daemon = DaemonProc(home, env={"NOTIFY_SOCKET": str(notify_path)})
    daemon.start(wait=False)
    try:
        assert notify.recv(1024).startswith(b"READY=1")
        daemon.wait_ready()
        job_id = daemon.submit(sleeper(tmp_path, 3), "--now")
        daemon.wait_state(job_id, {"RUNNING"})
        assert daemon.stop(signal.SIGTERM) == 0
        assert notify.recv(1024).startswith(b"STOPPING=1")
        assert not daemon.socket.exists()
        daemon.start()
        assert daemon.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout_s=30)["state"] == "COMPLETED"
    finally:
        notify.close()
        daemon.stop()
        daemon.kill_runners()


def test_second_daemon_on_same_home_is_refused(daemon: DaemonProc) -> None:
    second = DaemonProc(daemon.home)
    second.start(wait=False)
    assert second.proc is not None and second.proc.wait(timeout=30) != 0
    assert "already listening" in second.stderr_path.read_text()
    assert daemon.cli("status").returncode == 0


def test_devices_lists_cpu_virtual_devices(daemon: DaemonProc) -> None:
    devices = json.loads(daemon.cli("devices", "--json", check=True).stdout)["devices"]
    assert [d["kind"] for d in devices] == ["cpu", "cpu"]
    assert len({d["uuid"] for d in devices}) == 2
    assert "UUID" in daemon.cli("devices", check=True).stdout


def test_reading_commands_never_import_torch(daemon: DaemonProc) -> None:
    env = {**os.environ, "GSCHED_HOME": str(daemon.home)}
    for args in (["status"], ["submit", str(EXAMPLES / "command.toml"), "--parsable"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "scheduler.cli", *args], env=env,
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "sqlalchemy" not in imported


def test_config_is_taken_before_or_after_the_subcommand(daemon: DaemonProc, tmp_path: Path) -> None:
    config = tmp_path / "where.toml"
    config.write_text(f'home = "{daemon.home}"\n')
    for args in (["--config", str(config), "status", "--json"], ["status", "--json", "--config", str(config)],
                 ["status", f"--config={config}", "--json"]):
        result = cli(*args)  # no GSCHED_HOME: only the config file says where the daemon is
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout)["jobs"] == []
    unknown = cli("status", "--config", str(tmp_path / "missing.toml"))
    assert unknown.returncode == 2 and "missing.toml" in unknown.stderr


STOP_WHILE_LOCKED = """
import os, signal, threading, time
from scheduler.daemon import StopSignals
signals = StopSignals()
busy = threading.Event()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
end = time.monotonic() + 1.0
while time.monotonic() < end:  # the main thread holds a lock nearly all the time, as Event.wait does between waits
    with busy._cond:
        sum(range(1000))
print(signals.wait(), flush=True)
"""


def test_a_stop_signal_arriving_while_the_main_thread_holds_a_lock_still_stops_it() -> None:
    """The daemon's SIGTERM handler once set a threading.Event: a signal that came while the main thread was inside
    that Event's wait, holding its lock, deadlocked the handler and the daemon never stopped. The handlers now take no
    lock; the signal arrives through the interpreter's wakeup pipe."""
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_LOCKED], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "SIGTERM", done


def test_wait_on_a_job_planned_far_ahead_says_when_and_how_to_run_it_now(tmp_path: Path) -> None:
    """`gsched wait` looked hung on a job planned hours ahead: it says at once when the job will start, why, and how
    to run it now, on stderr, then waits."""
    from test_elastic import alternating_trace, trace_daemon

    d = trace_daemon(alternating_trace(tmp_path / "trace.csv"), 1, "2024-01-01T00:02:00Z")  # cheap hour at 01:00
    try:
        jid = d.submit(write_job(tmp_path, "later", 'command = ["true"]\nduration = "10m"\nmax_delay = "6h"\n'))
        d.wait_state(jid, {"PLANNED"})
        started = time.monotonic()
        waited = d.cli("wait", str(jid), "--timeout", "1")
    finally:
        d.stop()
    assert waited.returncode == 124 and time.monotonic() - started < 30, waited.stderr
    assert f"job {jid} is PLANNED to start at 2024-01-01T01:00:00Z, in 1.0 h" in waited.stderr, waited.stderr
    assert f"gsched cancel {jid}, then gsched submit --now" in waited.stderr, waited.stderr


EVENT_CLOCK_CONFIG = TEST_CONFIG.replace("[daemon]\n", '[daemon]\nclock_speed = 600.0\nevent_clock = true\n'
                                        'clock_origin = "2026-06-06T15:00:00Z"\n', 1)


def test_on_the_event_clock_each_run_takes_its_planned_time_whatever_its_real_speed(tmp_path: Path) -> None:
    """The demo's clock: jobs submitted together share a time, and a run ends at its planned end on the clock
    whether its process took longer (a 2 s sleep planned for 1 s: 20 clock minutes at 600x) or far less (`true`
    planned for 3 s), with the planner's model energy for that time. On a clock that ran on its own, the sleep
    would end 10 minutes late and `true` 30 minutes early."""
    d = DaemonProc(make_home(), EVENT_CLOCK_CONFIG)
    slow = write_job(tmp_path, "slow", 'command = ["sleep", "2"]\nduration = "1s"\nmax_delay = "1h"\n')
    quick = write_job(tmp_path, "quick", 'command = ["true"]\nduration = "3s"\nmax_delay = "1h"\n')
    d.start()
    try:
        result = d.cli("submit", "--parsable", str(slow), str(quick))
        assert result.returncode == 0, result.stderr
        ids = [int(line) for line in result.stdout.split()]
        jobs = [d.wait_state(i, {"COMPLETED", "FAILED"}, timeout_s=90) for i in ids]
    finally:
        d.stop()
    assert [j["state"] for j in jobs] == ["COMPLETED", "COMPLETED"], jobs
    assert jobs[0]["submitted_at"] == jobs[1]["submitted_at"] == "2026-06-06T15:00:00Z"
    for job, minutes in zip(jobs, (10, 30)):
        started, finished = parse_rfc3339(job["started_at"]), parse_rfc3339(job["finished_at"])
        assert finished - started == timedelta(minutes=minutes), job
        (run,) = job["runs"]
        assert run["energy_source"] == "model" and run["energy_j"] == pytest.approx(15.0 * minutes * 60), run
