"""A command job runs in its submitter's environment, as sbatch and pueue do (scheduler/environment.py): the shipped
example as a user runs it under a daemon started the way systemd starts it, a command refused at submit when it is
not on the job's PATH, the environment bounded, and nobody but its owner sees it. What each executor runs the job
with (export all / none / a list) is a case of test_executor_contract.py."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from conftest import EXAMPLES, DaemonProc, cli, make_home, needs_users, write_job

VENV_BIN = Path(sys.executable).parent
SERVICE_PATH = "/usr/bin:/bin"  # a service's PATH: no virtualenv of anybody's on it


def test_the_shipped_own_script_example_runs_with_the_submitters_python_under_a_service_daemon() -> None:
    """The daemon is the installed `gsched` started with a service's PATH; the user submits from a shell whose PATH
    has their environment (here the tests' virtualenv, with torch and gsched) first. The job file is as shipped."""
    d = DaemonProc(make_home(), env={"PATH": SERVICE_PATH}, program=[str(VENV_BIN / "gsched")]).start()
    try:
        example = EXAMPLES / "own-script" / "job.toml"
        done = d.cli("submit", str(example), "--parsable", "--now", env={"PATH": f"{VENV_BIN}:{SERVICE_PATH}"})
        assert done.returncode == 0, done.stderr
        jid = int(done.stdout)
        job = d.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=240)
        assert job["state"] == "COMPLETED", (job, d.cli("logs", str(jid)).stdout[-2000:])
        assert job["metrics"]["steps"] == 600, job["metrics"]
        assert job["command_path"] == str(VENV_BIN / "python3") and job["job_path"].startswith(str(VENV_BIN)), job
        shown = d.cli("show", str(jid), check=True).stdout
        assert f"(python3 -> {VENV_BIN / 'python3'})" in shown, shown
        # money, energy and mass in readable units, never a raw float (cost_eur: 1.3030659744444444e-06)
        assert re.search(r"cost_eur: -?[\d.]+ [mµn]?EUR\n", shown) and re.search(r"energy_j: [\d.]+ [µmk]?Wh\n", shown), \
            shown
        fields = "\n".join(line for line in shown.splitlines() if not line.lstrip().startswith("metrics:"))
        assert not re.search(r"\d\.\d{6,}|e-0\d", fields), shown  # metrics: the job's own JSON, as it wrote it
    finally:
        d.stop()
        d.kill_runners()


def test_a_command_not_on_the_jobs_path_is_refused_at_submit_naming_the_path(tmp_path: Path,
                                                                            daemon: DaemonProc) -> None:
    path = write_job(tmp_path, "missing", 'command = ["no-such-tool-4242", "--x"]\nduration = "1m"\n')
    done = daemon.cli("submit", str(path), env={"PATH": "/opt/nowhere/bin:/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "no-such-tool-4242" in done.stderr and "/opt/nowhere/bin:/usr/bin:/bin" in done.stderr, done.stderr
    assert daemon.status() == []  # nothing stored
    # export = "none": looked up on the service's PATH, not the shell's
    path = write_job(tmp_path, "hidden", 'command = ["tool-4242"]\nduration = "1m"\nexport = "none"\n')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool-4242").write_text("#!/bin/sh\necho hidden\n")
    (tmp_path / "bin" / "tool-4242").chmod(0o755)
    assert daemon.cli("submit", str(path), env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}).returncode == 2
    path.write_text('command = ["tool-4242"]\nduration = "1m"\n')
    ok = daemon.cli("submit", str(path), "--parsable", "--now", env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
    assert daemon.show(int(ok.stdout))["command_path"] == str(tmp_path / "bin" / "tool-4242")


def test_an_environment_past_its_bounds_is_refused_naming_the_limit(tmp_path: Path, daemon: DaemonProc) -> None:
    path = write_job(tmp_path, "big", 'command = ["true"]\nduration = "1m"\n')
    many = {f"X_TEST_V{i}": "x" for i in range(1500)}
    done = daemon.cli("submit", str(path), env=many)
    assert done.returncode == 2 and "environment" in done.stderr and "1024" in done.stderr, done.stderr
    huge = {f"X_HUGE_{i}": "y" * 70_000 for i in range(4)}  # the kernel takes at most 128 KiB a variable
    done = daemon.cli("submit", str(path), env=huge)
    assert done.returncode == 2 and "256 KiB" in done.stderr, done.stderr
    assert daemon.status() == []


@needs_users
def test_nobody_but_the_owner_sees_the_environment_and_the_log_never_has_it(unix_users: tuple[str, str]) -> None:
    b, c = unix_users
    home = make_home()
    work = home.parent / "shared"
    work.mkdir()
    work.chmod(0o1777)
    d = DaemonProc(home).start()
    try:
        job = write_job(work, "secret", f'command = ["sh", "-c", "echo ran"]\nduration = "1m"\nworkdir = "{work}"\n')
        job.chmod(0o644)
        secret = "s3cret-value-9931"
        done = cli("submit", str(job), "--parsable", "--now", home=home, user=b,
                   env={"MY_TOKEN": secret, "API_KEY": secret})
        assert done.returncode == 0, done.stderr
        jid = int(done.stdout)
        assert d.wait_state(jid, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
        mine = json.loads(cli("show", str(jid), "--json", home=home, user=b, check=True).stdout)
        assert mine["spec"]["environment"]["API_KEY"] == secret  # the owner sees what the job ran with
        for args in (["show", str(jid), "--json"], ["show", str(jid)], ["status", "--json"], ["status"],
                     ["report", "--json"]):
            out = cli(*args, home=home, user=c, check=True).stdout
            assert secret not in out and "API_KEY" not in out, (args, out[:2000])
        theirs = json.loads(cli("show", str(jid), "--json", home=home, user=c, check=True).stdout)
        assert theirs["spec"] is None and theirs["command_path"] is None and theirs["job_path"] is None
    finally:
        d.stop()
        d.kill_runners()
    assert secret not in d.stderr_path.read_text()


def test_scheduler_train_installs_into_a_users_own_venv_without_the_daemons_dependencies(tmp_path: Path) -> None:
    """The step jobs/examples/own-script/README.md gives a user: gsched installed with --no-deps into their own
    environment, where `import scheduler.train` needs nothing of the daemon's (torch only once fit runs)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    wheels, venv = tmp_path / "wheels", tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(root)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("gsched-*.whl"))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True, capture_output=True,
                   timeout=300, env=clean)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, scheduler.train; "
                            "print(scheduler.train.__file__, sorted(m for m in ('torch', 'sqlmodel', 'httpx', 'typer') "
                            "if m in sys.modules))"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})  # the user's venv alone
    assert probe.returncode == 0, probe.stderr
    where, loaded = probe.stdout.split(" ", 1)
    assert where.startswith(str(venv)) and loaded.strip() == "[]", probe.stdout
