"""Real parts: a real daemon process on a real Unix socket, over a real SQLite file, driven by the real CLI."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "jobs" / "examples"

TEST_CONFIG = """
[daemon]
tick_s = 0.3
kill_grace_s = 2.0
calibrate_when_idle = false
[devices]
gpus = "none"
cpu_devices = 2
[planner]
time_limit_s = 1.0
"""


def cli(*args: str, home: Path | None = None, env: dict[str, str] | None = None, user: str | None = None,
        timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real gsched CLI in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    if home is not None:
        full_env["GSCHED_HOME"] = str(home)
    full_env.update(env or {})
    argv = [sys.executable, "-m", "scheduler.cli", *args]
    if user is not None:
        kept = ("GSCHED_HOME", "PATH", "GSCHED_CONFIG", *(env or {}))  # runuser starts from a clean environment
        argv = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in full_env.items() if k in kept), *argv]
    result = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"gsched {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


class DaemonProc:
    def __init__(self, home: Path, config_text: str = TEST_CONFIG, env: dict[str, str] | None = None,
                 program: list[str] | None = None) -> None:
        self.home = home
        # how it is started: this interpreter by default; the installed `gsched` for a test of the service's way
        self.program = program or [sys.executable, "-m", "scheduler.cli"]
        self.config = home.parent / f"{home.name}-config.toml"
        self.config.write_text(config_text)
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_path = home.parent / f"{home.name}-daemon.log"

    @property
    def socket(self) -> Path:
        return self.home / "gsched.sock"

    def start(self, wait: bool = True, user: str | None = None) -> "DaemonProc":
        env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
        env.update(GSCHED_HOME=str(self.home), GSCHED_CONFIG=str(self.config), **self.env)
        argv = [*self.program, "daemon"]
        if user is not None:
            argv = ["runuser", "-u", user, "--", "env", f"GSCHED_HOME={self.home}", f"GSCHED_CONFIG={self.config}",
                    *argv]
        log = self.stderr_path.open("a")
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, text=True, cwd=ROOT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr_path.read_text()}")
            if self.socket.exists() and self.cli("status").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout_s} s:\n{self.stderr_path.read_text()}")

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return cli(*args, home=self.home, **kwargs)

    def submit(self, job: Path | str, *flags: str, user: str | None = None) -> int:
        result = self.cli("submit", str(job), "--parsable", *flags, user=user)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    def show(self, job_id: int) -> dict[str, Any]:
        result = self.cli("show", str(job_id), "--json", check=True)
        return json.loads(result.stdout)

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("status", "--json", check=True).stdout)["jobs"]

    def wait_state(self, job_id: int, states: set[str], timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.show(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never reached {states}: {job}\n{self.stderr_path.read_text()}")

    def until(self, job_id: int, ok: Any, timeout_s: float = 60) -> dict[str, Any]:
        """Poll `gsched show` until ``ok(job)``; on a timeout, say where the job got to and what the daemon logged."""
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.show(job_id)
            if ok(job):
                return job
            time.sleep(0.25)
        raise AssertionError(f"job {job_id} never got there: {json.dumps(job, default=str)[:3000]}\n"
                             f"{self.stderr_path.read_text()[-3000:]}")

    def wait_output(self, job_id: int, pattern: str, timeout_s: float = 60, user: str | None = None) -> str:
        """Poll `gsched logs` until the job's output matches ``pattern`` (a regex, per line)."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.cli("logs", str(job_id), user=user).stdout
            if re.search(pattern, text, re.MULTILINE):
                return text
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: no {pattern!r} in its output after {timeout_s} s: {text[-2000:]}\n"
                             f"{self.stderr_path.read_text()[-3000:]}")

    def wait_trained(self, job_id: int, timeout_s: float = 60) -> str:
        """Wait until the job's training loop has reported a step: a stop from here on finds the workload's
        checkpoint handler in place (before it, during torch's import, SIGTERM simply ends the run)."""
        return self.wait_output(job_id, r"^step \d+/\d+ ", timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a daemon behind for the next test
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within 30 s:\n{self.stderr_path.read_text()[-3000:]}") from None

    def kill_runners(self) -> None:
        """Test teardown: no runner survives the test."""
        for run in (self.home / "runs").glob("*/run-*.json"):
            subprocess.run(["pkill", "-KILL", "-f", str(run)], check=False)


_MADE: list[Path] = []  # shared scratch directories, removed when the session ends


def shared_tmp(prefix: str, mode: int = 0o755) -> Path:
    """A directory outside pytest's 0700 tmp tree, so a second Unix user can reach it; removed at the session's
    end, whatever the test left in it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(mode)
    _MADE.append(path)
    return path


def make_home() -> Path:
    return shared_tmp("gsched-test-") / "home"


@pytest.fixture(scope="session", autouse=True)
def _remove_shared_tmp() -> Iterator[None]:
    yield
    for path in _MADE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home() -> Iterator[Path]:
    path = make_home()
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def daemon(home: Path) -> Iterator[DaemonProc]:
    proc = DaemonProc(home).start()
    yield proc
    proc.stop()
    proc.kill_runners()


def write_job(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


# --- real Unix users (root only) ------------------------------------------------------------------------

USERS = ("gsched-test2", "gsched-test3")
CAN_MAKE_USERS = os.geteuid() == 0 and shutil.which("useradd") is not None and shutil.which("runuser") is not None
needs_users = pytest.mark.skipif(not CAN_MAKE_USERS, reason="needs root, useradd and runuser to create real users")


@pytest.fixture(scope="session")
def unix_users() -> Iterator[tuple[str, str]]:
    """Two real unprivileged users, created here (and removed after) when they do not exist yet."""
    created = []
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True)
            created.append(name)
    # The interpreter may live under a 0700 home (pyenv under /root): let the users traverse (o+x, not read)
    # the directories on the way to it and to this checkout, for this session only, and restore their modes.
    opened: dict[Path, int] = {}
    for target in (Path(os.path.realpath(sys.executable)), ROOT):
        for parent in target.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001 and parent not in opened:
                opened[parent] = mode
                parent.chmod(mode | 0o001)
    try:
        probe = subprocess.run(["runuser", "-u", USERS[0], "--", sys.executable, "-c", "import scheduler.cli"],
                               cwd=ROOT, capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"{USERS[0]} cannot run this checkout's Python: {probe.stderr.strip()[-200:]}")
        yield USERS
    finally:
        for parent, mode in opened.items():
            parent.chmod(mode)
        for name in created:  # a job of theirs still ending (Slurm's teardown may come after this) made userdel fail
            for _ in range(50):
                if subprocess.run(["userdel", name], capture_output=True).returncode in (0, 6):  # 6: no such user
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["userdel", "--force", name], check=False)


def as_user(user: str | None, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, **kwargs)


def raw_request(socket_path: Path, method: str, target: str, body: str | None = None,
                user: str | None = None) -> dict[str, Any]:
    """One HTTP request on the daemon's socket, sent by ``user`` with no client-side checks."""
    argv = [sys.executable, str(ROOT / "tests" / "rawclient.py"), str(socket_path), "request", method, target]
    result = as_user(user, argv + ([body] if body is not None else []), timeout=60)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    try:
        reply["json"] = json.loads(reply["body"])
    except ValueError:
        reply["json"] = None
    return reply


# --- a real Slurm (root and apt only) -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """One real single-node Slurm with 4 fake GPUs for the session (tests/slurm_cluster.py); skips with the reason
    where none can run."""
    from slurm_cluster import SlurmCluster, why_not_available

    why = why_not_available()
    if why:
        pytest.skip(why)
    # not under pytest's 0700 tmp: slurmctld runs as the slurm user and the jobs' users must reach the shared dir
    base = Path(tempfile.mkdtemp(prefix="gsched-slurm-"))
    base.chmod(0o755)
    cluster = SlurmCluster(base).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
