"""Every process of one run, found again and killed as a whole: never by name, never by a bare pid.

A run lives in a cgroup v2 of its own when the daemon may create one (root, or a delegated systemd
service): nothing it forks can leave it, and ``cgroup.kill`` ends it at once. Elsewhere a run is the set
of processes whose environment carries the run's token (``GSCHED_RUN_TOKEN``), which the runner and
everything the job starts inherit; a process that scrubs its environment escapes that net, which is why
the cgroup is preferred.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gsched.procs")
TOKEN_VAR = "GSCHED_RUN_TOKEN"


def proc_start_ticks(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int | None, start_ticks: int | None) -> bool:
    """The pid still is the process that started at ``start_ticks`` (pids are reused)."""
    return pid is not None and start_ticks is not None and pid > 0 and proc_start_ticks(pid) == start_ticks


def cgroup_base(name: str = "gsched") -> Path | None:
    """A cgroup v2 directory under this process's own cgroup where run cgroups may be made, or None."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for line in mounts:
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            mount = Path(fields[0].split()[4])
            base = mount / own.strip().lstrip("/") / name
            try:
                base.mkdir(exist_ok=True)
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError:
                return None
            return base
    return None


@dataclass(frozen=True)
class RunGroup:
    token: str
    cgroup: Path | None = None

    def create(self) -> None:
        if self.cgroup is not None:
            self.cgroup.mkdir(exist_ok=True)

    def join(self, pid: int) -> None:
        """Move ``pid`` (the runner, before it starts the job) into the run's cgroup."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        """The cgroup's processes and those carrying the token: a runner that could not join the cgroup still
        leaves its job findable."""
        found = set(_pids_with_env(f"{TOKEN_VAR}={self.token}".encode()))
        if self.cgroup is not None:
            try:
                found |= {int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()}
            except OSError:
                pass  # gone, or never made
        return found

    def signal(self, signum: int, exclude: Iterable[int] = ()) -> int:
        sent = 0
        for pid in self.pids() - set(exclude):
            try:
                os.kill(pid, signum)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def kill(self, exclude: Iterable[int] = (), timeout_s: float = 5.0) -> bool:
        """SIGKILL every process of the run but ``exclude``; True once none is left."""
        keep = set(exclude)
        if self.cgroup is not None and not keep:
            try:
                (self.cgroup / "cgroup.kill").write_text("1")
            except OSError:
                pass  # older kernels: signal each process below
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.pids() - keep
            if not left:
                return True
            if time.monotonic() > deadline:
                log.error("run %s: processes %s survive SIGKILL", self.token, sorted(left))
                return False
            self.signal(signal.SIGKILL, keep)
            time.sleep(0.05)

    def remove(self) -> None:
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", self.cgroup, exc)


def _pids_with_env(needle: bytes) -> Iterable[int]:
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read(1 << 20)
        except OSError:
            continue
        padded = b"\0" + env + (b"" if env.endswith(b"\0") else b"\0")
        if b"\0" + needle + b"\0" in padded:
            if proc_start_ticks(int(entry.name)) is not None:  # a zombie is already dead
                yield int(entry.name)
