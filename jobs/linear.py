"""The seed's training loop: torch.nn.Linear(1000, 10), MSELoss, SGD lr 0.01, a batch of 100 random inputs
per step. Prints progress to its log and a final ``gsched-metrics {json}`` line the runner records.

    python -m jobs.linear --steps 2000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    model = torch.nn.Linear(1000, 10).to(device)
    loss_fn = torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    report_every = max(1, args.steps // 10)
    started = time.monotonic()
    loss = torch.tensor(float("nan"))
    for step in range(1, args.steps + 1):
        inputs = torch.randn(args.batch_size, 1000, device=device)
        targets = torch.randn(args.batch_size, 10, device=device)
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if step % report_every == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.6f}", flush=True)
    elapsed_s = time.monotonic() - started
    metrics = {"steps": args.steps, "loss": loss.item(), "steps_per_s": args.steps / elapsed_s, "device": str(device)}
    print("gsched-metrics " + json.dumps(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
