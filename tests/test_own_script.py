"""A user's own training script through scheduler.train (jobs/examples/own-script/): standalone, under a real
daemon in bf16 on 2 devices (DDP), requeued and resumed to the exact loss of an uninterrupted twin, calibrated by
`gsched profile` so that its steps alone plan it, and misused with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, DaemonProc, make_home, write_job
from test_workloads import metrics

EXAMPLE = ROOT / "jobs" / "examples" / "own-script"


def standalone(*args: str, cwd: Path = EXAMPLE, threads: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    if threads is not None:  # as on one CPU device under gsched: the same reductions, so the same floats
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def job_text(steps: int, extra: str = "", duration: str = 'duration = "2m"\n') -> str:
    """The example's job file, run with this interpreter (the tests' python3 may lack torch)."""
    return (f'command = {json.dumps([sys.executable, "train.py", "--seed", "1"])}\nsteps = {steps}\n{duration}'
            f'workdir = "{EXAMPLE}"\n{extra}')


def test_the_script_runs_standalone_and_importing_the_api_pulls_in_nothing_of_the_daemon() -> None:
    done = standalone("train.py", "--steps", "40")
    assert done.returncode == 0, done.stderr
    m = metrics(done.stdout)
    assert m["steps"] == 40 and m["precision"] == "fp32" and m["world_size"] == 1 and 0 < m["loss"] < 5
    probe = standalone("-c", "import sys, scheduler.train; heavy = [m for m in ('torch', 'sqlmodel', 'typer', "
                             "'httpx', 'scheduler.daemon', 'scheduler.store', 'scheduler.cli') if m in sys.modules];"
                             " print(heavy)")
    assert probe.stdout.strip() == "[]", probe


def test_a_script_that_misuses_the_api_gets_a_clear_error(tmp_path: Path) -> None:
    cases = {
        "fit({}, lambda g, d: None, torch.nn.MSELoss(), torch.optim.SGD, steps=5)":
            "fit(model=...): must be a torch.nn.Module, got dict",
        "fit(torch.nn.Linear(2, 1), lambda g, d: torch.zeros(2), torch.nn.MSELoss(), "
        "lambda p: torch.optim.SGD(p, 0.1), steps=5)": "fit(batch=...): must return (inputs, targets), two tensors",
        "fit(torch.nn.Linear(2, 1), lambda g, d: (torch.zeros(3, 2), torch.zeros(3, 1)), torch.nn.MSELoss(), "
        "lambda p: torch.optim.SGD(p, 0.1))": "fit(steps=...): how many steps",
        "fit(torch.nn.Linear(2, 1), lambda g, d: (torch.zeros(3, 2), torch.zeros(3, 1)), torch.nn.MSELoss(), "
        "'sgd', steps=5)": "fit(optimiser=...): must be a function of the parameters",
    }
    for call, message in cases.items():
        script = tmp_path / "bad.py"
        script.write_text(f"import torch\nfrom scheduler.train import fit\n{call}\n")
        done = standalone(str(script), cwd=tmp_path)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode != 0 and last.startswith("scheduler.train.TrainError: ") and message in last, done.stderr
        frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
        assert len(frames) <= 2 and "bad.py" in frames[0], done.stderr  # raised at the API's door, not deep inside


def test_under_the_daemon_bf16_on_two_devices_and_a_requeue_resumes_to_the_twins_exact_loss(tmp_path: Path) -> None:
    d = DaemonProc(make_home()).start()
    try:
        ddp = d.submit(write_job(tmp_path, "ddp", job_text(40, 'gpus = 2\n[optimisations]\nprecision = ["bf16"]\n')),
                       "--now")
        job = d.wait_state(ddp, {"COMPLETED", "FAILED"}, timeout_s=180)
        assert job["state"] == "COMPLETED", job
        assert job["metrics"]["precision"] == "bf16" and job["metrics"]["world_size"] == 2, job["metrics"]
        assert job["metrics"]["steps"] == 40 and job["gpus"] == 2
        resumed = d.submit(write_job(tmp_path, "resumed", job_text(2000, "preemptible = true\n")), "--now")
        d.wait_state(resumed, {"RUNNING"})
        deadline = time.monotonic() + 60
        while "step " not in d.log(resumed) and time.monotonic() < deadline:
            time.sleep(0.2)  # training has begun
        assert d.cli("requeue", str(resumed)).returncode == 0
        job = d.wait_state(resumed, {"COMPLETED", "FAILED"}, timeout_s=180)
        assert job["state"] == "COMPLETED" and len(job["runs"]) == 2, job
        first, second = job["runs"]
        assert 0 < first["steps"] < 2000 and second["metrics"]["resumed_from"] == first["steps"], job["runs"]
    finally:
        d.stop()
    twin = metrics(standalone("train.py", "--steps", "2000", "--seed", "1", threads=1).stdout)
    assert job["metrics"]["loss"] == twin["loss"]  # bit for bit across the requeue


def test_gsched_profile_calibrates_a_script_and_its_steps_alone_then_plan_it(tmp_path: Path) -> None:
    d = DaemonProc(make_home()).start()
    try:
        steps_only = write_job(tmp_path, "steps-only", job_text(400, duration=""))
        refused = d.cli("submit", str(steps_only))
        assert refused.returncode == 2 and "duration: required for this command until it has a profile" in \
            refused.stderr, refused.stderr
        calibrate = write_job(tmp_path, "calibrate", job_text(400))
        profiled = d.cli("profile", str(calibrate), "--steps", "60", "--json")
        assert profiled.returncode == 0, profiled.stderr
        rows = json.loads(profiled.stdout)
        assert [r["gpus"] for r in rows] == [1] and rows[0]["state"] == "COMPLETED" and rows[0]["steps_per_s"] > 0
        jid = d.submit(steps_only)
        job = d.show(jid)
        assert job["mode"]["source"] == "profile", job
        planned_s = (datetime_of(job["planned_end"]) - datetime_of(job["planned_start"])).total_seconds()
        assert abs(planned_s - 400 / rows[0]["steps_per_s"]) < 60, (planned_s, rows)  # its measured speed
        d.cli("cancel", str(jid))
    finally:
        d.stop()


def datetime_of(text: str):  # type: ignore[no-untyped-def]
    from scheduler.timeutil import parse_rfc3339

    return parse_rfc3339(text)


LIGHTNING_SCRIPT = '''
import os, torch
import pytorch_lightning as pl
from scheduler.lightning import GschedCallback, resume_path, trainer_kwargs

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(32, 1)
    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        print("at", self.global_step, flush=True)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

torch.manual_seed(0)
x = torch.randn(4000, 32)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=20)
trainer = pl.Trainer(**trainer_kwargs(), accelerator="cpu", callbacks=[GschedCallback()], logger=False,
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, max_epochs=-1)
trainer.fit(Model(), loader, ckpt_path=resume_path())
'''


def test_a_lightning_script_takes_the_mode_stops_at_a_checkpoint_on_sigterm_and_resumes(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("pytorch_lightning")
    script = tmp_path / "lit.py"
    script.write_text(LIGHTNING_SCRIPT)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}, "GSCHED_STEPS": "20000",
           "GSCHED_PRECISION": "bf16", "GSCHED_CHECKPOINT": str(tmp_path / "ck.ckpt")}
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=tmp_path, env=env)
    assert first.stdout is not None
    for line in first.stdout:  # training has begun: gsched asks it to stop, as a requeue does
        if line.startswith("at 50"):
            first.send_signal(15)
            break
    out = first.stdout.read()
    assert first.wait(timeout=120) == 0
    stopped = metrics(out)
    assert stopped["preempted"] is True and 50 <= stopped["steps"] < 20000 and stopped["precision"] == "bf16-mixed"
    env["GSCHED_STEPS"] = str(stopped["steps"] + 100)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    resumed = metrics(done.stdout)
    assert resumed["resumed_from"] == stopped["steps"] and resumed["steps"] == stopped["steps"] + 100, resumed
    assert resumed["preempted"] is False
