"""Each optimisation's measured effect on each workload, on this machine's CPU.

    .venv/bin/python bench/optimisations.py [--compile]

For every (workload, optimisation) it trains N and then 2N steps in fresh processes and reports the marginal
cost of N steps: wall seconds per step (steps/s) and CPU seconds per step of the whole process tree (torchrun
workers included), so start-up and import time cancel out. Energy per step is CPU seconds x 10 W per core -
the `estimate` meter gsched uses where neither NVML nor RAPL can be read, as here: a labelled estimate, not a
measurement. Relative columns compare with fp32 on one device.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATTS_PER_CORE = 10.0
WORKLOADS = {"linear": (["-m", "jobs.linear"], 2000), "mlp": (["-m", "jobs.mlp"], 40), "gpt": (["-m", "jobs.gpt"], 20)}
VARIANTS = {"fp32": [], "bf16": ["--precision", "bf16"], "fp16": ["--precision", "fp16"],
            "pruning 0.5": ["--pruning", "0.5"], "pruning 2:4": ["--pruning", "2:4"], "DDP x2": None}


def measure(module: list[str], extra: list[str] | None, steps: int) -> tuple[float, float]:
    """(wall s, CPU s) of one fresh run of ``steps`` steps."""
    if extra is None:  # DDP: two processes, one core each
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *module]
        extra = []
    else:
        argv = [sys.executable, *module]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([*argv, "--steps", str(steps), *extra], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile on CPU)")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.compile:
        variants["compile"] = ["--compile"]
    print("| workload (CPU, 1 thread per device) | optimisation | steps/s | CPU s/step | est. J/step | vs fp32 J/step |")
    print("|---|---|---|---|---|---|")
    for name, (module, steps) in WORKLOADS.items():
        base = None
        for label, extra in variants.items():
            wall_1, cpu_1 = measure(module, extra, steps)
            wall_2, cpu_2 = measure(module, extra, 2 * steps)
            per_step_wall = max(1e-9, (wall_2 - wall_1) / steps)
            joules = max(0.0, (cpu_2 - cpu_1) / steps) * WATTS_PER_CORE
            base = joules if base is None else base
            print(f"| {name} | {label} | {1 / per_step_wall:.1f} | {joules / WATTS_PER_CORE:.4f} | {joules:.4f} | "
                  f"{100 * (joules - base) / base:+.0f}% |", flush=True)


if __name__ == "__main__":
    main()
