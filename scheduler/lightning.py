"""PyTorch Lightning users: gsched's chosen mode and its checkpoints, through the Trainer's own arguments and a
callback. Needs pytorch-lightning (gsched does not depend on it); imports none of gsched's CLI, daemon or database.

    import pytorch_lightning as pl
    from scheduler.lightning import GschedCallback, resume_path, trainer_kwargs

    trainer = pl.Trainer(**trainer_kwargs(), callbacks=[GschedCallback()])
    trainer.fit(model, train_loader, ckpt_path=resume_path())

``trainer_kwargs`` maps GSCHED_PRECISION to Lightning's precision ("bf16-mixed", "16-mixed", "32-true"),
GSCHED_NUM_DEVICES to ``devices`` (Lightning then runs DDP itself) and GSCHED_STEPS to ``max_steps``; outside
gsched it returns fp32 on one device and leaves ``max_steps`` to you. The callback saves a checkpoint to
GSCHED_CHECKPOINT when gsched asks the run to stop (SIGTERM, acted on at the next batch's end) and at the end,
and prints the ``gsched-metrics`` line gsched measures the run by. Pruning and compile are not applied here (use
Lightning's ModelPruning callback and ``torch.compile`` on your module); a job file for a Lightning script should
list only precisions in ``[optimisations]``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def trainer_kwargs(env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    kwargs: dict[str, Any] = {"precision": PRECISION.get(env.get("GSCHED_PRECISION") or "fp32", "32-true")}
    devices = env.get("GSCHED_NUM_DEVICES", "1")
    kwargs["devices"] = int(devices) if devices.isdigit() and int(devices) > 0 else 1
    if kwargs["devices"] > 1:
        kwargs["strategy"] = "ddp"
    if (env.get("GSCHED_STEPS") or "").isdigit():
        kwargs["max_steps"] = int(env["GSCHED_STEPS"])
    return kwargs


def resume_path(env: dict[str, str] | None = None) -> str | None:
    """The checkpoint a requeued run resumes from, if an earlier run of this job left one."""
    env = dict(os.environ) if env is None else env
    path = env.get("GSCHED_CHECKPOINT")
    return path if path and Path(path).exists() else None


class GschedCallback(pl.Callback):
    def __init__(self) -> None:
        self.requested = False
        self.preempted = False
        self.started = 0.0
        self.first_step = 0
        self.resumed_from: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        self.started, self.first_step = time.monotonic(), trainer.global_step
        self.resumed_from = trainer.global_step or None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.requested, all=False)  # every rank stops together
        if stop:
            self.preempted = True
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = os.environ.get("GSCHED_CHECKPOINT")
        if path:
            trainer.save_checkpoint(path)  # rank 0 writes; a requeued run resumes from it (resume_path)
        if trainer.is_global_zero:
            elapsed_s = time.monotonic() - self.started
            loss = trainer.callback_metrics.get("loss", trainer.callback_metrics.get("train_loss"))
            metrics = {"steps": trainer.global_step, "steps_per_s": (trainer.global_step - self.first_step) / elapsed_s
                       if elapsed_s > 0 else 0.0, "loss": float(loss) if loss is not None else None,
                       "precision": str(trainer.precision), "world_size": trainer.world_size,
                       "preempted": self.preempted, "resumed_from": self.resumed_from}
            print("gsched-metrics " + json.dumps(metrics), flush=True)
