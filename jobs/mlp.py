"""An MLP classifier on a synthetic, learnable task: 10 Gaussian clusters in 256 dimensions, 3 hidden layers
of 1024, cross-entropy, AdamW. Big enough that precision and pruning show in the measurements.

    python -m jobs.mlp --steps 300 [--precision bf16] [--pruning 0.5]
"""

from __future__ import annotations

import argparse

import torch

from jobs.train import Parts, common_args, main

CLASSES, FEATURES = 10, 256


def build(args: argparse.Namespace) -> Parts:
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(1234)) * 0.15  # overlapping
    width = args.hidden
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, CLASSES))

    def batch(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (args.batch_size,), generator=generator)
        inputs = centres[labels] + torch.randn(args.batch_size, FEATURES, generator=generator)
        return inputs.to(device), labels.to(device)

    return Parts(model, batch, torch.nn.CrossEntropyLoss(), lambda params: torch.optim.AdamW(params, lr=args.lr))


def parser() -> argparse.ArgumentParser:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    return p


if __name__ == "__main__":
    main(build, parser())
