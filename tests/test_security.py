"""A shared server, attacked as its users would: a real root daemon, two real unprivileged users (B and C),
real processes. Each test names the item of issue #8 it covers."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, TEST_CONFIG, DaemonProc, needs_users, raw_request

pytestmark = needs_users


@pytest.fixture
def users(unix_users: tuple[str, str]) -> tuple[str, str]:
    return unix_users


@pytest.fixture
def shared(home: Path) -> Path:
    """A directory every user may read and write (sticky, like /tmp), beside the daemon's home."""
    path = home.parent / "shared"
    path.mkdir()
    path.chmod(0o1777)
    return path


def start(home: Path, extra: str = "", env: dict[str, str] | None = None) -> DaemonProc:
    return DaemonProc(home, TEST_CONFIG + extra, env=env).start()


@pytest.fixture
def root_daemon(home: Path) -> Iterator[DaemonProc]:
    daemon = start(home)
    yield daemon
    daemon.stop()
    daemon.kill_runners()


def job(directory: Path, name: str, body: str, owner: str | None = None) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(body)
    path.chmod(0o644)
    if owner is not None:
        account = pwd.getpwnam(owner)
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def py_command(code: str, duration: str = "30s", extra: str = "") -> str:
    return f"command = {json.dumps(['python3', '-c', code])}\nduration = \"{duration}\"\n{extra}"


def user_pids(user: str, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-u", user, "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def runner_pid(home: Path, job_id: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"scheduler.executor.runner" in cmdline and f"{home}/runs/{job_id}/run-".encode() in cmdline:
                return int(entry.name)
    raise AssertionError(f"no runner for job {job_id}")


# --- 1. job output is hostile input ------------------------------------------------------------------------

def test_bad_metrics_neither_stop_the_tick_nor_a_restart(root_daemon: DaemonProc, shared: Path,
                                                        users: tuple[str, str]) -> None:
    b, c = users
    bad = root_daemon.submit(job(shared, "bad", py_command(
        'print(\'gsched-metrics {"steps": 10, "steps_per_s": "oops", "loss": 1e999, "x": [1]}\')', "5s")),
        "--now", user=b)
    assert root_daemon.cli("wait", str(bad), user=b).returncode == 0
    shown = root_daemon.show(bad)
    assert shown["state"] == "COMPLETED" and "invalid value(s) in its output ignored" in shown["reason"]
    assert shown["metrics"] == {"steps": 10}  # the valid part is kept
    deep = root_daemon.submit(job(shared, "deep", py_command("print('gsched-metrics ' + '[' * 60000)", "5s")),
                              "--now", user=b)
    assert root_daemon.cli("wait", str(deep), user=b).returncode == 0  # the runner survives, records the run
    assert root_daemon.show(deep)["energy_source"] == "estimate"

    # A preemptible command that says it was preempted, without steps, through requeue.
    trap = ("import signal, sys, time\n"
            "def stop(*_):\n    print('gsched-metrics {\"preempted\": true}', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stop)\nprint('up', flush=True)\ntime.sleep(60)")
    pre = root_daemon.submit(job(shared, "pre", py_command(trap, "1m", "preemptible = true\n")), "--now", user=b)
    root_daemon.wait_state(pre, {"RUNNING"})
    root_daemon.wait_output(pre, "^up$", user=b)  # its handler is in place
    assert root_daemon.cli("requeue", str(pre), user=b).returncode == 0
    deadline = time.monotonic() + 30
    while not any(e["state"] == "PREEMPTED" for e in root_daemon.show(pre)["events"]):
        assert time.monotonic() < deadline, root_daemon.show(pre)
        time.sleep(0.2)
    root_daemon.cli("cancel", str(pre))

    # The tick still reaps and starts other users' jobs, and the daemon restarts over these records.
    root_daemon.stop(signal.SIGKILL)
    root_daemon.start()
    other = root_daemon.submit(job(shared, "other", 'command = ["true"]\nduration = "5s"\n'), "--now", user=c)
    assert root_daemon.cli("wait", str(other), user=c).returncode == 0


# --- 2. workloads come from the installed package only ------------------------------------------------------

def test_a_module_planted_in_the_workdir_never_replaces_a_workload(root_daemon: DaemonProc, shared: Path,
                                                                    users: tuple[str, str]) -> None:
    b, _c = users
    work = shared / "planted"
    (work / "jobs").mkdir(parents=True)
    for name in ("__init__.py", "linear.py"):
        (work / "jobs" / name).write_text("print('PLANTED', flush=True)\nimport sys; sys.exit(0)\n")
    account = pwd.getpwnam(b)
    for path in (work, work / "jobs", *(work / "jobs").iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    body = f'workload = "jobs.linear"\nsteps = 40\nworkdir = "{work}"\nenv = {{PYTHONPATH = "{work}"}}\n'
    for gpus in (1, 2):  # the single process, and torchrun's workers
        job_id = root_daemon.submit(job(shared, f"w{gpus}", body + f"gpus = {gpus}\n", b), "--now", user=b)
        assert root_daemon.cli("wait", str(job_id), user=b, timeout=180).returncode == 0
        log = root_daemon.cli("logs", str(job_id), check=True).stdout
        assert "PLANTED" not in log and "step 40/40" in log
        assert root_daemon.show(job_id)["metrics"]["steps"] == 40


# --- 3. user paths are touched only as their owner -----------------------------------------------------------

def test_workdirs_are_checked_and_entered_as_their_owner(root_daemon: DaemonProc, shared: Path,
                                                         users: tuple[str, str]) -> None:
    b, c = users
    private = shared / "private"
    (private / "pub").mkdir(parents=True)
    (private / "pub" / "secret.txt").write_text("root's secret\n")
    private.chmod(0o700)  # root's; pub inside is 0755
    (private / "pub").chmod(0o755)
    sock = root_daemon.socket
    text = json.dumps(f'command = ["cat", "secret.txt"]\nduration = "5s"\nworkdir = "{private / "pub"}"\n')

    # The daemon's own check runs as B (bypassing the CLI's check with a raw request).
    reply = raw_request(sock, "POST", "/v1/jobs", f'{{"text": {text}, "base_dir": "/"}}', user=b)
    assert reply["status"] == 400 and "workdir" in reply["json"]["error"] and "Permission denied" in reply["json"]["error"]
    # A symlink of B's own pointing there is followed with B's rights too.
    link_dir = shared / "b-link"
    link_dir.symlink_to(private / "pub")
    reply = raw_request(sock, "POST", "/v1/jobs", json.dumps({"text": f'command = ["true"]\nduration = "5s"\n'
                                                                      f'workdir = "{link_dir}"\n'}), user=b)
    assert reply["status"] == 400 and "Permission denied" in reply["json"]["error"]
    # A relative base_dir would resolve against the daemon's cwd: refused.
    reply = raw_request(sock, "POST", "/v1/jobs", json.dumps({"text": 'command = ["true"]\nduration = "5s"\n',
                                                              "base_dir": "relative/dir"}), user=b)
    assert reply["status"] == 400 and "base_dir: must be an absolute path" in reply["json"]["error"]

    # At run time the runner enters the workdir as the owner: a directory closed after the submit stays closed.
    private.chmod(0o755)
    blocker = root_daemon.submit(job(shared, "blocker", 'command = ["sleep", "2"]\nduration = "5s"\ngpus = 2\n'), "--now")
    queued = root_daemon.submit(job(shared, "sneaky", 'command = ["cat", "secret.txt"]\nduration = "5s"\n'
                                f'workdir = "{private / "pub"}"\n', b), "--now", user=b)
    private.chmod(0o700)
    assert root_daemon.cli("wait", str(blocker)).returncode == 0
    ended = root_daemon.wait_state(queued, {"FAILED", "COMPLETED"}, timeout_s=30)
    assert ended["state"] == "FAILED" and "cannot enter workdir" in ended["reason"]
    assert "secret" not in root_daemon.cli("logs", str(queued), check=True).stdout
    assert c  # the third user is exercised by the other tests


# --- 4. profiles: one user's measurements never plan another's jobs ----------------------------------------

def test_profiles_are_per_owner_and_implausible_ones_are_ignored(root_daemon: DaemonProc, shared: Path,
                                                                 users: tuple[str, str]) -> None:
    b, c = users
    body = 'workload = "jobs.linear"\nsteps = 300\n'
    first = root_daemon.submit(job(shared, "b1", body, b), "--now", user=b)
    assert root_daemon.cli("wait", str(first), user=b, timeout=120).returncode == 0
    # A poisoned record of B's, as an old gsched kept it: 1e-300 steps/s for this very mode.
    with sqlite3.connect(root_daemon.home / "gsched.db") as db:
        db.execute("UPDATE profiles SET steps_per_s = 1e-300 WHERE owner_uid = ?", (pwd.getpwnam(b).pw_uid,))
        assert db.total_changes == 1
    later = body.replace("300", "3000") + 'max_delay = "12h"\n'
    theirs = root_daemon.submit(job(shared, "c1", later, c), user=c)
    mine = root_daemon.submit(job(shared, "b2", later, b), user=b)
    for job_id in (theirs, mine):  # both plannable on the default model: nothing "needs 2.7e296 h"
        shown = root_daemon.wait_state(job_id, {"PLANNED", "RUNNING", "COMPLETED"}, timeout_s=30)
        assert shown["mode"]["source"] == "default-scaling", shown
    # C's own run then measures C's own profile.
    root_daemon.cli("cancel", str(theirs), str(mine))
    run_c = root_daemon.submit(job(shared, "c2", body, c), "--now", user=c)
    assert root_daemon.cli("wait", str(run_c), user=c, timeout=120).returncode == 0
    with sqlite3.connect(root_daemon.home / "gsched.db") as db:
        owners = sorted(r[0] for r in db.execute("SELECT owner_uid FROM profiles"))
    assert owners == sorted([pwd.getpwnam(b).pw_uid, pwd.getpwnam(c).pw_uid])


# --- 5. connection floods -----------------------------------------------------------------------------------

def _threads(pid: int) -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))  # type: ignore[union-attr]


def test_a_flood_of_idle_connections_starves_nobody(home: Path, shared: Path, users: tuple[str, str]) -> None:
    b, c = users
    # The systemd default of 1,024 open files, which the daemon cannot raise: the flood must still not starve it.
    daemon = DaemonProc(home, TEST_CONFIG + "[api]\nrequest_timeout_s = 4.0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    env.update(GSCHED_HOME=str(home), GSCHED_CONFIG=str(daemon.config))
    log = daemon.stderr_path.open("a")
    daemon.proc = subprocess.Popen(["prlimit", "--nofile=1024:1024", sys.executable, "-m", "scheduler.cli", "daemon"],
                                   env=env, stdout=log, stderr=log, text=True, cwd=ROOT)
    log.close()
    try:
        daemon.wait_ready()
        running = daemon.submit(job(shared, "during", 'command = ["sleep", "3"]\nduration = "5s"\n', c), "--now",
                                user=c)
        flood = subprocess.Popen(["runuser", "-u", b, "--", sys.executable, str(ROOT / "tests" / "rawclient.py"),
                                  str(daemon.socket), "hold", "1100", "8"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert flood.stdout is not None and flood.stdout.readline().strip() == "holding"
        worst_s = 0.0
        for _ in range(5):
            t0 = time.monotonic()
            assert daemon.cli("status", user=c).returncode == 0
            assert daemon.cli("status").returncode == 0
            worst_s = max(worst_s, time.monotonic() - t0)
            time.sleep(0.3)
        assert _threads(daemon.proc.pid) < 40
        submitted = daemon.submit(job(shared, "flooded", 'command = ["true"]\nduration = "5s"\n', c), "--now", user=c)
        assert daemon.cli("wait", str(submitted), user=c).returncode == 0
        assert daemon.wait_state(running, {"COMPLETED"}, timeout_s=30)  # reaped during the flood
        result = json.loads(flood.communicate(timeout=60)[0].strip().splitlines()[-1])
        assert result["refused"] >= result["opened"] - 32  # B gets api.max_connections_per_user, no more
        print(f"flood: {result}, worst status pair {worst_s:.2f} s")
        # Oversized and negative Content-Length: refused before any body is read.
        reply = raw_request(daemon.socket, "POST", "/v1/jobs", None, user=b)
        assert reply["status"] == 400
        big = subprocess.run([sys.executable, str(ROOT / "tests" / "rawclient.py"), str(daemon.socket), "raw"],
                             input=b"POST /v1/jobs HTTP/1.1\r\nHost: g\r\nContent-Length: 314572800\r\n\r\n" + b"x" * 65536,
                             capture_output=True, timeout=30)
        assert json.loads(big.stdout)["status"] == 413
        neg = subprocess.run([sys.executable, str(ROOT / "tests" / "rawclient.py"), str(daemon.socket), "raw"],
                             input=b"POST /v1/jobs HTTP/1.1\r\nHost: g\r\nContent-Length: -1\r\n\r\n" + b"x" * 65536,
                             capture_output=True, timeout=30)
        assert json.loads(neg.stdout)["status"] == 400
        # SIGTERM stops the daemon promptly under another flood.
        again = subprocess.Popen(["runuser", "-u", b, "--", sys.executable, str(ROOT / "tests" / "rawclient.py"),
                                  str(daemon.socket), "hold", "600", "20"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert again.stdout is not None and again.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 10
        again.kill()
        again.wait()
    finally:
        daemon.stop()
        daemon.kill_runners()


# --- 6. a job runs exactly once across daemon crashes --------------------------------------------------------

@pytest.mark.parametrize("point", ["launch.after_intent", "launch.after_start"])
def test_a_crash_while_starting_a_job_never_runs_it_twice(home: Path, shared: Path, point: str) -> None:
    tries = int(os.environ.get("GSCHED_CRASH_TRIES", "5"))  # a longer soak: GSCHED_CRASH_TRIES=50
    counter = shared / "runs.txt"
    body = py_command(f"open({str(counter)!r}, 'a').write('x\\n'); import time; time.sleep(0.5)", "5s")
    daemon = DaemonProc(home, env={"GSCHED_FAULT": point})
    try:
        for i in range(tries):
            daemon.env = {"GSCHED_FAULT": point}
            daemon.start()
            job_id = daemon.submit(job(shared, f"once{i}", body), "--now")
            assert daemon.proc is not None
            daemon.proc.wait(timeout=30)  # it killed itself at the crash point
            assert daemon.proc.returncode == -signal.SIGKILL
            daemon.env = {}
            daemon.start()
            shown = daemon.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout_s=30)
            assert shown["state"] == "COMPLETED", shown
            daemon.stop()
        lines = counter.read_text().splitlines()
        print(f"{point}: {tries} crashes, {len(lines)} runs")
        assert len(lines) == tries  # each job ran once: none lost, none twice
    finally:
        daemon.stop()
        daemon.kill_runners()


# --- 7. nothing of a run outlives it --------------------------------------------------------------------------

def test_orphans_die_with_their_run_and_devices_are_not_reused_meanwhile(root_daemon: DaemonProc, shared: Path,
                                                                          users: tuple[str, str]) -> None:
    b, _c = users
    lost = root_daemon.submit(job(shared, "lost", 'command = ["sh", "-c", "sleep 301 & sleep 302"]\n'
                                  'duration = "5m"\n', b), "--now", user=b)
    root_daemon.wait_state(lost, {"RUNNING"})
    deadline = time.monotonic() + 10
    while len(user_pids(b, "sleep 30[12]")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(runner_pid(root_daemon.home, lost), signal.SIGKILL)
    assert root_daemon.wait_state(lost, {"FAILED"}, timeout_s=20)["state"] == "FAILED"
    assert user_pids(b, "sleep 30[12]") == []

    # A job killed by a signal, and one that daemonizes with setsid: their children go with them.
    killed = root_daemon.submit(job(shared, "killed", 'command = ["sh", "-c", "sleep 303 & kill -9 $$"]\n'
                                    'duration = "1m"\n', b), "--now", user=b)
    escaped = root_daemon.submit(job(shared, "escaped", 'command = ["sh", "-c", "setsid sleep 304 & sleep 0.5"]\n'
                                     'duration = "1m"\n', b), "--now", user=b)
    assert root_daemon.wait_state(killed, {"FAILED"}, timeout_s=20)["reason"] == "killed by SIGKILL"
    assert root_daemon.wait_state(escaped, {"COMPLETED"}, timeout_s=20)
    assert user_pids(b, "sleep 30[34]") == []
    assert root_daemon.cli("cancel", str(lost)).returncode == 6  # it ended; nothing to cancel


# --- 8. others' secrets ----------------------------------------------------------------------------------------

def test_others_see_no_env_args_command_or_workdir(root_daemon: DaemonProc, shared: Path,
                                                   users: tuple[str, str]) -> None:
    b, c = users
    job_id = root_daemon.submit(job(shared, "secretive", 'workload = "jobs.linear"\nsteps = 5\n'
                                    'args = {seed = 77777}\nenv = {API_KEY = "hunter2-secret"}\n', b), user=b)
    for who in (c,):
        for args in (["status", "--json"], ["show", str(job_id), "--json"], ["status"], ["show", str(job_id)]):
            out = root_daemon.cli(*args, user=who, check=True).stdout
            assert "hunter2" not in out and "77777" not in out and str(shared) not in out, (who, args)
        seen = json.loads(root_daemon.cli("show", str(job_id), "--json", user=c, check=True).stdout)
        assert seen["name"] == "secretive" and seen["owner"] == b and seen["private_withheld"] is True
    for who in (b, None):  # the owner and root see all of it
        out = root_daemon.cli("show", str(job_id), "--json", user=who, check=True).stdout
        assert "hunter2" in out and "77777" in out and str(shared) in out


# --- 9. disk: capped logs, a full disk ------------------------------------------------------------------------

def test_a_jobs_log_is_capped_and_its_metrics_still_count(home: Path, shared: Path, users: tuple[str, str]) -> None:
    b, _c = users
    daemon = DaemonProc(home, TEST_CONFIG.replace("[daemon]\n", "[daemon]\nmax_log_mb = 1.0\n")).start()
    try:
        code = ("import sys\nfor i in range(200000): sys.stdout.write('x' * 50 + '\\n')\n"
                "print('gsched-metrics {\"steps\": 7}')")
        job_id = daemon.submit(job(shared, "loud", py_command(code, "1m"), b), "--now", user=b)
        assert daemon.cli("wait", str(job_id), user=b, timeout=120).returncode == 0
        size = (home / "logs" / f"{job_id}.log").stat().st_size
        assert 1024 * 1024 <= size < 1024 * 1024 + 4096
        assert daemon.show(job_id)["metrics"] == {"steps": 7}
        assert "max_log_mb" in daemon.cli("logs", str(job_id), check=True).stdout
    finally:
        daemon.stop()
        daemon.kill_runners()


def test_a_full_disk_ends_the_job_with_a_reason_and_the_daemon_keeps_answering(shared: Path,
                                                                                users: tuple[str, str]) -> None:
    b, c = users
    mount = Path(shared.parent / "small")
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    daemon = DaemonProc(mount / "home")
    try:
        daemon.start()
        job_id = daemon.submit(job(shared, "victim", 'command = ["sleep", "3"]\nduration = "5s"\n', b), "--now",
                               user=b)
        daemon.wait_state(job_id, {"RUNNING"})
        pid = runner_pid(daemon.home, job_id)
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        while Path(f"/proc/{pid}").exists():  # the runner ends, unable to write its result
            time.sleep(0.1)
        status = daemon.cli("status", user=c)
        assert status.returncode == 0, status.stderr
        refused = daemon.cli("submit", str(job(shared, "more", 'command = ["true"]\nduration = "5s"\n', c)), user=c)
        assert "Traceback" not in refused.stderr
        filler.unlink()
        ended = daemon.wait_state(job_id, {"FAILED", "COMPLETED"}, timeout_s=30)
        assert ended["state"] == "FAILED" and "could not write" in ended["reason"], ended
    finally:
        daemon.stop()
        daemon.kill_runners()
        subprocess.run(["umount", "-l", str(mount)], check=False)



def test_a_runner_that_cannot_write_its_claim_says_the_disk_is_full(home: Path) -> None:
    """Under load the disk can fill between the daemon starting a runner and the runner taking its run."""
    mount = home.parent / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k"], capture_output=True)
        runfile = home.parent / "run.json"
        runfile.write_text(json.dumps({"claim_path": str(mount / "claim")}))
        ran = subprocess.run([sys.executable, "-m", "scheduler.executor.runner", str(runfile)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 75, ran.stderr  # EXIT_NO_RESULT: the daemon reports a full disk
        assert "Traceback" not in ran.stderr and "No space left" in ran.stdout, (ran.stdout, ran.stderr)
        assert not (mount / "claim").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

# --- 10. terminal escapes ---------------------------------------------------------------------------------------

def test_terminal_escapes_are_shown_escaped(root_daemon: DaemonProc, shared: Path, users: tuple[str, str]) -> None:
    b, c = users
    evil = "\x1b]0;pwned\x07\x1b[2J"
    # a path, so that it is not looked up at submit: the escapes reach the reason when it fails to start
    job_id = root_daemon.submit(job(shared, "escapes", f'command = [{json.dumps("/nonexistent/" + evil)}]\n'
                                                       'duration = "5s"\n', b),
                                "--now", user=b)
    root_daemon.wait_state(job_id, {"FAILED"})
    for who in (None, b, c):
        for args in (["status"], ["show", str(job_id)]):
            out = root_daemon.cli(*args, user=who, check=True).stdout
            assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned" in out, (who, args)
    raw = json.loads(root_daemon.cli("show", str(job_id), "--json", check=True).stdout)
    assert evil in raw["reason"]  # JSON keeps the raw text


# --- 11. a damaged database is refused at start ----------------------------------------------------------------

def test_a_damaged_or_empty_database_is_refused_naming_the_file(home: Path, shared: Path) -> None:
    daemon = start(home)
    for i in range(60):
        daemon.submit(job(shared, f"fill{i}", 'command = ["true"]\nduration = "5s"\nmax_delay = "20h"\n'))
    daemon.stop()
    db = home / "gsched.db"
    for sidecar in (home / "gsched.db-wal", home / "gsched.db-shm"):
        assert not sidecar.exists() or sidecar.stat().st_size == 0 or sidecar.name.endswith("shm")
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2)
        f.write(random.Random(8).randbytes(8192))  # seeded: the same damage on every run
    for broken in ("damaged", "empty"):
        if broken == "empty":
            db.write_bytes(b"")
        again = DaemonProc(home)
        again.start(wait=False)
        assert again.proc is not None and again.proc.wait(timeout=30) != 0
        text = again.stderr_path.read_text()
        assert str(db) in text and ("damaged" in text or "not a usable" in text or "empty" in text), text[-2000:]
        assert "move the file aside" in text


# --- 12. bad input gets clear errors, never a traceback or a 500 --------------------------------------------------

def test_bad_input_through_the_cli_and_the_api(root_daemon: DaemonProc, shared: Path, users: tuple[str, str]) -> None:
    b, _c = users
    loop = shared / "loop"
    loop.symlink_to(loop)
    closed = shared / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    cases = {
        "delay": ('command = ["true"]\nduration = "5s"\nmax_delay = "229196003446511h"\n', "max_delay"),
        "deadline": ('command = ["true"]\nduration = "5s"\ndeadline = 9999-12-31T23:59:59-14:00\n', "deadline"),
        "closed": (f'command = ["true"]\nduration = "5s"\nworkdir = "{closed}"\n', "workdir"),
        "loop": (f'command = ["true"]\nduration = "5s"\nworkdir = "{loop}"\n', "workdir"),
        "long": (f'command = ["true"]\nduration = "5s"\nworkdir = "{"a" * 5000}"\n', "workdir"),
        "nul": ('command = ["true"]\nduration = "5s"\nworkdir = "a\\u0000b"\n', "workdir"),
    }
    for name, (body, field) in cases.items():
        result = root_daemon.cli("submit", str(job(shared, name, body, b)), user=b)
        assert result.returncode == 2 and f"{field}:" in result.stderr and "Traceback" not in result.stderr, name
        reply = raw_request(root_daemon.socket, "POST", "/v1/jobs", json.dumps({"text": body, "base_dir": "/"}), user=b)
        assert reply["status"] == 400 and field in reply["json"]["error"], (name, reply)
    every = root_daemon.cli("submit", str(job(shared, "many", 'steps = 0\ngpus = 0\ncolour = 1\nduration = "x"\n', b)),
                            user=b)
    assert every.returncode == 2 and len(every.stderr.strip().splitlines()) >= 4  # all at once
    mine = root_daemon.submit(job(shared, "mine", 'command = ["sleep", "1"]\nduration = "5s"\n', b), "--now", user=b)
    for target, status in (("/v1/jobs/1/log?offset=-5", 400), ("/v1/jobs/99999999999999999999999", 404),
                           ("/v1/jobs/99999999999999999999999/log", 404), (f"/v1/jobs/{mine}/log?offset=x", 400),
                           ("/v1/forecast?hours=nan", 400)):
        assert raw_request(root_daemon.socket, "GET", target, user=b)["status"] == status, target
    assert root_daemon.cli("show", "99999999999999999999999", user=b).returncode == 4
    urgent = raw_request(root_daemon.socket, "POST", "/v1/jobs",
                         json.dumps({"text": 'command = ["true"]\nduration = "5s"\n', "urgent": "no"}), user=b)
    assert urgent["status"] == 400 and "urgent" in urgent["json"]["error"]


# --- 13. per-user limits ---------------------------------------------------------------------------------------

def test_per_user_limits_on_queued_jobs_and_gpus(home: Path, shared: Path, users: tuple[str, str]) -> None:
    b, c = users
    daemon = start(home, "[limits]\nmax_queued_jobs_per_user = 3\nmax_gpus_per_user = 1\n")
    try:
        blocker = daemon.submit(job(shared, "blocker", 'command = ["sleep", "60"]\nduration = "1m"\ngpus = 2\n'), "--now")
        daemon.wait_state(blocker, {"RUNNING"})  # B's jobs stay queued behind it
        later = job(shared, "later", 'command = ["true"]\nduration = "5s"\nmax_delay = "20h"\n', b)
        for _ in range(3):
            daemon.submit(later, user=b)
        refused = daemon.cli("submit", str(later), user=b)
        assert refused.returncode == 7 and "limits.max_queued_jobs_per_user" in refused.stderr
        wide = daemon.cli("submit", str(job(shared, "wide", 'command = ["true"]\nduration = "5s"\ngpus = 2\n', c)),
                          user=c)
        assert wide.returncode == 7 and "limits.max_gpus_per_user" in wide.stderr
        daemon.cli("cancel", *[str(j["id"]) for j in daemon.status()], check=True)
        sleeper = 'command = ["sleep", "3"]\nduration = "5s"\n'
        first = daemon.submit(job(shared, "s1", sleeper, b), "--now", user=b)
        second = daemon.submit(job(shared, "s2", sleeper, b), "--now", user=b)
        daemon.wait_state(first, {"RUNNING"})
        time.sleep(1.0)
        waiting = daemon.show(second)
        assert waiting["state"] in ("PLANNED", "PENDING") and "max_gpus_per_user" in waiting["reason"]
        theirs = daemon.submit(job(shared, "c1", sleeper, c), "--now", user=c)  # the free device is C's to use
        assert daemon.wait_state(theirs, {"RUNNING", "COMPLETED"})["state"] in ("RUNNING", "COMPLETED")
        assert daemon.wait_state(second, {"COMPLETED"}, timeout_s=30)
    finally:
        daemon.stop()
        daemon.kill_runners()


def test_limits_and_new_settings_have_documented_defaults() -> None:
    from scheduler.config import Config

    text = (ROOT / "config.toml").read_text()
    config = Config()
    for section, values in (("limits", config.limits), ("api", config.api)):
        assert f"[{section}]" in text
        for key, value in vars(values).items():
            assert re.search(rf"^{key} = {re.escape(str(value).lower() if isinstance(value, bool) else str(value))}$",
                             text, re.M), key
    assert "max_log_mb = 100.0" in text and 'cgroups = "auto"' in text
