"""gsched on a real 2-node Slurm (tests/slurm_cluster.py with nodes=2: each slurmd in a network namespace of its
own, 4 fake GPUs a node): the plan puts every job on one node, so Slurm starts each at its planned time and never
holds one for Resources; a node that goes down fails its rigid job with Slurm's reason and requeues its
preemptible one, which resumes from its checkpoint on the other node; the node's GPUs leave the plan at once and
come back when it returns. Skips where a real Slurm or network namespaces cannot be had."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import write_job
from scheduler.timeutil import parse_rfc3339
from test_executor_contract import CHEAP, Backend, ended, events, job_text, steps_add_up

GPUS_PER_NODE = 4


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    from slurm_cluster import SlurmCluster, why_not_available

    why = why_not_available() or (None if shutil.which("ip") and shutil.which("nsenter")
                                  else "no ip or nsenter for the nodes' network namespaces")
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="gsched-slurm2-"))
    base.chmod(0o755)
    cluster = SlurmCluster(base, gpus=GPUS_PER_NODE, cpus=8, nodes=2).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def backend(two_nodes: Any) -> Iterator[Backend]:
    base = Path(tempfile.mkdtemp(prefix="gsched-nodes-", dir=two_nodes.base))
    base.chmod(0o755)
    b = Backend("slurm", 2 * GPUS_PER_NODE, base, {"SLURM_CONF": two_nodes.env["SLURM_CONF"]}, two_nodes)
    try:
        yield b
    finally:
        b.clean()
        for node in two_nodes.node_names:  # a test that failed midway may have left one down
            two_nodes.run("scontrol", "update", f"nodename={node}", "state=resume")


class Holds:
    """Polls squeue while a test runs: every gsched job Slurm holds for Resources, with when it was seen."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.seen, self._stop = backend, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.backend._slurm("squeue", "--json")
            if out.returncode == 0:
                self.seen += [(j["job_id"], j["name"], j["state_reason"], time.time())
                              for j in json.loads(out.stdout)["jobs"]
                              if j["name"].startswith("gsched-") and j["state_reason"] == "Resources"]
            self._stop.wait(0.5)

    def __enter__(self) -> "Holds":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_mix_of_one_to_four_gpu_jobs_starts_each_at_its_planned_time_on_a_node(backend: Backend) -> None:
    """16 GPUs of rigid jobs (3, 3, 4, 2, 1, 1, 2) on two 4-GPU nodes: on one pool, 3 + 3 + 2 fit 8 GPUs and one
    3-GPU job would wait in Slurm for Resources; on nodes, every job starts when planned, where planned."""
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        with Holds(backend) as holds:
            ids = [d.submit(write_job(work, f"g{k}-{g}", job_text(
                work, f'command = ["sleep", "12"]\nduration = "1m"\ngpus = {g}\nmax_delay = "2h"\n')))
                for k, g in enumerate((3, 3, 4, 2, 1, 1, 2))]
            jobs = [ended(d, jid, 300) for jid in ids]
        for job in jobs:
            assert job["state"] == "COMPLETED", (job, d.stderr_path.read_text()[-3000:])
            started, planned = parse_rfc3339(job["started_at"]), parse_rfc3339(job["planned_start"])
            assert abs((started - planned).total_seconds()) <= 5, (job["id"], started, planned, job["events"])
            assert job["slurm_nodes"] in backend.cluster.node_names, job
        assert not holds.seen, holds.seen
        # both nodes were used, and no node ever had more than its 4 GPUs planned at once
        assert {job["slurm_nodes"] for job in jobs} == set(backend.cluster.node_names)
        for node in backend.cluster.node_names:
            spans = [(parse_rfc3339(j["started_at"]), parse_rfc3339(j["finished_at"]), j["gpus"]) for j in jobs
                     if j["slurm_nodes"] == node]
            for at, _end, _g in spans:
                assert sum(g for s, e, g in spans if s <= at < e) <= GPUS_PER_NODE, (node, spans)
    finally:
        d.stop()


def test_a_node_that_goes_down_requeues_its_preemptible_job_onto_the_other_and_fails_its_rigid_one(
        backend: Backend) -> None:
    cluster = backend.cluster
    work = backend.workdir("w")
    d = backend.daemon(CHEAP).start()
    try:
        preemptible = d.submit(write_job(work, "elastic", job_text(
            work, 'workload = "jobs.linear"\nsteps = 20000\nargs = { seed = 4 }\npreemptible = true\ngpus = 1\n'
                  'duration = "3m"\nmax_delay = "2h"\n')))
        rigid = d.submit(write_job(work, "rigid", job_text(
            work, 'command = ["sleep", "300"]\nduration = "6m"\ngpus = 2\nmax_delay = "2h"\n')))
        first = {jid: d.wait_state(jid, {"RUNNING"}, timeout_s=60) for jid in (preemptible, rigid)}
        node = first[preemptible]["slurm_nodes"]
        assert first[rigid]["slurm_nodes"] == node, first  # best fit: the second job fills the first one's node
        other = next(n for n in cluster.node_names if n != node)
        d.wait_trained(preemptible)
        down = cluster.run("scontrol", "update", f"nodename={node}", "state=down", "reason=gsched-test")
        assert down.returncode == 0, down.stderr

        failed = ended(d, rigid, 90)
        assert failed["state"] == "FAILED" and "NODE_FAIL" in failed["reason"], failed
        job = d.until(preemptible, lambda j: j["state"] == "RUNNING" and len(j["runs"]) >= 1, 120)
        assert job["slurm_nodes"] == other, job
        # the plan holds the other node's GPU for the rest of its work, not for an instant
        assert parse_rfc3339(job["planned_end"]) >= parse_rfc3339(job["planned_start"]) + timedelta(seconds=1), job
        assert events(job, "PREEMPTED"), job["events"]
        job = ended(d, preemptible, 400)
        assert job["state"] == "COMPLETED" and len(job["runs"]) == 2, (job, d.stderr_path.read_text()[-3000:])
        steps_add_up(job, 20000)
        assert job["runs"][1]["metrics"]["resumed_from"] > 0, job["runs"]

        # While the node is down no plan uses it: a 4-GPU job waits for a node with 4 GPUs.
        assert cluster.run("scontrol", "update", f"nodename={other}", "state=drain", "reason=gsched-test"
                           ).returncode == 0
        wide = d.submit(write_job(work, "wide", job_text(
            work, 'command = ["sleep", "3"]\nduration = "1m"\ngpus = 4\nmax_delay = "2h"\n')))
        waiting = d.until(wide, lambda j: "no node has more than 0" in (j["reason"] or ""), 30)
        assert waiting["state"] == "PENDING", waiting
        assert cluster.run("scontrol", "update", f"nodename={node}", "state=resume").returncode == 0
        back = ended(d, wide, 120)
        assert back["state"] == "COMPLETED" and back["slurm_nodes"] == node, back
    finally:
        d.stop()
        for name in cluster.node_names:
            cluster.run("scontrol", "update", f"nodename={name}", "state=resume")


def test_a_ddp_job_across_two_nodes_measures_both_and_resumes_exactly_on_one(backend: Backend) -> None:
    """Another user's job holds 3 GPUs on each node: a 2-GPU job that may span nodes runs now as 1 GPU on each of
    the two (DDP on gloo across the namespaces), its energy measured on both and summed. Requeued once the other
    job is gone, it resumes from its checkpoint on one node with 2 GPUs: the same world size, so the same batches,
    and it ends at the loss of an uninterrupted 2-process twin, bit for bit."""
    cluster = backend.cluster
    work = backend.workdir("w")
    other = cluster.run("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gres=gpu:3", "--time=600",
                        "--job-name=someone-else", "--output=/dev/null", "--wrap", "sleep 900")
    assert other.returncode == 0, other.stderr
    other_id = other.stdout.strip()
    until = time.monotonic() + 30
    while "RUNNING" not in cluster.run("squeue", "-h", "-j", other_id, "-o", "%T").stdout:
        assert time.monotonic() < until
        time.sleep(0.5)
    steps, seed = 12000, 6
    d = backend.daemon(CHEAP).start()
    try:
        jid = d.submit(write_job(work, "wide", job_text(
            work, f'workload = "jobs.linear"\nsteps = {steps}\nargs = {{ seed = {seed} }}\ngpus = 2\n'
                  'nodes = { min = 1, max = 2 }\npreemptible = true\nduration = "3m"\nmax_delay = "2h"\n'
                  'env = { OMP_NUM_THREADS = "1" }\n')))
        job = d.wait_state(jid, {"RUNNING"}, timeout_s=60)
        assert job["slurm_nodes"] == "n[1-2]" and job["gpus"] == 2, job
        until = time.monotonic() + 90
        while "step " not in d.cli("logs", str(jid)).stdout:  # both ranks met and train
            assert time.monotonic() < until, d.cli("logs", str(jid)).stdout[-2000:]
            time.sleep(0.5)
        assert cluster.run("scancel", other_id).returncode == 0
        assert d.cli("requeue", str(jid)).returncode == 0
        job = ended(d, jid, 400)
        assert job["state"] == "COMPLETED" and len(job["runs"]) == 2, (job, d.stderr_path.read_text()[-3000:])
        first, second = job["runs"]
        assert first["mode"]["nodes"] == 2 and "nodes" not in second["mode"] and second["gpus"] == 2, job["runs"]
        assert job["slurm_nodes"] in cluster.node_names, job
        steps_add_up(job, steps)
        assert second["metrics"]["resumed_from"] == first["steps"] > 0, job["runs"]
        measured = [e["reason"] for e in job["events"] if e["reason"].startswith("run 0 measured on 2 nodes: ")]
        assert measured and "invalid" not in measured[0], job["events"]
        per_node_kj = [float(part.split()[1]) for part in measured[0].split(": ", 1)[1].split(", ")]
        assert len(per_node_kj) == 2 and all(e > 0 for e in per_node_kj), measured
        assert sum(per_node_kj) == pytest.approx(first["energy_j"] / 1000, rel=1e-3), (measured, first)
        assert any("now asks for 2 GPU(s) on 1 node(s)" in e["reason"] for e in job["events"]), job["events"]
    finally:
        d.stop()
        cluster.run("scancel", other_id)
    from test_workloads import torchrun

    twin = torchrun(2, "-m", "jobs.linear", "--steps", str(steps), "--seed", str(seed))
    assert job["metrics"]["loss"] == twin["loss"]  # bit for bit, across two nodes and then one
