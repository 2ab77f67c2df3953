"""Slurm's JSON as a real Slurm 22.05 printed it (tests/fixtures/slurm, recorded from tests/slurm_cluster.py: a
foreign running job on 1 GPU, gsched job 7 pending with a begin time on 2, a failed job that exited 3)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scheduler.executor.slurmctl import (SlurmError, foreign_gpus, gres_gpus, hostlist, mode_comment, parse_squeue,
                                         partition_gpus, partition_nodes, sbatch_argv)

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_squeue_json_maps_to_gsched_jobs_states_and_exit_codes() -> None:
    jobs = {j.job_id: j for j in parse_squeue(load("squeue_states_all.json"))}
    foreign, ours, failed = jobs[1], jobs[2], jobs[3]
    assert foreign.gsched_id is None and foreign.gsched_state == "RUNNING" and foreign.gpus == 1
    assert ours.gsched_id == (7, "abc123") and ours.gsched_state == "PLANNED" and ours.reason == "BeginTime"
    assert ours.gpus == 2 and ours.begin is not None and ours.comment.startswith("gpus=2")
    assert failed.gsched_state == "FAILED" and failed.exit_code == 3 and failed.reason == "NonZeroExitCode"


def test_capacity_is_the_partitions_gpus_less_what_others_hold() -> None:
    assert partition_gpus(load("sinfo.json"), "gpu") == 4
    assert partition_gpus(load("sinfo.json"), "cpu") == 0
    jobs = parse_squeue(load("squeue_states_all.json"))
    foreign = next(j for j in jobs if j.job_id == 1)
    assert foreign.end is not None
    start = foreign.end - timedelta(minutes=40)
    held = foreign_gpus(jobs, start, timedelta(minutes=15), 8, ["localhost", "other"])
    # until its expected end, 40 min on: 3 slots, on its node; gsched's own not counted
    assert held == {"localhost": [1, 1, 1, 0, 0, 0, 0, 0], "other": [0] * 8}


def test_nodes_their_states_and_host_lists() -> None:
    data = load("sinfo.json")
    (node,) = partition_nodes(data, "gpu")
    assert node.name == "localhost" and node.gpus == 4 and node.usable
    raw = data["nodes"][0]
    two = {"nodes": [raw, {**raw, "name": "n2", "state": "idle", "state_flags": ["DRAIN"]},
                     {**raw, "name": "n3", "state": "down", "state_flags": []}, {**raw, "name": None}]}
    assert [(n.name, n.usable) for n in partition_nodes(two, "gpu")] == [("localhost", True), ("n2", False),
                                                                          ("n3", False)]
    assert partition_gpus(two, "gpu") == 4
    assert hostlist("n[1-3,7],gpu-a01") == ["n1", "n2", "n3", "n7", "gpu-a01"]
    assert hostlist("node[08-10]") == ["node08", "node09", "node10"] and hostlist("") == []


@pytest.mark.parametrize(("text", "gpus"), [("gres:gpu:2", 2), ("gpu:4", 4), ("gres/gpu=2", 2),
                                            ("gpu:a100:2(IDX:0-1)", 2), ("", 0), (None, 0)])
def test_gres_strings(text: str | None, gpus: int) -> None:
    assert gres_gpus(text) == gpus


def test_malformed_documents_are_errors_and_odd_entries_are_skipped() -> None:
    with pytest.raises(SlurmError, match="squeue"):
        parse_squeue({"meta": {}})
    assert parse_squeue({"jobs": [{"job_id": "x"}, 3, {"job_id": 5, "job_state": "RUNNING"}]})[0].job_id == 5


def test_sbatch_runs_as_the_owner_with_the_plan_in_its_flags() -> None:
    begin = datetime(2026, 6, 2, 11, tzinfo=timezone.utc)
    mode = {"gpus": 2, "precision": "bf16", "power_limit_w": 250}
    argv = sbatch_argv(7, "abc123", "ann", 2, begin, timedelta(minutes=90, seconds=1), mode,
                       True, 90, "gpu", "", "/shared/runs/7/batch.sh", "/shared/runs/7/slurm.out")
    assert argv[:5] == ["runuser", "-u", "ann", "--", "sbatch"] and argv[-1] == "/shared/runs/7/batch.sh"
    assert "--job-name=gsched-7-abc123" in argv and "--gres=gpu:2" in argv and "--time=91" in argv
    assert "--comment=gsched:gpus=2,precision=bf16,power_limit_w=250" in argv
    assert "--signal=B:TERM@90" in argv and "--requeue" in argv and not any(a.startswith("--account") for a in argv)
    assert mode_comment({"gpus": 1, "precision": "fp32", "power_limit_w": None}) == "gsched:gpus=1,precision=fp32"
    assert not any(a.startswith("--nodelist") for a in argv)
    assert not any(a.startswith("--deadline") for a in argv)  # Slurm would end a job whose limit passes it
    pinned = sbatch_argv(7, "abc123", "ann", 2, begin, timedelta(minutes=90), mode, False, 90, "gpu", "",
                         "/shared/runs/7/batch.sh", "/shared/runs/7/slurm.out", nodes=["n2"])
    assert "--nodelist=n2" in pinned and "--requeue" not in pinned and "--no-requeue" in pinned
    assert "--nodes=1" in pinned and not any(a.startswith("--ntasks-per-node") for a in pinned)
    # across nodes: one task a node, its GPUs split over them, both nodes pinned, the split in its comment
    wide = sbatch_argv(7, "abc123", "ann", 4, begin, timedelta(minutes=90), {**mode, "gpus": 4, "nodes": 2},
                       True, 90, "gpu", "", "/shared/runs/7/batch.sh", "/shared/runs/7/slurm.out", nodes=["n1", "n2"])
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gres=gpu:2", "--nodelist=n1,n2",
                 "--comment=gsched:gpus=4,precision=bf16,nodes=2,power_limit_w=250"):
        assert flag in wide, (flag, wide)


def test_a_run_across_nodes_is_one_result_with_every_nodes_energy(tmp_path: Path) -> None:
    """Each node's runner writes its own result; the run's result is there once all are, with the energy summed,
    rank 0's metrics, and a failure on any node. A node's bad value is kept for the validator to reject by name."""
    from scheduler.executor.slurmctl import SlurmRuns
    from scheduler.executor.untrusted import parse_result

    runs = SlurmRuns(tmp_path, "python3")
    out = tmp_path / "5" / "out"
    out.mkdir(parents=True)
    node0 = {"exit_code": 0, "energy_j": 100.0, "energy_source": "estimate", "duration_s": 10.0,
             "metrics": {"steps": 50, "loss": 0.5}, "terminated": False}
    (out / "result-tok-0-0.json").write_text(json.dumps(node0))
    assert runs.read_result(5, "tok", 0, 2) is None  # node 1 has not written yet
    (out / "result-tok-0-1.json").write_text(json.dumps({**node0, "energy_j": 40.0, "duration_s": 11.0,
                                                          "metrics": {}}))
    merged = runs.read_result(5, "tok", 0, 2)
    result = parse_result(merged)
    assert result.energy_j == 140.0 and result.duration_s == 11.0 and result.metrics.steps == 50, result
    assert merged["node_energy_j"] == [100.0, 40.0]  # each node's, for the job's history
    (out / "result-tok-1-0.json").write_text(json.dumps(node0))
    (out / "result-tok-1-1.json").write_text(json.dumps({**node0, "exit_code": 3, "error": "boom", "energy_j": "x"}))
    bad = runs.read_result(5, "tok", 1, 2)
    assert bad["exit_code"] == 3 and bad["error"] == "boom" and bad["energy_j"] == "x"
    assert parse_result(bad).energy_j == 0.0 and any(i.startswith("result.energy_j") for i in parse_result(bad).ignored)


def test_prolog_caps_the_jobs_gpus_from_its_comment_and_the_epilog_restores_them(tmp_path: Path) -> None:
    from fake_nvml import FakeGpu, FakeNvml

    from scheduler.executor.slurm_prolog import cap_from_comment, epilog, prolog

    gpus = [FakeGpu(f"GPU-{i}") for i in range(4)]
    nvml = FakeNvml(gpus)
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "1,3",
           "SLURM_JOB_COMMENT": "gsched:gpus=2,precision=bf16,power_limit_w=250"}
    assert "250 W" in prolog(env, nvml, tmp_path)
    assert [g.limit_mw for g in gpus] == [700_000, 250_000, 700_000, 250_000]
    assert "restored 2" in epilog(env, nvml, tmp_path)
    assert [g.limit_mw for g in gpus] == [700_000] * 4 and not list(tmp_path.iterdir())
    # not gsched's, no cap, or a cap below the GPU's range (clamped to its minimum)
    assert prolog({**env, "SLURM_JOB_COMMENT": "someone's job"}, nvml, tmp_path).startswith("no gsched")
    assert cap_from_comment("gsched:gpus=1,precision=fp32") is None
    prolog({**env, "SLURM_JOB_COMMENT": "gsched:gpus=2,power_limit_w=50"}, nvml, tmp_path)
    assert gpus[1].limit_mw == 200_000
    assert epilog({"SLURM_JOB_ID": "7"}, nvml, tmp_path) == "nothing to restore"


def test_a_slurm_runs_result_is_read_without_following_links_and_bounded(tmp_path: Path) -> None:
    """The owner's runner writes out/: a planted link, a FIFO or a huge file never reaches the daemon as data."""
    import os

    from scheduler.executor.slurmctl import SlurmRuns

    runs = SlurmRuns(tmp_path / "shared", "python3")
    out = runs.run_dir(5) / "out"
    out.mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text('{"exit_code": 0, "energy_j": 1}')
    (out / "result-tok-0.json").symlink_to(secret)
    assert runs.read_result(5, "tok", 0)["error"].startswith("runner result unreadable")
    os.mkfifo(out / "result-tok-1.json")
    assert runs.read_result(5, "tok", 1) == {"exit_code": None, "error": "runner result is not a regular file"}
    (out / "result-tok-2.json").write_text('{"exit_code": 0, "pad": "' + "x" * (2 << 20) + '"}')
    assert runs.read_result(5, "tok", 2) == {"exit_code": None, "error": "runner result unreadable"}
    (out / "result-tok-3.json").write_text('{"exit_code": 0}')
    assert runs.read_result(5, "tok", 3) == {"exit_code": 0} and runs.read_result(5, "tok", 4) is None


def test_a_slurm_run_s_threads_are_the_cpus_slurm_gave_it_shared_by_its_processes() -> None:
    """Without task binding torch starts a thread per core of the node in every process: on a shared node that
    oversubscribes (a 1-GPU job with 2 threads on a busy 2-core host took 3x as long, for twice the CPU)."""
    from scheduler.executor.runner import from_slurm

    def threads(environ: dict[str, str], processes: int | None, env: dict[str, str]) -> str | None:
        spec = {"result_path": "/s/r-{restart}.json", "token": "t", "env": dict(env), "inherit_env": [],
                **({"processes": processes} if processes is not None else {})}
        return from_slurm(spec, environ)["env"].get("OMP_NUM_THREADS")

    assert threads({"SLURM_CPUS_ON_NODE": "8"}, 2, {}) == "4"  # a 2-GPU DDP workload: 4 threads a process
    assert threads({"SLURM_CPUS_ON_NODE": "8"}, 1, {"OMP_NUM_THREADS": "64"}) == "8"  # not the shell's 64
    assert threads({"SLURM_CPUS_ON_NODE": "1"}, 4, {}) == "1"  # never none
    assert threads({"SLURM_CPUS_ON_NODE": "6"}, None, {}) == "6"  # a run file from before the split: one process
    assert threads({}, 1, {"OMP_NUM_THREADS": "3"}) == "3"  # no allocation to go by: the job's own stands
    assert threads({"SLURM_CPUS_ON_NODE": "x"}, 1, {}) is None


def test_each_node_s_runner_joins_the_rendezvous_at_the_first_node_and_writes_its_own_result() -> None:
    from scheduler.executor.procs import TOKEN_VAR
    from scheduler.executor.runner import from_slurm

    spec = {"result_path": "/s/5/out/result-tok-{restart}-{node}.json", "nodes": 2, "token": "tok",
            "env": {TOKEN_VAR: "tok"}, "inherit_env": []}
    environ = {"SLURM_RESTART_COUNT": "1", "SLURM_NODEID": "1", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
               "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"}
    out = from_slurm(json.loads(json.dumps(spec)), environ)
    assert out["result_path"] == "/s/5/out/result-tok-1-1.json"
    env = out["env"]
    assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_MASTER_ADDR"]) == ("2", "1", "127.0.0.1")
    assert env["PET_MASTER_PORT"] == "20042" and env["GSCHED_NUM_DEVICES"] == "2" and env["GSCHED_NODES"] == "2"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"  # the interface the first node is reached by
    assert out["token"] == env[TOKEN_VAR] == "tok-1"  # its clean-up stays on its node
    chosen = from_slurm({**json.loads(json.dumps(spec)), "env": {"GLOO_SOCKET_IFNAME": "ib0"}}, environ)
    assert chosen["env"]["GLOO_SOCKET_IFNAME"] == "ib0"  # the job's own choice stands
    one = from_slurm({"result_path": "/s/r-{restart}.json", "token": "t", "env": {}, "inherit_env": []},
                     {"SLURM_RESTART_COUNT": "0", "CUDA_VISIBLE_DEVICES": "0"})
    assert one["result_path"] == "/s/r-0.json" and "PET_NNODES" not in one["env"] and one["token"] == "t"
