"""A real second Unix user, created here when the tests run as root (skipped otherwise)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, DaemonProc, make_home

USER = "gsched-test2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
                                reason="needs root, useradd and runuser to create a second user")


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        created = True
    # The interpreter may live under a 0700 home (pyenv under /root): let the user traverse (o+x, not read) the
    # directories on the way to it and to this checkout, for this module only, and restore their modes after.
    opened: dict[Path, int] = {}
    for target in (Path(os.path.realpath(sys.executable)), ROOT):
        for parent in target.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001 and parent not in opened:
                opened[parent] = mode
                parent.chmod(mode | 0o001)
    probe = subprocess.run(["runuser", "-u", USER, "--", sys.executable, "-c", "import scheduler.cli"],
                           cwd=ROOT, capture_output=True, text=True)
    if probe.returncode != 0:
        for parent, mode in opened.items():
            parent.chmod(mode)
        pytest.skip(f"{USER} cannot run this checkout's Python: {probe.stderr.strip()[-200:]}")
    try:
        yield USER
    finally:
        for parent, mode in opened.items():
            parent.chmod(mode)
    if created:
        subprocess.run(["userdel", USER], check=False)


def job_file(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(body)
    path.chmod(0o644)
    return path


def test_owner_or_root_only_may_cancel_or_read_logs(other_user: str, daemon: DaemonProc) -> None:
    shared = daemon.home.parent
    root_job = daemon.submit(job_file(shared, "rootjob", 'command = ["sleep", "30"]\nduration = "30s"\n'), "--now")
    daemon.wait_state(root_job, {"RUNNING"})

    refused = daemon.cli("cancel", str(root_job), user=other_user)
    assert refused.returncode == 5 and "belongs to root: only its owner or root may cancel it" in refused.stderr
    refused = daemon.cli("logs", str(root_job), user=other_user)
    assert refused.returncode == 5 and "may read its log" in refused.stderr
    seen = json.loads(daemon.cli("status", "--json", user=other_user, check=True).stdout)["jobs"]
    assert [j["state"] for j in seen] == ["RUNNING"]  # reading the queue is open to all, like squeue

    theirs = daemon.submit(job_file(shared, "theirs", 'command = ["id", "-un"]\nduration = "10s"\n'), "--now",
                           user=other_user)
    assert daemon.cli("wait", str(theirs), user=other_user).returncode == 0
    assert daemon.show(theirs)["owner"] == other_user
    assert daemon.cli("logs", str(theirs), user=other_user, check=True).stdout.strip() == other_user  # ran as them
    assert daemon.cli("logs", str(theirs), check=True).returncode == 0  # root may read it too
    assert daemon.cli("cancel", str(root_job)).returncode == 0


def test_unprivileged_daemon_takes_only_its_users_jobs(other_user: str) -> None:
    home = make_home()
    account = pwd.getpwnam(other_user)
    os.chown(home.parent, account.pw_uid, account.pw_gid)
    daemon = DaemonProc(home)
    os.chown(daemon.config, account.pw_uid, account.pw_gid)
    daemon.start(user=other_user)
    try:
        job = job_file(home.parent, "mine", 'command = ["true"]\nduration = "10s"\n')
        assert daemon.submit(job, "--now", user=other_user) == 1
        assert daemon.submit(job, "--now") == 2  # root may
        refused = daemon.cli("submit", str(job), user="nobody")
        assert refused.returncode == 5 and f"only {other_user} and root may submit" in refused.stderr
    finally:
        daemon.stop()
        daemon.kill_runners()
        shutil.rmtree(home.parent, ignore_errors=True)
