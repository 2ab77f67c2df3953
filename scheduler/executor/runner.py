"""The runner: one process per job run, in its own session, started by the daemon.

It claims the run (exactly once, against a restarted daemon that may have given the start up), joins
the run's cgroup, starts the job as its owner, copies the job's output into the log up to its cap,
measures energy, enforces the time limit, kills whatever the job left behind, and writes
``result.json`` atomically. Because it outlives the daemon (systemd's KillMode=process), a restarted
daemon re-adopts a running job by watching this process and reading the result file.

Usage: python -m scheduler.executor.runner RUNFILE.json
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scheduler.errors import GschedError
from scheduler.executor.energy import CpuEstimateMeter, choose_meter
from scheduler.executor.procs import TOKEN_VAR, RunGroup, proc_start_ticks

METRICS_PREFIX = b"gsched-metrics "
MAX_METRICS_LINE = 64 * 1024
EXIT_NO_RESULT = 75  # the claim or the result could not be written (full disk): the daemon says so
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address

# Runs as the job's owner, after the uid drop, so the kernel checks the owner's access to the workdir
# (root's chdir would walk into directories the owner cannot reach). Stdlib only, isolated (-I -S):
# nothing from the workdir or the owner's environment is imported. Errors go to fd ERR_FD, which the
# exec closes on success.
_ENTER = """\
import os, sys
fd, workdir, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def fail(code, message):
    os.write(fd, message.encode("utf-8", "replace"))
    os._exit(code)
try:
    os.chdir(workdir)
except OSError as exc:
    fail(126, "cannot enter workdir %s: %s" % (workdir, exc.strerror))
os.set_inheritable(fd, False)
try:
    os.execvp(argv[0], argv)
except FileNotFoundError:
    fail(127, "command not found: %s (searched PATH=%s)" % (argv[0], os.environ.get("PATH", "")[:1000]))
except OSError as exc:
    fail(126, "cannot execute %s: %s" % (argv[0], exc.strerror))
"""


def claim(path: Path, record: dict[str, Any]) -> bool:
    """Take the run: link a complete claim file into place. link() fails if the name exists, so of the
    runner and a daemon that gave this start up, exactly one wins, and the file is never half-written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class LogPump:
    """Copies the job's output into its log up to ``cap_bytes``, then drains and drops the rest, and keeps
    the last ``gsched-metrics`` line whether or not it was logged."""

    def __init__(self, source: int, log_fd: int, cap_bytes: int) -> None:
        self.source, self.log_fd = source, log_fd
        self.room = max(0, cap_bytes - os.fstat(log_fd).st_size)
        self.metrics_line: bytes | None = None
        self.dropped = 0
        self.write_error: str | None = None
        self._partial = b""
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        if self.write_error is None and self.room > 0:
            part = data[: self.room]
            try:
                os.write(self.log_fd, part)
                self.room -= len(part)
                data = data[len(part):]
                if self.room == 0:
                    os.write(self.log_fd, b"\ngsched: log reached daemon.max_log_mb; the rest of the output is dropped\n")
            except OSError as exc:
                self.write_error = exc.strerror
        self.dropped += len(data) if self.write_error is None and self.room == 0 else 0

    def _scan(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_METRICS_LINE:
            self._partial = b"\0"  # a line too long to be metrics: skip the rest of it
        for line in lines:
            if line.startswith(METRICS_PREFIX) and len(line) <= MAX_METRICS_LINE:
                self.metrics_line = line[len(METRICS_PREFIX):]

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.source, 65536)
            except OSError:
                break
            if not data:
                break
            self._write(data)
            self._scan(data)
        self._scan(b"\n")
        os.close(self.source)

    def metrics(self) -> Any:
        if self.metrics_line is None:
            return {}
        try:
            return json.loads(self.metrics_line)
        except (ValueError, RecursionError):  # the job's text: parse_result drops what is not metrics
            return {"_unparsed": True}


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def record(result_path: Path, outcome: dict[str, Any]) -> int:
    try:
        write_atomic(result_path, outcome)
        return 0
    except OSError as exc:
        # A full disk: try once more with the few fields the daemon needs, then say why by the exit code.
        small = {k: outcome.get(k) for k in ("exit_code", "signal", "timed_out", "duration_s")}
        small["error"] = f"the runner could not write its full result: {exc.strerror}"
        try:
            write_atomic(result_path, small)
            return 0
        except OSError:
            _say(f"gsched-runner: cannot record the result: {exc.strerror}")
            return EXIT_NO_RESULT


def _say(message: str) -> None:
    """A line for the job's log; on a full disk it is lost, and that must not end the runner."""
    try:
        print(message, flush=True)
    except OSError:
        pass


def interface_towards(address: str) -> str | None:
    """The name of the network interface this host reaches ``address`` by (itself included), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # UDP: picks the route, sends nothing
            local = probe.getsockname()[0]
            for _index, name in socket.if_nameindex():
                try:
                    raw = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address on it
                if socket.inet_ntoa(raw[20:24]) == local:
                    return name
    except OSError:
        return None
    return None


def from_slurm(spec: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """Under Slurm the run file is written before the allocation: the GPUs, and the run's number (a requeued job
    runs again under the same id), come from the job's environment."""
    restart = environ.get("SLURM_RESTART_COUNT", "0")
    spec["result_path"] = spec["result_path"].replace("{restart}", restart if restart.isdigit() else "0")
    nodes = int(spec.get("nodes") or 1)
    if nodes > 1:  # one runner a node (srun): torchrun's static rendezvous at the first node, where srun started
        rank = environ.get("SLURM_NODEID", "")
        job = environ.get("SLURM_JOB_ID", "0")
        if not rank.isdigit() or not environ.get("SLURM_LAUNCH_NODE_IPADDR"):
            raise GschedError("a run across nodes needs SLURM_NODEID and SLURM_LAUNCH_NODE_IPADDR (started by srun)")
        spec["result_path"] = spec["result_path"].replace("{node}", rank)
        # each node's runner cleans up its own node's processes only, wherever the nodes share a host
        spec["token"] = f"{spec['token']}-{rank}"
        spec["env"][TOKEN_VAR] = spec["token"]
        spec["env"].update(PET_NNODES=str(nodes), PET_NODE_RANK=rank,
                           PET_MASTER_ADDR=environ["SLURM_LAUNCH_NODE_IPADDR"],
                           PET_MASTER_PORT=str(20000 + int(job) % 10000 if job.isdigit() else 29500),
                           GSCHED_NODES=str(nodes), GSCHED_NODE_RANK=rank)
        # Where a node's host name resolves to loopback (or to another network), gloo and NCCL would listen where
        # the other nodes cannot reach: use the interface the first node is reached by, unless the job chose one.
        ifname = interface_towards(environ["SLURM_LAUNCH_NODE_IPADDR"])
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if ifname and name not in spec["env"]:
                spec["env"][name] = ifname
    for name in spec.get("inherit_env", ()):
        if name in environ:
            spec["env"][name] = environ[name]
    cpus = environ.get("SLURM_CPUS_ON_NODE", "")
    if cpus.isdigit() and int(cpus) > 0:
        # As on a local run: the threads are the CPUs the run was given, shared by its processes, whatever the
        # submitter's shell said (torch's default, every core of the node, oversubscribes a shared node).
        spec["env"]["OMP_NUM_THREADS"] = str(max(1, int(cpus) // max(1, int(spec.get("processes") or 1))))
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    spec["device_uuids"] = visible
    spec["env"].update(GSCHED_DEVICES=",".join(visible), GSCHED_NUM_DEVICES=str(max(1, len(visible))))
    return spec


def run(runfile: Path) -> int:
    spec = json.loads(runfile.read_text())
    if spec.get("slurm"):
        spec = from_slurm(spec, dict(os.environ))
    me = {"by": "runner", "pid": os.getpid(), "start_ticks": proc_start_ticks(os.getpid())}
    # Slurm runs a job id once (and again only when requeued): there the claim is Slurm's.
    if spec.get("claim_path") and not claim(Path(spec["claim_path"]), me):
        _say("gsched-runner: the daemon gave this start up before the runner claimed it; not running")
        return 0
    group = RunGroup(spec["token"], Path(spec["cgroup"]) if spec.get("cgroup") else None)
    try:
        group.join(os.getpid())
    except OSError as exc:
        _say(f"gsched-runner: cannot join cgroup {group.cgroup}: {exc}")
        group = RunGroup(spec["token"], None)
    result_path = Path(spec["result_path"])
    grace_s = float(spec["kill_grace_s"])
    child: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()

    def kill_rest() -> None:
        group.kill(exclude={os.getpid()})

    def on_term(signum: int, _frame: Any) -> None:
        # The job gets the signal in its own process group; whatever ignores it past the grace period,
        # and whatever it started elsewhere, is killed with it.
        if not stopping.is_set():
            stopping.set()
            if child is not None and child.poll() is None:
                try:
                    os.killpg(child.pid, signum)
                except ProcessLookupError:
                    pass
            threading.Timer(grace_s, kill_rest).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if spec.get("cpu_cores"):
        os.sched_setaffinity(0, spec["cpu_cores"])
    outcome: dict[str, Any] = {"started_wall": datetime.now(timezone.utc).isoformat()}
    try:
        if spec["device_kind"] == "gpu" and not spec["device_uuids"]:
            raise GschedError("no GPUs in CUDA_VISIBLE_DEVICES")
        meter = choose_meter(spec["device_kind"], spec["device_uuids"], spec["cpu_watts_per_core"],
                             spec["power_sample_s"])
        meter.begin_window()
    except (GschedError, ImportError) as exc:  # the job runs anyway, measured by the labelled estimate
        _say(f"gsched-runner: energy meter unavailable ({exc}); using the CPU estimate")
        meter = CpuEstimateMeter(spec["cpu_watts_per_core"])
        meter.begin_window()
    started = time.monotonic()
    ids: dict[str, Any] = {}
    if spec["uid"] != os.getuid():
        ids = {"user": spec["uid"], "group": spec["gid"], "extra_groups": []}
    err_r, err_w = os.pipe()
    out_r, out_w = os.pipe()
    argv = [sys.executable, "-I", "-S", "-c", _ENTER, str(err_w), spec["cwd"], *spec["argv"]]
    try:
        child = subprocess.Popen(argv, env=spec["env"], stdin=subprocess.DEVNULL, stdout=out_w,
                                 stderr=subprocess.STDOUT, pass_fds=(err_w,), process_group=0, **ids)
    except OSError as exc:
        outcome.update(exit_code=126, error=f"cannot start the job: {exc}")
    finally:
        os.close(err_w)
        os.close(out_w)
    pump = LogPump(out_r, sys.stdout.fileno(), int(spec["max_log_bytes"]))
    if child is not None:
        time_limit_s = spec.get("time_limit_s")
        try:
            child.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            outcome["timed_out"] = True
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                kill_rest()
        while True:  # a signal handler may interrupt wait(); make sure the child is reaped
            try:
                child.wait()
                break
            except InterruptedError:
                continue
        code = child.returncode
        outcome["exit_code"] = 128 - code if code < 0 else code
        if code < 0:
            outcome["signal"] = signal.Signals(-code).name
        failure = os.read(err_r, 4096).decode("utf-8", "replace")
        if failure:
            outcome["error"] = failure
    os.close(err_r)
    kill_rest()  # background processes the job left must not outlive it (or hold its devices)
    pump.thread.join(timeout=10)
    reading = meter.end_window()
    outcome.update(
        duration_s=time.monotonic() - started,
        energy_j=reading.energy_j,
        energy_source=reading.source,
        energy_detail=reading.detail,
        terminated=stopping.is_set(),
        metrics=pump.metrics(),
        log_dropped_bytes=pump.dropped,
        log_error=pump.write_error,
    )
    return record(result_path, outcome)


if __name__ == "__main__":
    try:
        code = run(Path(sys.argv[1]))
    except OSError as exc:
        # The disk filled before the runner wrote its claim (the job never started): a reason, not a traceback.
        if exc.errno not in _DISK_ERRNOS:
            raise
        _say(f"gsched-runner: cannot write {exc.filename or 'its files'}: {exc.strerror}")
        code = EXIT_NO_RESULT
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os._exit(code)  # nothing left to flush that could fail on a full disk and change the exit code
