"""The runner: one process per job run, in its own session, started by the daemon.

It owns the job's process (dropping to the owner's uid when the daemon is root), measures its
energy, enforces the time limit, and writes ``result.json`` atomically. Because it outlives the
daemon (systemd's KillMode=process), a restarted daemon re-adopts a running job by watching this
process and reading the result file; the job never depends on the daemon being up.

Usage: python -m scheduler.executor.runner RUNFILE.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scheduler.errors import GschedError
from scheduler.executor.energy import CpuEstimateMeter, choose_meter

METRICS_PREFIX = "gsched-metrics "


def last_metrics(log_path: Path, tail_bytes: int = 65536) -> dict[str, Any]:
    """The workload's last ``gsched-metrics {json}`` line in its log, if any."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return {}
    for line in reversed(tail.splitlines()):
        if line.startswith(METRICS_PREFIX):
            try:
                value = json.loads(line[len(METRICS_PREFIX):])
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(runfile: Path) -> int:
    spec = json.loads(runfile.read_text())
    result_path = Path(spec["result_path"])
    grace_s = float(spec["kill_grace_s"])
    child: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()

    def kill_later() -> None:
        if child is not None and child.poll() is None:
            child.kill()

    def on_term(signum: int, _frame: Any) -> None:
        # The daemon signals the whole process group, so the job already has the signal too; the
        # runner stays to record the result, and kills the job if it ignores the grace period.
        if not stopping.is_set():
            stopping.set()
            if child is not None and child.poll() is None:
                child.send_signal(signum)
            threading.Timer(grace_s, kill_later).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if spec.get("cpu_cores"):
        os.sched_setaffinity(0, spec["cpu_cores"])
    outcome: dict[str, Any] = {"started_wall": datetime.now(timezone.utc).isoformat()}
    try:
        meter = choose_meter(spec["device_kind"], spec["device_uuids"], spec["cpu_watts_per_core"],
                             spec["power_sample_s"])
        meter.begin_window()
    except (GschedError, ImportError) as exc:  # the job runs anyway, measured by the labelled estimate
        print(f"gsched-runner: energy meter unavailable ({exc}); using the CPU estimate", flush=True)
        meter = CpuEstimateMeter(spec["cpu_watts_per_core"])
        meter.begin_window()
    started = time.monotonic()
    ids: dict[str, Any] = {}
    if spec["uid"] != os.getuid():
        ids = {"user": spec["uid"], "group": spec["gid"], "extra_groups": []}
    try:
        child = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL, **ids)
    except FileNotFoundError:
        outcome.update(exit_code=127, error=f"command not found: {spec['argv'][0]}")
    except PermissionError as exc:
        outcome.update(exit_code=126, error=f"cannot execute {spec['argv'][0]}: {exc.strerror}")
    except OSError as exc:
        outcome.update(exit_code=126, error=f"cannot start {spec['argv'][0]}: {exc}")
    if child is not None:
        time_limit_s = spec.get("time_limit_s")
        try:
            child.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            outcome["timed_out"] = True
            child.terminate()
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
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
    reading = meter.end_window()
    outcome.update(
        duration_s=time.monotonic() - started,
        energy_j=reading.energy_j,
        energy_source=reading.source,
        energy_detail=reading.detail,
        terminated=stopping.is_set(),
        metrics=last_metrics(Path(spec["log_path"])),
    )
    write_atomic(result_path, outcome)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
