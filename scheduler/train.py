"""gsched's training API for your own PyTorch script: give it your model, your batches, your loss and your
optimiser, and it trains in the mode gsched chose for this run.

    from scheduler.train import fit

    def batch(generator, device):          # the batch of a step, from the generator gsched seeds per step
        x = torch.randn(64, 32, generator=generator)
        return x.to(device), (x.sum(1, keepdim=True) > 0).float().to(device)

    fit(model, batch, torch.nn.BCEWithLogitsLoss(), lambda params: torch.optim.AdamW(params, 1e-3), steps=2000)

What it applies, from the job's environment (GSCHED_PRECISION, GSCHED_PRUNING, GSCHED_COMPILE,
GSCHED_CHECKPOINT, GSCHED_STEPS, GSCHED_NUM_DEVICES), with plain defaults outside gsched (fp32, no pruning, no
compile, no checkpoint, one process):
- precision through torch.amp autocast, with a GradScaler for fp16;
- pruning: an L1-unstructured amount, or the 2:4 pattern on Linear layers (masks kept while training, made
  permanent at the end), and torch.compile;
- DDP: a run planned on n > 1 devices restarts the script under torchrun (n processes; gloo on CPU, nccl on
  GPUs), across nodes too (one torchrun a node, GSCHED_NODES); under your own torchrun it joins that;
- exact checkpoints: the batch of step k depends only on (seed, k, rank), and the model, optimiser and scaler are
  saved together, atomically, on SIGTERM (at the next step boundary, agreed across ranks) and at the end; a run
  that finds its checkpoint resumes from it, to the same loss as an uninterrupted run on the same devices;
- the ``gsched-metrics {json}`` line gsched measures the run by (steps, steps_per_s, loss, ...).

Instead of ``loss_fn`` you may give ``step_fn(model, inputs, targets) -> loss``: your own forward pass, with the
model gsched wrapped (DDP, compile) and under its autocast. Misuse (a model that is not a Module, a batch that
is not a pair of tensors, no steps) raises ``TrainError`` naming the argument, before anything trains.

Importing this module does not import torch until ``fit`` runs, nor gsched's CLI, daemon or database.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import GschedError

PRECISIONS = ("fp32", "bf16", "fp16")


class TrainError(GschedError):
    """The script called the training API wrongly: the message names the argument and what it takes."""

    exit_code = 2


@dataclass
class Settings:
    """One run's mode and bounds; ``from_env`` reads what gsched chose (defaults outside gsched)."""

    steps: int
    seed: int = 0
    precision: str = "fp32"
    pruning: float | str = 0.0
    compile: bool = False
    checkpoint: Path | None = None
    report_every: int = 0
    extra_metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, steps: int | None = None, seed: int = 0, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ) if env is None else env
        if env.get("GSCHED_STEPS"):
            steps = _whole("GSCHED_STEPS", env["GSCHED_STEPS"])  # the job file's steps win: gsched planned them
        if steps is None:
            raise TrainError("fit(steps=...): how many steps to train (or run under gsched with steps in the job "
                             "file)")
        return cls(steps=steps, seed=seed, precision=env.get("GSCHED_PRECISION") or "fp32",
                   pruning=parse_pruning(env.get("GSCHED_PRUNING") or "0"),
                   compile=env.get("GSCHED_COMPILE", "") in ("1", "true"),
                   checkpoint=Path(env["GSCHED_CHECKPOINT"]) if env.get("GSCHED_CHECKPOINT") else None)

    def check(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise TrainError(f"fit(steps=...): must be a whole number >= 1, got {self.steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TrainError(f"fit(seed=...): must be a whole number >= 0, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def _whole(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TrainError(f"{name}: must be a whole number >= 1, got {text!r}")
    return int(text)


def parse_pruning(text: str) -> float | str:
    if text == "2:4":
        return text
    try:
        amount = float(text)
    except ValueError:
        raise TrainError(f"pruning: {text!r} is neither an amount in [0, 1) nor 2:4") from None
    if not 0 <= amount < 1:
        raise TrainError(f"pruning: {text!r} is not in [0, 1)")
    return amount


def fit(model: Any, batch: Callable[[Any, Any], tuple[Any, Any]], loss_fn: Callable[[Any, Any], Any] | None = None,
        optimiser: Any = None, *, steps: int | None = None, seed: int = 0,
        step_fn: Callable[[Any, Any, Any], Any] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Train ``model`` for ``steps`` (the job file's steps under gsched), in gsched's mode; returns the metrics it
    printed (on every rank but the first, an empty dict). ``optimiser``: a function of the parameters returning a
    torch optimiser (it is made after pruning), or an optimiser already made for ``model.parameters()``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TrainError(f"fit(model=...): must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(batch):
        raise TrainError(f"fit(batch=...): must be a function (generator, device) -> (inputs, targets), got "
                         f"{type(batch).__name__}")
    if (loss_fn is None) == (step_fn is None):
        raise TrainError("fit(): give exactly one of loss_fn (loss_fn(outputs, targets) -> loss) or step_fn "
                         "(step_fn(model, inputs, targets) -> loss)")
    if not callable(loss_fn or step_fn):
        raise TrainError(f"fit({'loss_fn' if loss_fn is not None else 'step_fn'}=...): must be callable")
    if not (callable(optimiser) or isinstance(optimiser, torch.optim.Optimizer)):
        raise TrainError(f"fit(optimiser=...): must be a function of the parameters returning a torch optimiser, or "
                         f"a torch.optim.Optimizer, got {type(optimiser).__name__}")
    try:  # a misuse found on the way is reported from here, not from deep inside the loop
        settings = settings or Settings.from_env(steps, seed)
        settings.check()
        world = os.environ.get("GSCHED_NUM_DEVICES", "1")
        nodes = os.environ.get("GSCHED_NODES", "1")
        if world.isdigit() and nodes.isdigit() and int(world) * int(nodes) > 1 and "WORLD_SIZE" not in os.environ \
                and os.environ.get("GSCHED_JOB_ID"):
            _restart_under_torchrun(int(world), int(nodes))
        if "WORLD_SIZE" in os.environ:
            _skip_ddp_teardown()
        return train_loop(model, batch, loss_fn, optimiser, settings, step_fn)
    except TrainError as exc:
        raise TrainError(str(exc)) from None


def _skip_ddp_teardown() -> None:
    """A DDP worker ends without torch's C++ teardown, keeping its exit status (1 after an uncaught exception):
    see exit_after_ddp."""
    failed: list[bool] = []
    previous = sys.excepthook

    def hook(*info: Any) -> None:
        failed.append(True)
        previous(*info)

    sys.excepthook = hook
    atexit.register(lambda: exit_after_ddp(1 if failed else 0))


def _restart_under_torchrun(processes: int, nodes: int = 1) -> None:
    """The plan gave this run several devices: run the script again as torchrun's workers (one per device),
    replacing this process, so gsched's signals reach torchrun and through it every worker. Across nodes the
    rendezvous is in the PET_* variables gsched's runner set on each node."""
    argv = [sys.executable, "-m", "torch.distributed.run", *(["--standalone"] if nodes == 1 else []),
            f"--nproc-per-node={processes}", sys.argv[0], *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


class _Stop:
    """SIGTERM asks for a checkpoint at the next step boundary instead of killing the step."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def _device() -> Any:
    import torch

    if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _prunable(model: Any) -> Iterator[Any]:
    import torch

    return (m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)))


def two_four_mask(weight: Any) -> Any:
    """Keep the two largest magnitudes of every four consecutive input weights."""
    import torch

    groups = weight.detach().abs().reshape(-1, 4)
    return torch.zeros_like(groups).scatter_(1, groups.topk(2, dim=1).indices, 1.0).reshape(weight.shape)


def _prune(model: Any, pruning: float | str) -> list[Any]:
    import torch
    import torch.nn.utils.prune

    if pruning == "2:4":
        pruned = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features % 4 == 0]
        for module in pruned:
            torch.nn.utils.prune.custom_from_mask(module, "weight", two_four_mask(module.weight))
        return pruned
    pruned = list(_prunable(model)) if pruning else []
    for module in pruned:
        torch.nn.utils.prune.l1_unstructured(module, "weight", amount=pruning)
    return pruned


def _semi_structured(model: Any, pruned: list[Any], inputs: Any, device: Any, precision: str) -> dict[str, Any]:
    """The 2:4-pruned model's forward time with sparse kernels against dense ones, where the device has them."""
    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return {"supported": False, "why": "2:4 kernels need an NVIDIA GPU of compute capability 8.0 or newer"}
    if precision not in ("bf16", "fp16"):
        return {"supported": False, "why": "2:4 kernels run in bf16 or fp16"}
    from torch.sparse import to_sparse_semi_structured

    def forward_s() -> float:
        with torch.inference_mode():
            for _ in range(3):
                model(inputs)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(20):
                model(inputs)
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / 20

    model = model.to(_dtypes()[precision]).eval()
    dense_s = forward_s()
    try:
        for module in pruned:
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        sparse_s = forward_s()
    except (RuntimeError, ValueError) as exc:  # shapes or dtypes the kernels refuse
        return {"supported": False, "why": str(exc).splitlines()[0][:200]}
    return {"supported": True, "dense_forward_s": dense_s, "sparse_forward_s": sparse_s,
            "forward_speedup": dense_s / sparse_s}


def _dtypes() -> dict[str, Any]:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}


def _save_atomic(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pair(value: Any) -> bool:
    import torch

    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, torch.Tensor) for v in value)


def train_loop(model: Any, batch: Callable[[Any, Any], Any], loss_fn: Callable[[Any, Any], Any] | None,
               optimiser: Any, settings: Settings,
               step_fn: Callable[[Any, Any, Any], Any] | None = None) -> dict[str, Any]:
    """The loop every gsched run shares (the bundled workloads through jobs/train.py, users' scripts through
    ``fit``)."""
    import torch
    import torch.distributed as dist

    distributed = "WORLD_SIZE" in os.environ  # started by torchrun: DDP, even on one device
    device = _device()
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    stop = _Stop()
    model = model.to(device)
    pruned = _prune(model, settings.pruning)
    if isinstance(optimiser, torch.optim.Optimizer):
        made = optimiser
    else:
        made = optimiser(model.parameters())
        if not isinstance(made, torch.optim.Optimizer):
            raise TrainError(f"fit(optimiser=...): returned {type(made).__name__}, not a torch optimiser")
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    step = 0
    resumed_from = None
    checkpoint = settings.checkpoint
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        made.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        step = resumed_from = state["step"]
        if rank == 0:
            print(f"resumed from step {step} ({checkpoint})", flush=True)
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if settings.compile:
        trained = torch.compile(trained)
    dtypes = _dtypes()
    autocast = (torch.amp.autocast(device.type, dtype=dtypes[settings.precision]) if settings.precision in dtypes
                else nullcontext())
    report_every = settings.report_every or max(1, settings.steps // 10)
    started = time.monotonic()
    steps_this_run = 0
    loss = torch.tensor(float("nan"))
    preempted = False
    while step < settings.steps:
        if _agreed(stop.requested, distributed):
            preempted = True
            break
        generator = torch.Generator().manual_seed((settings.seed * 1_000_003 + step) * 64 + rank)
        pair = batch(generator, device)
        if not _pair(pair):
            raise TrainError(f"fit(batch=...): must return (inputs, targets), two tensors; step {step} got "
                             f"{type(pair).__name__}")
        inputs, targets = pair
        made.zero_grad(set_to_none=True)
        with autocast:
            if step_fn is not None:
                loss = step_fn(trained, inputs, targets)
            else:
                assert loss_fn is not None  # fit() checked that exactly one was given
                loss = loss_fn(trained(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TrainError(f"fit({'step_fn' if step_fn is not None else 'loss_fn'}=...): must return a "
                             f"one-element loss tensor; step {step} got {type(loss).__name__}")
        scaler.scale(loss).backward()
        scaler.step(made)
        scaler.update()
        step += 1
        steps_this_run += 1
        if rank == 0 and (step % report_every == 0 or step == settings.steps):
            print(f"step {step}/{settings.steps} loss {loss.item():.6f}", flush=True)
    if not preempted:
        for module in pruned:
            torch.nn.utils.prune.remove(module, "weight")  # permanent: plain weights with zeros
    if rank == 0 and checkpoint is not None:
        _save_atomic(checkpoint, {"model": model.state_dict(), "optimiser": made.state_dict(),
                                  "scaler": scaler.state_dict(), "step": step})
    elapsed_s = time.monotonic() - started
    metrics: dict[str, Any] = {}
    if rank == 0:
        weights = [m.weight for m in _prunable(model)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        total = sum(w.numel() for w in weights)
        metrics = {"steps": step, "loss": float(loss.item()), "steps_per_s": steps_this_run / elapsed_s if elapsed_s
                   else 0.0, "precision": settings.precision, "pruning": settings.pruning,
                   "compile": settings.compile, "world_size": world, "device": device.type,
                   "sparsity": zeros / total if total else 0.0, "preempted": preempted, "resumed_from": resumed_from,
                   **settings.extra_metrics}
        if settings.pruning == "2:4" and not preempted:
            inputs = batch(torch.Generator().manual_seed(settings.seed), device)[0]
            metrics["semi_structured"] = _semi_structured(model, pruned, inputs, device, settings.precision)
        print("gsched-metrics " + json.dumps(metrics), flush=True)
    if distributed:
        dist.destroy_process_group()
    return metrics


def _agreed(flag: bool, distributed: bool) -> bool:
    """Every rank stops at the same step: the stop request is max-reduced across ranks."""
    import torch
    import torch.distributed as dist

    if not distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def exit_after_ddp(code: int = 0) -> None:
    """End a torchrun worker without Python's teardown. After a clean destroy_process_group, torch 2.13 on CPU
    still aborts in its C++ teardown at interpreter exit in about 1 two-rank run in 8 ("terminate called without
    an active exception"), failing a finished job; the checkpoint is fsynced and the metrics printed by now."""
    if "WORLD_SIZE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
