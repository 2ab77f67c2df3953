"""A real single-node Slurm for tests: munged, slurmctld and slurmd on loopback, with four fake GPUs.

Installs the Debian packages when root and apt are available (about 10 s), writes its own slurm.conf under a
temporary directory (``SLURM_CONF`` points the client tools at it), starts the daemons by hand (no systemd here)
and stops them by pid. Facts behind each setting: ../shared/slurm/NOTES.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
FAKE_GPUS = Path("/run/fakegpu")


def why_not_available() -> str | None:
    """None when a Slurm can be started here, else why not (the tests skip with it)."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (to start munged, slurmctld and slurmd)"
    if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return f"installing Slurm failed: {' '.join(argv)}: {done.stderr.strip()[-300:]}"
    return None


class SlurmCluster:
    def __init__(self, base: Path, gpus: int = 4, cpus: int = 8) -> None:
        self.base, self.gpus, self.cpus = base, gpus, cpus
        self.conf = base / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        self.base.chmod(0o755)  # slurmctld runs as the slurm user and must reach its state directory
        for sub in ("state", "spool", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("state", "log"):  # slurmctld writes these as the slurm user
            shutil.chown(self.base / sub, "slurm", "slurm")
        FAKE_GPUS.mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            link = FAKE_GPUS / f"nvidia{i}"
            if not link.is_symlink():
                link.symlink_to("/dev/null")  # gres needs character devices; slurmd drops file-less GPUs
        (self.base / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName=localhost Name=gpu File={FAKE_GPUS}/nvidia[0-{self.gpus - 1}]\n")
        self.conf.write_text(f"""ClusterName=gsched-test
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.base}/log/jobcomp.log
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
StateSaveLocation={self.base}/state
SlurmdSpoolDir={self.base}/spool
SlurmctldPidFile={self.base}/slurmctld.pid
SlurmdPidFile={self.base}/slurmd.pid
SlurmctldLogFile={self.base}/log/slurmctld.log
SlurmdLogFile={self.base}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        self._write_config()
        for path, owner in ((Path("/run/munge"), "munge"), (Path("/var/log/munge"), "munge"),
                            (Path("/var/lib/munge"), "munge")):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, owner, owner)
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True, timeout=30)
        devnull = subprocess.DEVNULL
        for argv in (["slurmctld", "-D", "-f", str(self.conf)], ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)]):
            self.procs.append(subprocess.Popen(argv, env=self.env, stdin=devnull, stdout=devnull, stderr=devnull,
                                               start_new_session=True))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"slurm did not come up (sinfo says {state!r}); logs in {self.base / 'log'}")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        """Cancel every job (their steps are slurmstepd children of slurmd's session, not ours), then stop the
        daemons by pid."""
        if self.procs and self.procs[0].poll() is None:
            self.run("scancel", "--full", "--partition=gpu")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run("squeue", "-h", "-t", "RUNNING,COMPLETING").stdout.strip():
                time.sleep(0.2)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # seen: a slurmd whose controller died ignores SIGTERM
                proc.kill()
                proc.wait()
        self.procs.clear()
