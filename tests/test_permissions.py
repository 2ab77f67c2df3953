"""A real second Unix user (conftest.unix_users), when the tests run as root (skipped otherwise)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest

from conftest import DaemonProc, make_home, needs_users

pytestmark = needs_users


@pytest.fixture
def other_user(unix_users: tuple[str, str]) -> str:
    return unix_users[0]


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
