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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.client import Client
from scheduler.errors import GschedError

ROOT = Path(__file__).resolve().parents[1]
# Three workers share two cores: torch's default of a thread per core in every process they start spins on
# descheduled threads (a 20,000-step run took 3x the time, and 3.7x the CPU, beside two busy processes). A test
# that needs another count, or a daemon's run that gsched gives one, sets its own.
os.environ.setdefault("OMP_NUM_THREADS", "1")
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
            if self.socket.exists():
                try:
                    self.api("GET", "/v1/jobs")
                    return
                except GschedError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout_s} s:\n{self.stderr_path.read_text()}")

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return cli(*args, home=self.home, **kwargs)

    def submit(self, job: Path | str, *flags: str, user: str | None = None) -> int:
        result = self.cli("submit", str(job), "--parsable", *flags, user=user)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    def api(self, method: str, path: str) -> Any:
        """One request on the daemon's socket from this process: what `gsched show --json` and `status --json`
        print, without starting an interpreter for each look (the polls below were most of the suite's CPU)."""
        with Client(self.socket) as client:
            return client._request(method, path).json()

    def show(self, job_id: int) -> dict[str, Any]:
        return self.api("GET", f"/v1/jobs/{job_id}")

    def status(self) -> list[dict[str, Any]]:
        return self.api("GET", "/v1/jobs")["jobs"]

    def log(self, job_id: int) -> str:
        """The job's output so far, as `gsched logs` prints it."""
        data = b""
        with Client(self.socket) as client:
            while True:
                chunk, size, _state = client.log(job_id, len(data))
                data += chunk
                if not chunk or len(data) >= size:
                    return data.decode(errors="replace")

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
            text = self.cli("logs", str(job_id), user=user).stdout if user else self.log(job_id)
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


def fake_slurm_bin(bin_dir: Path) -> Path:
    """Slurm's commands, each the fake (tests/fake_slurm/), in ``bin_dir``. The copy starts this interpreter
    without site (15 ms a call, where `env python3` through a pyenv shim takes 90): the daemon runs squeue every
    tick, and the fake's start-up was a third of a core in each fake-Slurm test."""
    fake = bin_dir / "fake_slurm.py"
    source = (ROOT / "tests" / "fake_slurm" / "fake_slurm.py").read_text()
    fake.write_text(f"#!{sys.executable} -S\n" + source.split("\n", 1)[1])
    fake.chmod(0o755)
    for name in ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "runuser"):
        (bin_dir / name).symlink_to(fake)
    return bin_dir


def write_job(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


# --- real Unix users (root only) ------------------------------------------------------------------------

USERS = ("gsched-test2", "gsched-test3")
CAN_MAKE_USERS = os.geteuid() == 0 and shutil.which("useradd") is not None and shutil.which("runuser") is not None
needs_users = pytest.mark.skipif(not CAN_MAKE_USERS, reason="needs root, useradd and runuser to create real users")


def _on_the_way() -> list[Path]:
    """The directories on the way to the interpreter and to this checkout."""
    return [parent for target in (Path(os.path.realpath(sys.executable)), ROOT) for parent in target.parents]


# What the machine had before this run, taken by the process that runs the session (pytest itself, or xdist's
# controller while its workers run the tests): users, directory modes and munged that tests add are put back by
# that process alone, once every worker is done, so that no worker takes them away from another still using them.
_BEFORE: dict[str, Any] = {}


def _torch_tmp() -> list[Path]:
    """What torch leaves in the temporary directory: torchrun's rendezvous directories, inductor's caches."""
    tmp = Path(tempfile.gettempdir())
    return [*tmp.glob("torchelastic_*"), *tmp.glob("torchinductor_*")]


def _controls_the_session(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _controls_the_session(session.config):
        return
    from slurm_cluster import munged_pid

    _BEFORE["users"] = {name for name in USERS if _user_exists(name)}
    _BEFORE["modes"] = {parent: parent.stat().st_mode for parent in _on_the_way()}
    _BEFORE["munged"] = munged_pid() is not None
    _BEFORE["torch_tmp"] = set(_torch_tmp())


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _controls_the_session(session.config) or not _BEFORE:
        return
    from slurm_cluster import APT_LOCK, NET_LOCK, munged_pid

    for lock in (APT_LOCK, NET_LOCK):
        lock.unlink(missing_ok=True)
    for path in set(_torch_tmp()) - _BEFORE["torch_tmp"]:
        shutil.rmtree(path, ignore_errors=True)
    for parent, mode in _BEFORE["modes"].items():
        if parent.stat().st_mode != mode:
            parent.chmod(mode)
    for name in USERS:  # a job of theirs still ending (Slurm's teardown may come after this) made userdel fail
        if name in _BEFORE["users"] or not _user_exists(name):
            continue
        for _ in range(50):
            if subprocess.run(["userdel", name], capture_output=True).returncode in (0, 6):  # 6: no such user
                break
            time.sleep(0.2)
        else:
            subprocess.run(["userdel", "--force", name], check=False)
    pid = munged_pid()
    if pid is not None and not _BEFORE["munged"]:  # the munged the Slurm tests started
        os.kill(pid, signal.SIGTERM)


class _StillRunning:
    """`pytest -v -n 3` names each test as it ends; this names the ones still running, once a minute, so that a
    long stretch says what it waits for."""

    def __init__(self, config: pytest.Config) -> None:
        self.config, self.started, self.done = config, {}, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.started[nodeid] = time.monotonic()

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.started.pop(nodeid, None)

    def pytest_unconfigure(self) -> None:
        self.done.set()

    def _run(self) -> None:
        while not self.done.wait(60):
            now = time.monotonic()
            slow = sorted(((now - t, n) for n, t in list(self.started.items()) if now - t >= 30), reverse=True)
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if slow and reporter is not None:
                reporter.write_line("still running: " + ", ".join(f"{n} ({int(s) // 60} min {int(s) % 60} s)"
                                                                  for s, n in slow))


# The files with the longest tests, longest first: under `pytest -n` they start first, so that none of them begins
# last and holds up the end while the other workers sit idle.
LONGEST_FIRST = ("test_slurm_nodes.py", "test_readme.py", "test_elastic.py", "test_executor_contract.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _controls_the_session(config):  # an xdist worker: they collect, the controller hands out in this order
        items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
                   else len(LONGEST_FIRST))


def pytest_configure(config: pytest.Config) -> None:
    if _controls_the_session(config) and getattr(config.option, "numprocesses", None):
        config.pluginmanager.register(_StillRunning(config), "gsched-still-running")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def unix_users() -> Iterator[tuple[str, str]]:
    """Two real unprivileged users, created when they do not exist yet (and removed when the session ends)."""
    for name in USERS:
        if not _user_exists(name):
            made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                                  capture_output=True, text=True)
            if made.returncode not in (0, 9):  # 9: a parallel worker made it first
                raise AssertionError(f"useradd {name}: {made.stderr}")
    # The interpreter may live under a 0700 home (pyenv under /root): let the users traverse (o+x, not read)
    # the directories on the way to it and to this checkout, for this session only (their modes are restored).
    for parent in _on_the_way():
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    probe = subprocess.run(["runuser", "-u", USERS[0], "--", sys.executable, "-c", "import scheduler.cli"],
                           cwd=ROOT, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{USERS[0]} cannot run this checkout's Python: {probe.stderr.strip()[-200:]}")
    yield USERS


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
