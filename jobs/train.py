"""The bundled workloads' command line around gsched's training loop (scheduler/train.py, the API users'
scripts call too): each workload gives its Parts, and the settings come from the command line with gsched's
environment as defaults (GSCHED_PRECISION, GSCHED_PRUNING, GSCHED_COMPILE, GSCHED_CHECKPOINT). What the loop
applies (precision, pruning, compile, DDP under torchrun, exact checkpoints, the metrics line) is described there.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scheduler.train import Settings, TrainError, exit_after_ddp, parse_pruning, train_loop, two_four_mask

__all__ = ["Parts", "common_args", "main", "pruning_arg", "run", "two_four_mask"]


@dataclass
class Parts:
    """What a workload provides; everything else is the loop's."""

    model: torch.nn.Module
    batch: Callable[[torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimiser: Callable[[Any], torch.optim.Optimizer]


def pruning_arg(text: str) -> float | str:
    try:
        return parse_pruning(text)
    except TrainError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("pruning: ")) from None


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


def run(build: Callable[[argparse.Namespace], Parts], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    parts = build(args)
    settings = Settings(steps=args.steps, seed=args.seed, precision=args.precision, pruning=args.pruning,
                        compile=args.compile, checkpoint=args.checkpoint, report_every=args.report_every)
    train_loop(parts.model, parts.batch, parts.loss_fn, parts.optimiser, settings)
    return 0  # a checkpointed stop is a clean exit too: the daemon knows it asked for it


def main(build: Callable[[argparse.Namespace], Parts], parser: argparse.ArgumentParser) -> None:
    code = run(build, parser)
    exit_after_ddp(code)
    sys.exit(code)
