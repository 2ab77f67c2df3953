"""The seed's training loop: torch.nn.Linear(1000, 10), MSELoss, SGD lr 0.01, a batch of 100 random inputs
per step, through the shared harness (jobs/train.py).

    python -m jobs.linear --steps 2000 --seed 0 [--precision bf16] [--pruning 0.5] [--checkpoint ck.pt]
"""

from __future__ import annotations

import argparse

import torch

from jobs.train import Parts, common_args, main


def build(args: argparse.Namespace) -> Parts:
    def batch(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.randn(args.batch_size, 1000, generator=generator)
        targets = torch.randn(args.batch_size, 10, generator=generator)
        return inputs.to(device), targets.to(device)

    return Parts(torch.nn.Linear(1000, 10), batch, torch.nn.MSELoss(),
                 lambda params: torch.optim.SGD(params, lr=args.lr))


def parser() -> argparse.ArgumentParser:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=100)
    return p


if __name__ == "__main__":
    main(build, parser())
