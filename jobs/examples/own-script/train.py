"""A user's own training script: a small CNN learning to tell generated 16x16 shapes apart (no download).

Plain PyTorch, plus three gsched lines: the import, a batch function of (generator, device), and fit().
Standalone (`python train.py`) it trains in fp32 on one device for --steps; under gsched it trains in the mode
the planner chose (precision, pruning, devices), checkpoints on SIGTERM and resumes exactly.
"""

import argparse

import torch
from torch import nn

from scheduler.train import fit  # gsched: the training API (no CLI, daemon or database comes with it)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 4))


def shapes(generator: torch.Generator, device: torch.device, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of noisy 16x16 images of four classes: horizontal bar, vertical bar, square, cross."""
    labels = torch.randint(0, 4, (size,), generator=generator)
    images = 0.3 * torch.randn(size, 1, 16, 16, generator=generator)
    offsets = torch.randint(2, 12, (size, 2), generator=generator)
    for i, (label, (r, c)) in enumerate(zip(labels.tolist(), offsets.tolist())):
        if label in (0, 3):
            images[i, 0, r, 2:14] += 1.0
        if label in (1, 3):
            images[i, 0, 2:14, c] += 1.0
        if label == 2:
            images[i, 0, r - 2:r + 2, c - 2:c + 2] += 1.0
    return images.to(device), labels.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = make_model()
    # Before gsched this was a loop: for step in range(args.steps): x, y = next(data); loss = ...; backward; step.
    fit(model, shapes, nn.CrossEntropyLoss(), lambda params: torch.optim.AdamW(params, lr=args.lr),
        steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
