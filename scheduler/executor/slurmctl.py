"""Slurm's commands and what their JSON says: the command side of the Slurm executor (slurm.py). Parsing and argv
building are pure; the caller runs the commands (as the job's owner where Slurm authenticates the submitter).

Facts used here (Slurm 22.05, ../shared/slurm/NOTES.md): ``squeue --json`` and ``sinfo --json`` are the portable
interface (pyslurm does not build against 22.05); ``job_state`` and ``state_reason`` are strings, the begin time is
``eligible_time`` and the end ``end_time`` (epoch seconds), ``tres_per_node`` reads ``gres:gpu:2``, and
``exit_code`` is the raw wait status (768 = exit 3). gsched's jobs are named ``gsched-<id>-<token>``, so a restarted
daemon finds what it submitted, and submits nothing twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from scheduler.errors import GschedError

NAME_PREFIX = "gsched-"
_GPUS = re.compile(r"gpu(?::[^:,()]+)?[:=](\d+)")
# Slurm's ended states -> gsched's (Slurm's own names); those not listed are still queued or running in Slurm. A
# job Slurm preempted and requeues shows as PENDING again; one it preempted for good has ended.
ENDED = {"COMPLETED": "COMPLETED", "FAILED": "FAILED", "CANCELLED": "CANCELLED", "TIMEOUT": "TIMEOUT",
         "DEADLINE": "FAILED", "NODE_FAIL": "FAILED", "OUT_OF_MEMORY": "FAILED", "BOOT_FAIL": "FAILED",
         "PREEMPTED": "FAILED"}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


class SlurmError(GschedError):
    exit_code = 1


@dataclass(frozen=True)
class SlurmJob:
    job_id: int
    name: str
    state: str  # Slurm's job_state
    reason: str
    gpus: int  # on each of its nodes (tres_per_node)
    begin: datetime | None
    end: datetime | None  # when it ended, or is expected to (start + time limit)
    start: datetime | None  # when it started (or is expected to)
    restarts: int  # how often it was requeued: its run's SLURM_RESTART_COUNT
    exit_code: int | None  # the process's exit code, from the raw wait status
    signal: int | None
    nodes: str
    user: str
    comment: str
    required_nodes: str = ""  # --nodelist, or what scontrol update ReqNodeList set
    node_count: int = 1

    @property
    def gpus_total(self) -> int:
        return self.gpus * max(1, self.node_count)

    @property
    def gsched_id(self) -> tuple[int, str] | None:
        """(gsched job id, run token) for a job gsched submitted, else None."""
        match = re.fullmatch(r"gsched-(\d+)-([0-9a-f]+)", self.name)
        return (int(match.group(1)), match.group(2)) if match else None

    @property
    def gsched_state(self) -> str:
        """gsched's state for it: an ended state, RUNNING, or PLANNED while Slurm still holds it."""
        if self.state in ENDED:
            return ENDED[self.state]
        return "RUNNING" if self.state in RUNNING else "PLANNED"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31 else 0


def gres_gpus(text: str | None) -> int:
    """GPUs in a gres/tres string: ``gres:gpu:2``, ``gpu:4``, ``gres/gpu=2``, ``gpu:a100:2(IDX:0-1)``."""
    return sum(int(n) for n in _GPUS.findall(text or ""))


def parse_squeue(data: Any) -> list[SlurmJob]:
    """``squeue --json`` -> jobs; a malformed entry is skipped, a malformed document is an error."""
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise SlurmError("squeue --json: no 'jobs' list in its output")
    jobs = []
    for raw in data["jobs"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("job_id"), int):
            continue
        status = raw.get("exit_code")
        code = sig = None
        if isinstance(status, int) and not isinstance(status, bool):
            code, sig = (status >> 8) & 0xFF, (status & 0x7F) or None
        jobs.append(SlurmJob(
            job_id=raw["job_id"], name=str(raw.get("name") or ""), state=str(raw.get("job_state") or ""),
            reason=str(raw.get("state_reason") or ""), gpus=gres_gpus(raw.get("tres_per_node")),
            begin=_time(raw.get("eligible_time")), end=_time(raw.get("end_time")), start=_time(raw.get("start_time")),
            restarts=_count(raw.get("restart_cnt")), exit_code=code, signal=sig,
            nodes=str(raw.get("nodes") or ""), user=str(raw.get("user_name") or ""),
            comment=str(raw.get("comment") or ""), required_nodes=str(raw.get("required_nodes") or ""),
            node_count=max(1, _count(raw.get("node_count")))))
    return jobs


@dataclass(frozen=True)
class SlurmNode:
    name: str
    gpus: int
    usable: bool  # up, and neither drained nor draining: it may take a job
    state: str  # Slurm's words: "idle", "mixed+DRAIN", "down"


_UNUSABLE = ("DOWN", "DRAIN", "FAIL", "INVAL", "NOT_RESPONDING", "MAINT", "REBOOT", "POWER")


def partition_nodes(data: Any, partition: str) -> list[SlurmNode]:
    """The partition's nodes from ``sinfo --json``, each with its GPUs and whether it can take jobs."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise SlurmError("sinfo --json: no 'nodes' list in its output")
    nodes = []
    for node in data["nodes"]:
        if not isinstance(node, dict) or partition not in (node.get("partitions") or []):
            continue
        name = node.get("name")
        if not isinstance(name, str) or not name:
            continue
        raw_flags = node.get("state_flags")
        flags: list[Any] = raw_flags if isinstance(raw_flags, list) else []
        state = "+".join([str(node.get("state") or "")] + [str(f) for f in flags])
        nodes.append(SlurmNode(name, gres_gpus(node.get("gres")),
                               not any(bad in state.upper() for bad in _UNUSABLE), state))
    return nodes


def partition_gpus(data: Any, partition: str) -> int:
    """GPUs on the partition's nodes that can take jobs, from ``sinfo --json``."""
    return sum(n.gpus for n in partition_nodes(data, partition) if n.usable)


def hostlist(text: str) -> list[str]:
    """Slurm's compressed host list: ``n[1-3,7],gpu-a01`` -> n1 n2 n3 n7 gpu-a01 (zero padding kept)."""
    names: list[str] = []
    for part in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,\[]*)", text):
        prefix, ranges, suffix = part.group(1), part.group(2), part.group(3)
        if ranges is None:
            names.append(prefix + suffix)
            continue
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                continue
            for k in range(int(lo), int(hi or lo) + 1):
                names.append(f"{prefix}{k:0{len(lo)}d}{suffix}")
    return names


def foreign_gpus(jobs: Sequence[SlurmJob], start: datetime, slot: timedelta, slots: int,
                 nodes: Sequence[str]) -> dict[str, list[int]]:
    """Per node and planning slot, the GPUs held by running jobs gsched did not submit, until their expected end
    (``tres_per_node``: that many on each of a job's nodes)."""
    held = {name: [0] * slots for name in nodes}
    for job in jobs:
        if job.gsched_id is not None or job.state not in RUNNING or not job.gpus:
            continue
        last = slots if job.end is None else min(slots, math.ceil((job.end - start) / slot))
        for name in hostlist(job.nodes):
            if name in held:
                for k in range(max(0, last)):
                    held[name][k] += job.gpus
    return held


def mode_comment(mode: dict[str, Any]) -> str:
    """The mode as the Prolog reads it from the job's comment: ``gsched:gpus=2,precision=bf16,power_limit_w=250``
    (``nodes=2`` for a job across nodes: its GPUs on each are gpus / nodes)."""
    parts = [f"gpus={int(mode['gpus'])}", f"precision={mode['precision']}"]
    if int(mode.get("nodes") or 1) > 1:
        parts.append(f"nodes={int(mode['nodes'])}")
    if mode.get("power_limit_w"):
        parts.append(f"power_limit_w={int(mode['power_limit_w'])}")
    return "gsched:" + ",".join(parts)


def sbatch_argv(job_id: int, token: str, owner: str, gpus: int, begin: datetime, time_limit: timedelta,
                mode: dict[str, Any], preemptible: bool, grace_s: int, partition: str,
                account: str, script: str, output: str, chdir: str = "/", nodes: Sequence[str] = ()) -> list[str]:
    """``runuser -u OWNER -- sbatch ...``: Slurm authenticates the owner (``--uid`` is not portable). The mode's
    number of nodes, one task on each and gpus / nodes GPUs a node, on ``nodes`` where gsched planned them; none
    of the root daemon's environment goes into the job. No ``--deadline``: Slurm ends a job as DEADLINE when its begin
    plus its time limit (a backstop with a margin) passes it, which ended a 5-hour job due in 6 hours at once; and
    a job that cannot meet its deadline still runs. gsched plans deadlines itself."""
    minutes = max(1, -(-int(time_limit.total_seconds()) // 60))
    spread = max(1, int(mode.get("nodes") or 1))
    argv = ["runuser", "-u", owner, "--", "sbatch", "--parsable", f"--job-name={NAME_PREFIX}{job_id}-{token}",
            f"--partition={partition}", f"--nodes={spread}", f"--gres=gpu:{gpus // spread}",
            f"--begin={_slurm_time(begin)}", f"--time={minutes}", f"--comment={mode_comment(mode)}",
            f"--output={output}", "--open-mode=append", f"--chdir={chdir}", "--export=NONE"]
    if spread > 1:
        argv.append("--ntasks-per-node=1")
    if nodes:
        argv.append(f"--nodelist={','.join(nodes)}")
    if account:
        argv.append(f"--account={account}")
    if preemptible:
        argv += [f"--signal=B:TERM@{grace_s}", "--requeue"]
    else:  # Slurm would requeue it after a node failure (JobRequeue=1) and run it again from the start
        argv.append("--no-requeue")
    return [*argv, script]


def _slurm_time(when: datetime) -> str:
    """Slurm reads local wall time without a zone: give it the daemon host's local time."""
    return when.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


class Slurm:
    """Runs Slurm's commands (each with a timeout and a status check) and parses what they print. ``env`` carries
    SLURM_CONF where the cluster's config is not the default one (the tests' own cluster)."""

    def __init__(self, partition: str, account: str = "", env: dict[str, str] | None = None,
                 timeout_s: float = 30.0) -> None:
        self.partition, self.account, self.env, self.timeout_s = partition, account, env, timeout_s

    def _run(self, argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise SlurmError(f"{' '.join(argv[:6])}: exit {done.returncode}: {done.stderr.strip()[:300]}")
        return done.stdout

    def _json(self, argv: list[str]) -> Any:
        text = self._run(argv)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SlurmError(f"{argv[0]} --json: not JSON ({exc})") from exc

    def gpus(self) -> int:
        return partition_gpus(self._json(["sinfo", "--json"]), self.partition)

    def nodes(self) -> list[SlurmNode]:
        return partition_nodes(self._json(["sinfo", "--json"]), self.partition)

    def jobs(self) -> list[SlurmJob]:
        return parse_squeue(self._json(["squeue", "--states=all", "--json"]))

    def submit(self, argv: list[str]) -> int:
        """Run an ``sbatch_argv`` command line; returns the Slurm job id."""
        out = self._run(argv).strip().split(";")[0]
        if not out.isdigit():
            raise SlurmError(f"sbatch --parsable printed {out[:80]!r}, not a job id")
        return int(out)

    def move(self, job_id: int, begin: datetime) -> None:
        self._run(["scontrol", "update", f"JobId={job_id}", f"StartTime={_slurm_time(begin)}"])

    def pin(self, job_id: int, nodes: Sequence[str]) -> None:
        """A pending job's nodes (its --nodelist), where a replan moved it."""
        self._run(["scontrol", "update", f"JobId={job_id}", f"ReqNodeList={','.join(nodes)}"])

    def reshape(self, job_id: int, nodes: int, gpus_per_node: int, nodelist: Sequence[str], comment: str) -> None:
        """A pending job's devices and nodes (one task a node), as a replan chose them."""
        argv = ["scontrol", "update", f"JobId={job_id}", f"NumNodes={nodes}-{nodes}", f"NumTasks={nodes}",
                f"NumCPUs={nodes}", f"TresPerNode=gres:gpu:{gpus_per_node}", f"Comment={comment}"]
        self._run(argv + ([f"ReqNodeList={','.join(nodelist)}"] if nodelist else []))

    def cancel(self, job_id: int) -> None:
        self._run(["scancel", str(job_id)])

    def requeue(self, job_id: int, begin: datetime | None = None) -> None:
        """Back to the queue; Slurm holds a requeued job about 2 minutes unless its start is set again."""
        self._run(["scontrol", "requeue", str(job_id)])
        if begin is not None:
            self.move(job_id, begin)



# What a Slurm run's runner passes on from the job's environment to the workload.
INHERIT_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_RESTART_COUNT",
               "SLURMD_NODENAME")


class SlurmRuns:
    """A gsched job's files on the shared file system, ``shared_dir/<job id>/``:

    - the run file and batch script, written by the daemon (root) and read-only to the job;
    - ``out/`` (the owner's): the runner's ``result-<token>-<restart>.json`` and the job's log;
    - ``work/`` (the owner's): the workload's checkpoint, read again on whichever node a requeued run lands.

    The runner runs as the owner under Slurm, so what it reports is as trustworthy as the owner: it is parsed with
    bounds (untrusted.parse_result) and read without following links, never trusted."""

    def __init__(self, shared_dir: Path, python: str) -> None:
        self.shared_dir, self.python = shared_dir, python

    def run_dir(self, job_id: int) -> Path:
        return self.shared_dir / str(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.run_dir(job_id) / "out" / "job.log"

    def checkpoint(self, job_id: int) -> Path:
        return self.run_dir(job_id) / "work" / "checkpoint.pt"

    def prepare(self, job_id: int, token: str, runfile: dict[str, Any], owner_uid: int, owner_gid: int,
                nodes: int = 1) -> Path:
        """The run's directories, run file and batch script; returns the script. A job across nodes runs one runner
        a node (srun), each measuring its node and writing a result of its own."""
        if not self.shared_dir.is_dir():
            self.shared_dir.mkdir(parents=True)
            self.shared_dir.chmod(0o755)  # the jobs' owners reach their run directories inside
        run_dir = self.run_dir(job_id)
        run_dir.mkdir(exist_ok=True)
        if run_dir.is_symlink() or run_dir.stat().st_uid != os.geteuid():
            raise SlurmError(f"{run_dir}: not a directory of the daemon's own")
        run_dir.chmod(0o755)
        for sub in ("out", "work"):
            path = run_dir / sub
            path.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                os.lchown(path, owner_uid, owner_gid)
            os.chmod(path, 0o700, follow_symlinks=False)
        runfile = {**runfile, "slurm": True, "claim_path": None, "cgroup": None, "cpu_cores": [],
                   "device_kind": "gpu", "device_uuids": [], "inherit_env": list(INHERIT_ENV),
                   "nodes": nodes, "result_path": str(run_dir / "out" / (
                       f"result-{token}-{{restart}}.json" if nodes == 1 else f"result-{token}-{{restart}}-{{node}}.json"))}
        runfile["env"]["GSCHED_CHECKPOINT"] = str(self.checkpoint(job_id))
        # The run file holds the job's environment (the submitter's, private): the owner's runner reads it on the
        # node, nobody else may.
        path = run_dir / f"run-{token}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(runfile))
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, owner_uid, owner_gid)
        script = run_dir / f"batch-{token}.sh"
        # Slurm keeps the script as submitted, and a replan may reshape the job: its node count is read when it
        # runs. Across nodes, one runner a node; sbatch --export=NONE leaves SLURM_EXPORT_ENV=NONE for srun:
        # --export=ALL passes on the batch's own (minimal) environment, never the daemon's.
        runner = f"{shlex.quote(self.python)} -m scheduler.executor.runner {shlex.quote(str(path))}"
        script.write_text(
            f"#!/bin/sh\n# gsched job {job_id}: gsched's runner measures and runs the workload\n"
            f'n="${{SLURM_JOB_NUM_NODES:-1}}"\n'
            f'[ "$n" -gt 1 ] && exec srun --nodes="$n" --ntasks="$n" --ntasks-per-node=1 --export=ALL {runner}\n'
            f"exec {runner}\n")
        script.chmod(0o755)
        return script

    def read_result(self, job_id: int, token: str, restart: int, nodes: int = 1) -> Any:
        """The raw result of one run (untrusted), None before there is one; of a run across nodes, every node's
        result merged (merge_results), None until all are there."""
        if nodes == 1:
            return self._read(self.run_dir(job_id) / "out" / f"result-{token}-{restart}.json")
        raws = [self._read(self.run_dir(job_id) / "out" / f"result-{token}-{restart}-{k}.json") for k in range(nodes)]
        return None if any(r is None for r in raws) else merge_results(raws)

    @staticmethod
    def _read(path: Path) -> Any:
        """The file is the owner's: it is opened without following a link, and only a regular file of at most 1 MiB
        is read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {"exit_code": None, "error": f"runner result unreadable: {exc.strerror}"}
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {"exit_code": None, "error": "runner result is not a regular file"}
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            return {"exit_code": None, "error": "runner result unreadable"}



def merge_results(raws: list[Any]) -> Any:
    """One run's result from its nodes' (each untrusted, validated later as one): the first node's (rank 0 reports
    the workload's metrics), with the energy summed over every node, the longest duration, the first failure's exit
    code and error, and terminated if any node was. A node's malformed value is kept as it is, for parse_result to
    reject by name."""
    if not all(isinstance(r, dict) for r in raws):
        return next(r for r in raws if not isinstance(r, dict))
    merged = dict(raws[0])
    energies = [r.get("energy_j") for r in raws]
    numbers = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in energies)
    merged["energy_j"] = sum(energies) if numbers else next(
        e for e in energies if not isinstance(e, (int, float)) or isinstance(e, bool))
    durations = [r.get("duration_s") for r in raws]
    if all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in durations):
        merged["duration_s"] = max(durations)
    failed = next((r for r in raws if r.get("exit_code") not in (0, None)), None)
    if failed is not None:
        merged.update({k: failed.get(k) for k in ("exit_code", "signal", "error") if k in failed})
    merged["terminated"] = any(r.get("terminated") is True for r in raws) or merged.get("terminated")
    merged["node_energy_j"] = energies
    return merged


def node_energy_note(values: Any, names: Sequence[str], run: int) -> str:
    """What each node of a run across nodes measured, for the job's history (values untrusted: shown bounded)."""
    values = values if isinstance(values, list) else []
    parts = []
    for k, value in enumerate(values[:64]):
        name = names[k] if k < len(names) else f"node {k}"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e13
        parts.append(f"{name} {value / 1000:.4g} kJ" if ok else f"{name} invalid")
    return f"run {run} measured on {len(values)} nodes: " + ", ".join(parts)
