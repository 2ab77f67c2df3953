"""The training loop every workload shares, with the optimisations gsched chooses applied here, not in the
workload: precision (torch.amp autocast; GradScaler for fp16), pruning (an L1-unstructured amount, or the 2:4
semi-structured pattern on Linear layers; masks kept while training, made permanent at the end), torch.compile,
and DDP when started by torchrun (gloo on CPU devices, nccl on GPUs).

2:4 sparsity speeds up matrix multiplies only through the sparse kernels of NVIDIA GPUs of compute capability
8.0 and newer, in bf16/fp16; training still runs the dense kernels on the masked weights. So a 2:4 run also
measures the pruned model's forward pass with its weights in torch's semi-structured sparse format against the
dense one, and reports that speed-up, or why it could not (``semi_structured`` in the metrics).

Checkpoints are exact: the batch of step k depends only on (seed, k, rank), and the model, optimiser and
scaler states are saved together, atomically, on SIGTERM (at the next step boundary, agreed across ranks) and
at the end. A run that finds its checkpoint resumes from it; on CPU with the same device count the final loss
is bit-identical to an uninterrupted run.

Settings come from the command line, with gsched's environment as defaults: GSCHED_PRECISION,
GSCHED_PRUNING, GSCHED_COMPILE, GSCHED_CHECKPOINT. The last line is ``gsched-metrics {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.utils.prune

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Parts:
    """What a workload provides; everything else is the harness's."""

    model: torch.nn.Module
    batch: Callable[[torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimiser: Callable[[Any], torch.optim.Optimizer]


def pruning_arg(text: str) -> float | str:
    if text == "2:4":
        return text
    try:
        amount = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an amount in [0, 1) nor 2:4") from None
    if not 0 <= amount < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1)")
    return amount


def common_args(description: str) -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=env.get("GSCHED_PRECISION", "fp32"))
    parser.add_argument("--pruning", type=pruning_arg, default=pruning_arg(env.get("GSCHED_PRUNING") or "0"),
                        help="an L1-unstructured amount in [0, 1), or 2:4")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        default=env.get("GSCHED_COMPILE", "") in ("1", "true"))
    parser.add_argument("--checkpoint", type=Path, default=Path(env["GSCHED_CHECKPOINT"])
                        if env.get("GSCHED_CHECKPOINT") else None)
    parser.add_argument("--report-every", type=int, default=0, help="progress lines (default: 10 per run)")
    return parser


class _Stop:
    """SIGTERM asks for a checkpoint at the next step boundary instead of killing the step."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def _device() -> torch.device:
    if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _prunable(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    return (m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)))


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the two largest magnitudes of every four consecutive input weights."""
    groups = weight.detach().abs().reshape(-1, 4)
    return torch.zeros_like(groups).scatter_(1, groups.topk(2, dim=1).indices, 1.0).reshape(weight.shape)


def _prune(model: torch.nn.Module, pruning: float | str) -> list[torch.nn.Module]:
    if pruning == "2:4":
        pruned = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features % 4 == 0]
        for module in pruned:
            torch.nn.utils.prune.custom_from_mask(module, "weight", two_four_mask(module.weight))
        return pruned
    pruned = list(_prunable(model)) if pruning else []
    for module in pruned:
        torch.nn.utils.prune.l1_unstructured(module, "weight", amount=pruning)
    return pruned


def _semi_structured(model: torch.nn.Module, pruned: list[torch.nn.Module], inputs: torch.Tensor,
                     device: torch.device, precision: str) -> dict[str, Any]:
    """The 2:4-pruned model's forward time with sparse kernels against dense ones, where the device has them."""
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

    model = model.to(DTYPES[precision]).eval()
    dense_s = forward_s()
    try:
        for module in pruned:
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        sparse_s = forward_s()
    except (RuntimeError, ValueError) as exc:  # shapes or dtypes the kernels refuse
        return {"supported": False, "why": str(exc).splitlines()[0][:200]}
    return {"supported": True, "dense_forward_s": dense_s, "sparse_forward_s": sparse_s,
            "forward_speedup": dense_s / sparse_s}


def _save_atomic(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(build: Callable[[argparse.Namespace], Parts], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ  # started by torchrun: DDP, even on one device
    device = _device()
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    stop = _Stop()
    torch.manual_seed(args.seed)
    parts = build(args)
    model = parts.model.to(device)
    pruned = _prune(model, args.pruning)
    optimiser = parts.optimiser(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    step = 0
    resumed_from = None
    if args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        step = resumed_from = state["step"]
        if rank == 0:
            print(f"resumed from step {step} ({args.checkpoint})", flush=True)
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if args.compile:
        trained = torch.compile(trained)
    autocast = (torch.amp.autocast(device.type, dtype=DTYPES[args.precision]) if args.precision in DTYPES
                else nullcontext())
    report_every = args.report_every or max(1, args.steps // 10)
    started = time.monotonic()
    steps_this_run = 0
    loss = torch.tensor(float("nan"))
    preempted = False
    while step < args.steps:
        if _agreed(stop.requested, distributed):
            preempted = True
            break
        generator = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 64 + rank)
        inputs, targets = parts.batch(generator, device)
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            loss = parts.loss_fn(trained(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        step += 1
        steps_this_run += 1
        if rank == 0 and (step % report_every == 0 or step == args.steps):
            print(f"step {step}/{args.steps} loss {loss.item():.6f}", flush=True)
    if not preempted:
        for module in pruned:
            torch.nn.utils.prune.remove(module, "weight")  # permanent: plain weights with zeros
    if rank == 0 and args.checkpoint is not None:
        _save_atomic(args.checkpoint, {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                       "scaler": scaler.state_dict(), "step": step})
    elapsed_s = time.monotonic() - started
    if rank == 0:
        weights = [m.weight for m in _prunable(model)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        total = sum(w.numel() for w in weights)
        metrics = {"steps": step, "loss": float(loss.item()), "steps_per_s": steps_this_run / elapsed_s if elapsed_s
                   else 0.0, "precision": args.precision, "pruning": args.pruning, "compile": args.compile,
                   "world_size": world, "device": device.type, "sparsity": zeros / total if total else 0.0,
                   "preempted": preempted, "resumed_from": resumed_from}
        if args.pruning == "2:4" and not preempted:
            inputs = parts.batch(torch.Generator().manual_seed(args.seed), device)[0]
            metrics["semi_structured"] = _semi_structured(model, pruned, inputs, device, args.precision)
        print("gsched-metrics " + json.dumps(metrics), flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0  # a checkpointed stop is a clean exit too: the daemon knows it asked for it


def _agreed(flag: bool, distributed: bool) -> bool:
    """Every rank stops at the same step: the stop request is max-reduced across ranks."""
    if not distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def main(build: Callable[[argparse.Namespace], Parts], parser: argparse.ArgumentParser) -> None:
    code = run(build, parser)
    if "WORLD_SIZE" in os.environ:
        # After a clean destroy_process_group, torch 2.13 on CPU still aborts in its C++ teardown at interpreter
        # exit in about 1 two-rank run in 8 ("terminate called without an active exception"), failing a finished
        # job. The checkpoint is fsynced and the metrics printed by now, so skip that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
