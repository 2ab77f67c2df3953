"""The GPU check for sessions lent a GPU: reads, measures, changes nothing on the device.

    python scripts/gpu_check.py [--out FILE.md]       (estimated 2-3 minutes on one H100; not yet run on one)

1. NVML, read only: driver, each GPU's name, UUID, memory, power limit with its allowed range and default,
   and whether the total-energy counter works. No limit, clock or mode is ever set.
2. The transformer workload (jobs.gpt at nanoGPT's Shakespeare-char size: 6 layers, 384 wide, 6 heads,
   256-character context, batch 64) in fp32 and bf16 on the first GPU: steps/s and joules/step from the NVML
   energy counter, marginal over N vs 2N steps so start-up cancels out.
3. One bf16 run of it with 2:4 pruning: the forward-pass speed-up of torch's semi-structured sparse kernels.
4. DDP with nccl on one GPU (torchrun, one process) on the linear workload.
Prints a Markdown block (date, device, figures) for docs/benchmarks.md's measurements section; exit 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nvml_report() -> tuple[list[str], list[tuple[str, object]]]:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print(f"gpu_check: no NVIDIA driver here ({exc}); nothing to check", file=sys.stderr)
        sys.exit(2)
    lines = [f"driver {pynvml.nvmlSystemGetDriverVersion()}, NVML {pynvml.nvmlSystemGetNVMLVersion()}"]
    handles = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = pynvml.nvmlDeviceGetUUID(h)
        lo, hi = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
        try:
            counter = f"{pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000:.0f} J since driver load"
        except pynvml.NVMLError as exc:
            counter = f"unsupported ({exc})"
        lines.append(f"GPU {i}: {pynvml.nvmlDeviceGetName(h)} {uuid}, "
                     f"{pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20} MiB, power limit "
                     f"{pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000:.0f} W (range {lo / 1000:.0f}-{hi / 1000:.0f} W, "
                     f"default {pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000:.0f} W), energy counter {counter}")
        handles.append((uuid, h))
    return lines, handles


def energy_run(handle: object, uuid: str, argv: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """(joules from the counter, wall s, metrics) of one run on one GPU."""
    import pynvml

    start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": uuid, **env})
    wall = time.perf_counter() - start
    joules = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_mj) / 1000
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads([line for line in result.stdout.splitlines() if line.startswith("gsched-metrics ")][-1][15:])
    return joules, wall, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    lines, handles = nvml_report()
    uuid, handle = handles[0]
    gpt = [sys.executable, "-m", "jobs.gpt", "--layers", "6", "--embd", "384", "--heads", "6", "--block", "256",
           "--batch-size", "64"]
    lines.append("")
    lines.append("| workload (GPU 0) | precision | steps/s | J/step (NVML counter, marginal) |")
    lines.append("|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        j1, w1, _m = energy_run(handle, uuid, [*gpt, "--steps", str(args.steps), "--precision", precision], {})
        j2, w2, m2 = energy_run(handle, uuid, [*gpt, "--steps", str(2 * args.steps), "--precision", precision], {})
        lines.append(f"| gpt 6x384 | {precision} | {m2['steps_per_s']:.1f} | {(j2 - j1) / args.steps:.3f} |")
    _j, _w, m = energy_run(handle, uuid, [*gpt, "--steps", "50", "--precision", "bf16", "--pruning", "2:4"], {})
    lines.append("")
    lines.append(f"2:4 pruning, bf16: sparsity {m['sparsity']:.2f}, semi-structured kernels: {m['semi_structured']}")
    joules, wall, m = energy_run(handle, uuid, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc-per-node=1", "-m", "jobs.linear", "--steps", "2000"], {})
    lines.append("")
    lines.append(f"DDP (nccl, torchrun, 1 process on GPU 0), linear 2000 steps: world_size {m['world_size']}, "
                 f"device {m['device']}, {m['steps_per_s']:.0f} steps/s, loss {m['loss']:.4f}, {joules:.0f} J in {wall:.1f} s")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"GPU check, {stamp}:\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
