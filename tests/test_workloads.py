"""The workloads with the runner's optimisations, with real torch on CPU: precision, pruning, DDP over two CPU
devices, and checkpointed preemption that resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TEST_CONFIG, DaemonProc, make_home, write_job

SMALL_MLP = ["-m", "jobs.mlp", "--hidden", "64", "--batch-size", "64"]
SMALL_GPT = ["-m", "jobs.gpt", "--layers", "2", "--embd", "64", "--block", "32", "--batch-size", "16"]


def metrics(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("gsched-metrics ")][-1][15:])


# gsched runs a one-device job on its CPU devices with one thread (launch.job_env; on GPU nodes, as Slurm's test
# cluster has, torch's default); a straight run to compare it with bit for bit must use the same: another thread
# count sums in another order (the last digits of a loss differ on a 2-core machine).
ONE_DEVICE_THREADS = {"OMP_NUM_THREADS": "1"}


def train(*args: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    return metrics(result.stdout)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains(precision: str) -> None:
    m = train(*SMALL_MLP, "--steps", "30", "--precision", precision)
    assert m["precision"] == precision and m["steps"] == 30 and 0 < m["loss"] < 10


def test_precision_comes_from_gsched_environment() -> None:
    assert train(*SMALL_MLP, "--steps", "5", env={"GSCHED_PRECISION": "bf16"})["precision"] == "bf16"


def test_pruning_is_made_permanent(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.pt"
    m = train(*SMALL_MLP, "--steps", "20", "--pruning", "0.5", "--checkpoint", str(checkpoint))
    assert m["sparsity"] == pytest.approx(0.5, abs=0.01)
    state = torch.load(checkpoint, weights_only=False)["model"]
    assert not any(key.endswith(("weight_orig", "weight_mask")) for key in state)  # plain weights again
    zeros = sum(int((v == 0).sum()) for k, v in state.items() if k.endswith("weight"))
    assert zeros / sum(v.numel() for k, v in state.items() if k.endswith("weight")) == pytest.approx(0.5, abs=0.01)


def torchrun(n: int, *args: str) -> dict:
    return train("-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args,
                 env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})


def test_ddp_across_two_cpu_devices() -> None:
    m = torchrun(2, "-m", "jobs.linear", "--steps", "100")
    assert m["world_size"] == 2 and m["steps"] == 100 and 0 < m["loss"] < 5


def test_char_gpt_learns_the_play() -> None:
    untrained = train(*SMALL_GPT, "--steps", "1")["loss"]
    assert untrained > 3.5  # about ln(63): a uniform guess over the play's characters
    assert train(*SMALL_GPT, "--steps", "150")["loss"] < untrained - 1.2
    m = torchrun(2, *SMALL_GPT, "--steps", "20", "--precision", "bf16")
    assert m["world_size"] == 2 and m["precision"] == "bf16" and m["loss"] < untrained


def interrupted(args: list[str], checkpoint: Path, at_step: int) -> dict:
    """Run, SIGTERM it once it has printed step ``at_step``, and return what it reported."""
    proc = subprocess.Popen([sys.executable, *args, "--checkpoint", str(checkpoint), "--report-every", "1"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {at_step}/"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    return metrics("".join(lines))


@pytest.mark.parametrize("workload", [SMALL_MLP, SMALL_GPT], ids=["mlp", "gpt"])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path: Path, workload: list[str]) -> None:
    args = [*workload, "--steps", "80", "--seed", "3"]
    straight = train(*args)
    stopped = interrupted(args, tmp_path / "ck.pt", 30)
    assert stopped["preempted"] and 30 <= stopped["steps"] < 80
    resumed = train(*args, "--checkpoint", str(tmp_path / "ck.pt"))
    assert resumed["resumed_from"] == stopped["steps"] and resumed["steps"] == 80
    assert resumed["loss"] == straight["loss"]  # bit for bit


def test_a_checkpoint_resumes_on_a_different_device_count(tmp_path: Path) -> None:
    args = ["-m", "jobs.linear", "--steps", "60"]
    stopped = interrupted(args, tmp_path / "ck.pt", 20)
    resumed = torchrun(2, *args, "--checkpoint", str(tmp_path / "ck.pt"))
    assert resumed["resumed_from"] == stopped["steps"] and resumed["world_size"] == 2 and resumed["steps"] == 60


def test_gsched_requeue_checkpoints_and_the_job_resumes_exactly(daemon: DaemonProc, tmp_path: Path) -> None:
    # 3,000 steps (about 7 s here): the requeue must land while it still trains, on a busy machine too
    body = ('workload = "jobs.mlp"\nsteps = 3000\nargs = { seed = 5, hidden = 256 }\npreemptible = true\n'
            'max_delay = "1h"\n')
    requeued = daemon.submit(write_job(tmp_path, "pre", body), "--now")
    daemon.wait_state(requeued, {"RUNNING"})
    daemon.wait_output(requeued, r"step 300/", 60)  # let it train a while, past torch's start-up
    assert daemon.cli("requeue", str(requeued)).returncode == 0
    job = daemon.wait_state(requeued, {"COMPLETED", "FAILED"}, timeout_s=120)
    states = [e["state"] for e in job["events"]]
    assert states[states.index("RUNNING"):] == ["RUNNING", "PREEMPTED", "PLANNED", "RUNNING", "COMPLETED"]
    assert any(e["reason"].startswith("requeued: checkpointed at step") for e in job["events"])
    assert len(job["runs"]) == 2 and job["metrics"]["resumed_from"] >= 300
    straight = daemon.submit(write_job(tmp_path, "straight", body), "--now")
    assert daemon.cli("wait", str(straight), timeout=180).returncode == 0
    assert daemon.show(straight)["metrics"]["loss"] == job["metrics"]["loss"]  # bit for bit
    rigid = daemon.submit(write_job(tmp_path, "rigid", 'command = ["sleep", "30"]\nduration = "30s"\n'), "--now")
    daemon.wait_state(rigid, {"RUNNING"})
    refused = daemon.cli("requeue", str(rigid))
    assert refused.returncode == 6 and "not preemptible" in refused.stderr
    daemon.cli("cancel", str(rigid))


def test_profile_measures_modes_and_the_planner_uses_them(daemon: DaemonProc, tmp_path: Path) -> None:
    job = write_job(tmp_path, "lin", 'workload = "jobs.linear"\nsteps = 4000\nargs = { seed = 1 }\n'
                                     'gpus = { min = 1, max = 2 }\nmax_delay = "6h"\n'
                                     '[optimisations]\nprecision = ["fp32", "bf16"]\n')
    result = daemon.cli("profile", str(job), "--steps", "1500", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    log = daemon.stderr_path.read_text()[-3000:]
    assert sorted((r["gpus"], r["precision"]) for r in rows) == [(1, "bf16"), (1, "fp32"), (2, "bf16"), (2, "fp32")]
    assert all(r["state"] == "COMPLETED" and r["steps_per_s"] > 0 and r["j_per_step"] > 0 for r in rows), (rows, log)
    planned = daemon.submit(job)
    mode = daemon.wait_state(planned, {"PLANNED", "RUNNING", "COMPLETED"})["mode"]
    assert mode["source"] == "profile", (mode, rows, daemon.stderr_path.read_text()[-3000:])
    refused = daemon.cli("profile", str(write_job(tmp_path, "cmd", 'command = ["true"]\nduration = "1m"\n')))
    assert refused.returncode == 2 and "profile measures workloads" in refused.stderr


def test_two_four_pruning_trains_the_pattern_and_says_where_its_kernels_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.pt"
    m = train(*SMALL_GPT, "--steps", "20", "--pruning", "2:4", "--checkpoint", str(checkpoint))
    assert m["pruning"] == "2:4" and m["sparsity"] == 0.5
    assert m["semi_structured"] == {"supported": False,
                                    "why": "2:4 kernels need an NVIDIA GPU of compute capability 8.0 or newer"}
    state = torch.load(checkpoint, weights_only=False)["model"]
    groups = state["blocks.0.mlp.0.weight"].reshape(-1, 4)
    assert ((groups == 0).sum(dim=1) == 2).all()  # exactly two of every four input weights are zero


def test_the_daemon_runs_the_pruning_a_job_allows(daemon: DaemonProc, tmp_path: Path) -> None:
    job = daemon.submit(write_job(tmp_path, "pruned", 'workload = "jobs.linear"\nsteps = 50\n'
                                                      '[optimisations]\npruning = ["2:4"]\n'), "--now")
    assert daemon.cli("wait", str(job), timeout=120).returncode == 0
    shown = daemon.show(job)
    assert shown["mode"]["pruning"] == "2:4" and shown["metrics"]["sparsity"] == 0.5


def test_an_idle_daemon_calibrates_the_modes_nobody_measured(tmp_path: Path) -> None:
    config = TEST_CONFIG.replace("calibrate_when_idle = false",
                                 "calibrate_when_idle = true\ncalibrate_after_idle_s = 0\ncalibration_s = 1.0")
    daemon = DaemonProc(make_home(), config).start()
    try:
        job = daemon.submit(write_job(tmp_path, "lin", 'workload = "jobs.linear"\nsteps = 3000\ngpus = 1\n'
                                                       '[optimisations]\nprecision = ["fp32", "bf16"]\n'), "--now")
        assert daemon.cli("wait", str(job), timeout=120).returncode == 0
        assert daemon.show(job)["mode"]["precision"] == "fp32"  # --now runs the first precision listed
        deadline = time.monotonic() + 120
        while not (calibrations := [j for j in daemon.status() if j["name"].startswith("calibrate-")]) or any(
                j["state"] not in ("COMPLETED", "FAILED") for j in calibrations):
            assert time.monotonic() < deadline, daemon.stderr_path.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # a few idle ticks more: nothing left to measure, so nothing more is submitted
        calibrations = [j for j in daemon.status() if j["name"].startswith("calibrate-")]
        assert [(j["state"], j["owner"]) for j in calibrations] == [("COMPLETED", daemon.show(job)["owner"])]
        shown = daemon.show(calibrations[0]["id"])
        assert shown["mode"]["precision"] == "bf16" and shown["metrics"]["steps"] >= 1500
        assert any("devices idle and no profile for this mode" in e["reason"] for e in shown["events"])
        again = daemon.submit(write_job(tmp_path, "lin2", 'workload = "jobs.linear"\nsteps = 3000\ngpus = 1\n'
                                                          'max_delay = "6h"\n[optimisations]\n'
                                                          'precision = ["fp32", "bf16"]\n'))
        planned = daemon.wait_state(again, {"PLANNED", "RUNNING", "COMPLETED"})
        assert planned["mode"]["source"] == "profile"  # both modes are measured now
    finally:
        daemon.stop()
        daemon.kill_runners()
