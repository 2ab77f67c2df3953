"""A real Slurm for tests: munged, slurmctld and slurmd on loopback, with four fake GPUs; or several nodes
(``nodes=2``), each slurmd in a network namespace of its own on a bridge the fixture creates, one slurmctld.

Installs the Debian packages when root and apt are available (about 10 s), writes its own slurm.conf under a
temporary directory (``SLURM_CONF`` points the client tools at it), starts the daemons by hand (no systemd here)
and stops them by pid; a multi-node cluster then deletes its namespaces, links and bridge, leaving nothing behind.
A run killed before it could stop (a CI job cut off) leaves its network behind, so a new cluster deletes the
networks of clusters whose process is gone, takes a subnet no route uses and a controller port nothing listens on.
Facts behind each setting: ../shared/slurm/NOTES.md.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
MUNGED_PID = Path("/run/munge/munged.pid")


def _running(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive (a zombie is not)."""
    try:
        pid = int(pid_file.read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return None if state in ("Z", "X") else pid
    except (OSError, ValueError, IndexError):
        return None
FAKE_GPUS = Path("/run/fakegpu")
# Parallel test workers take these in turn: one installs Slurm, one picks a free /24 at a time.
APT_LOCK, NET_LOCK = Path("/tmp/gsched-test-apt.lock"), Path("/tmp/gsched-test-net.lock")


def munged_pid() -> int | None:
    """The running munged's pid. Clusters share it and never stop it: the test session stops the one it started
    when every worker is done (tests/conftest.py)."""
    return _running(MUNGED_PID)


def why_not_available() -> str | None:
    """None when a Slurm can be started here, else why not (the tests skip with it)."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (to start munged, slurmctld and slurmd)"
    if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")):
            return None
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"installing Slurm failed: {' '.join(argv)}: {done.stderr.strip()[-300:]}"
    return None


NETS = [f"10.251.{x}" for x in range(37, 255)]  # candidate private /24s: the bridge is .1, node k is .(10 + k)
STALE = re.compile(r"gs[bnv](\d+)(-\d+)?")  # a cluster's bridge, namespaces and veths, tagged with its pid


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale_networks() -> None:
    """Deletes the namespaces and links of multi-node clusters whose test process is gone."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    for kind, names in (("netns", netns),
                        ("link", [line.split(":")[1].strip().split("@")[0] for line in links if ":" in line])):
        for name in names:
            m = STALE.fullmatch(name)
            if m and not _alive(int(m.group(1))):
                argv = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
                subprocess.run(argv, capture_output=True, timeout=30)  # gone already with its namespace: fine


def free_subnet() -> str:
    """The first candidate /24 that no route on this host uses (a live cluster's, or any other)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                            timeout=30).stdout
    used = set(re.findall(r"\b(\d+\.\d+\.\d+)\.\d+", routes))
    for net in NETS:
        if net not in used:
            return net
    raise RuntimeError("no free private /24 for the test nodes in 10.251.37-254.0")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})"


class SlurmCluster:
    def __init__(self, base: Path, gpus: int = 4, cpus: int = 8, nodes: int = 1) -> None:
        """``gpus`` and ``cpus`` per node. The controller listens on a free port, so that clusters may run side by
        side and beside anything a killed run left."""
        self.base, self.gpus, self.cpus, self.nodes = base, gpus, cpus, nodes
        self.conf = base / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        tag = f"{os.getpid()}"  # whole, so that a later cluster can tell whether this one's process lives
        self.net = ""  # the multi-node cluster's /24, chosen when it starts
        self.bridge = f"gsb{tag}"
        self.netns = [f"gsn{tag}-{k}" for k in range(1, nodes + 1)] if nodes > 1 else []
        self.veths = [f"gsv{tag}-{k}" for k in range(1, nodes + 1)] if nodes > 1 else []
        self.node_names = [f"n{k}" for k in range(1, nodes + 1)] if nodes > 1 else ["localhost"]
        self.slurmd: dict[str, subprocess.Popen[bytes]] = {}

    def _ip(self, *argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)

    def _network(self) -> None:
        remove_stale_networks()
        self.net = free_subnet()
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for k, (ns, veth) in enumerate(zip(self.netns, self.veths), start=1):
            self._ip("netns", "add", ns)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", veth, "master", self.bridge)
            self._ip("link", "set", veth, "up")
            self._ip("-n", ns, "addr", "add", f"{self.net}.{10 + k}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def _write_config(self) -> None:
        self.base.chmod(0o755)  # slurmctld runs as the slurm user and must reach its state directory
        for sub in ("state", "spool", "log", *(f"spool-{n}" for n in self.node_names)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("state", "log"):  # slurmctld writes these as the slurm user
            shutil.chown(self.base / sub, "slurm", "slurm")
        FAKE_GPUS.mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            link = FAKE_GPUS / f"nvidia{i}"
            try:
                link.symlink_to("/dev/null")  # gres needs character devices; slurmd drops file-less GPUs
            except FileExistsError:  # an earlier or a parallel cluster's
                pass
        names = "localhost" if self.nodes == 1 else f"n[1-{self.nodes}]"
        (self.base / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={names} Name=gpu File={FAKE_GPUS}/nvidia[0-{self.gpus - 1}]\n")
        if self.nodes == 1:
            host = f"SlurmctldHost=localhost\nSlurmctldPort={free_port()}\nSlurmdPort={free_port()}\n"
            node_lines = (f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 "
                          f"Gres=gpu:{self.gpus} State=UNKNOWN\n")
            per_node = (f"SlurmdSpoolDir={self.base}/spool\nSlurmdPidFile={self.base}/slurmd.pid\n"
                        f"SlurmdLogFile={self.base}/log/slurmd.log\n")
        else:  # slurmctld accepts only this host's own name, at the bridge's address; a node an admin set down
            # stays down until resumed (ReturnToService=1), one that stopped answering returns when it answers
            host = (f"SlurmctldHost={socket.gethostname().split('.')[0]}({self.net}.1)\n"
                    f"SlurmctldPort={free_port()}\nSlurmdPort=6918\n")  # each slurmd has its namespace's ports
            node_lines = "".join(f"NodeName=n{k} NodeAddr={self.net}.{10 + k} CPUs={self.cpus} RealMemory=1000 "
                                 f"Gres=gpu:{self.gpus} State=UNKNOWN\n" for k in range(1, self.nodes + 1))
            per_node = (f"SlurmdSpoolDir={self.base}/spool-%n\nSlurmdPidFile={self.base}/slurmd-%n.pid\n"
                        f"SlurmdLogFile={self.base}/log/slurmd-%n.log\n")
        self.conf.write_text(f"""ClusterName=gsched-test
{host.rstrip()}
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
ReturnToService={2 if self.nodes == 1 else 1}
SlurmdParameters=config_overrides
MinJobAge=600
StateSaveLocation={self.base}/state
SlurmctldPidFile={self.base}/slurmctld.pid
SlurmctldLogFile={self.base}/log/slurmctld.log
{per_node.rstrip()}
{node_lines.rstrip()}
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        for path, owner in ((Path("/run/munge"), "munge"), (Path("/var/log/munge"), "munge"),
                            (Path("/var/lib/munge"), "munge")):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, owner, owner)
        if not munged_pid():  # one already running (the machine's own, or a parallel worker's) is used as it is
            started = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], capture_output=True,
                                     text=True, timeout=30)
            if started.returncode != 0 and not munged_pid():
                raise RuntimeError(f"munged did not start: {started.stderr.strip()[-300:]}")
        if self.nodes > 1:
            try:
                with open(NET_LOCK, "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    self._network()
            except subprocess.CalledProcessError as exc:
                self.stop()
                raise RuntimeError(f"cannot make the test network: {exc.cmd}: {exc.stderr.decode()[-300:]}") from exc
        self._write_config()
        self._popen(["slurmctld", "-D", "-f", str(self.conf)])
        for name in self.node_names:
            self.start_node(name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T").stdout.split()
            if state == ["idle"] * self.nodes:
                return self
            time.sleep(0.2)
        self.stop()
        logs = sorted((self.base / "log").glob("slurm*.log"))
        raise RuntimeError(f"slurm did not come up (sinfo says {state!r}); the ends of its logs:\n"
                           + "\n".join(f"--- {log}\n{_tail(log)}" for log in logs))

    def _popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        devnull = subprocess.DEVNULL
        proc = subprocess.Popen(argv, env=self.env, stdin=devnull, stdout=devnull, stderr=devnull,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_node(self, name: str) -> None:
        """One node's slurmd; in its namespace by nsenter (``ip netns exec`` remounts /sys, and slurmd then finds
        no cgroup file system)."""
        argv = ["slurmd", "-D", "-N", name, "-f", str(self.conf)]
        if self.nodes > 1:
            argv = ["nsenter", f"--net=/run/netns/{self.netns[self.node_names.index(name)]}", *argv]
        self.slurmd[name] = self._popen(argv)

    def kill_node(self, name: str) -> None:
        """A node's slurmd dies (SIGKILL): Slurm sees the node stop answering."""
        proc = self.slurmd.pop(name)
        proc.kill()
        proc.wait()

    def node_state(self, name: str) -> str:
        return self.run("sinfo", "-h", "-n", name, "-o", "%T").stdout.strip()

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
        self.slurmd.clear()
        for ns in self.netns:  # deleting a namespace deletes its end of the veth pair, and with it the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
        if self.nodes > 1:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
