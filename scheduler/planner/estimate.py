"""A queued job's modes until measured profiles exist: the documented default scaling model.

For a job allowed n devices (gpus.min..gpus.max), precisions P and power caps C (GPUs only):
- rate(n, p, c) = base_rate x n^0.9 x speedup[p] x (c / nominal_w)^0.4, in work units per hour;
- power(n, p, c) = n x (c or nominal_w), in kW, where nominal_w is planner.gpu_power_w (GPUs) or
  planner.cpu_device_power_w (CPU virtual devices).
A job that may span nodes (``nodes``) also gets each split of n devices over k of its node counts (n/k a node),
at NODE_EFFICIENCY^(k-1) of that rate: gradients cross the network. n^0.9 is a typical data-parallel efficiency; speedup is 1.8 for bf16/fp16 on GPUs (tensor cores) and
1.0 on CPUs; the ^0.4 reflects that a GPU's throughput falls more slowly than its power cap (as Zeus
measured). Work units: a workload's steps (base_rate = its steps_per_s x 3600); a command's
"one-device hours" (its duration on gpus.min devices x gpus.min^0.9, base_rate = 1).
Each pruning choice the job allows (an L1 amount or "2:4") is a mode of its own, at the same default rate
and power: training still runs dense kernels on masked weights, so no saving is assumed until one is measured.
Every such mode is labelled ``source: default-scaling``. A mode measured before (a Profile: any finished run of
the same workload and arguments in that mode, or `gsched profile`) uses its measured rate and mean power
instead, labelled ``source: profile``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from scheduler.errors import InputError
from scheduler.jobfile import JobSpec, pruning_label, splits
from scheduler.planner.problem import Mode

SCALING_EXPONENT = 0.9
CAP_EXPONENT = 0.4
GPU_SPEEDUP = {"fp32": 1.0, "bf16": 1.8, "fp16": 1.8}
NODE_EFFICIENCY = 0.9  # of the rate, per node beyond the first


@dataclass(frozen=True)
class JobModes:
    work: float
    modes: tuple[Mode, ...]
    described: tuple[dict[str, Any], ...]  # what gsched show prints per mode
    requested: int


def job_modes(spec: JobSpec, capacity: int, device_kind: str, nominal_w: float, steps_per_s: float | None,
              clock_speed: float = 1.0, profiles: list[Any] | None = None) -> JobModes:
    in_steps = bool(spec.steps) and (spec.command is None or bool(profiles))  # else a command's one-device hours
    if spec.command is not None and in_steps:
        # A script training through scheduler.train, measured before: its steps are the work, and a mode not yet
        # measured scales from a measured one (the first one's rate, back to one device in fp32, uncapped).
        first = (profiles or [])[0]
        speedup = GPU_SPEEDUP.get(first.precision, 1.0) if device_kind == "gpu" else 1.0
        cap = (first.power_limit_w / nominal_w) ** CAP_EXPONENT if first.power_limit_w else 1.0
        work = float(spec.steps or 0)
        base_rate = first.steps_per_s * 3600 / (first.gpus ** SCALING_EXPONENT * speedup * cap)
    elif spec.duration_s is not None and not (in_steps and profiles and steps_per_s):
        # the user's estimate in one-device hours, until a run measures the workload's steps
        work = spec.duration_s / 3600 * spec.gpus_min ** SCALING_EXPONENT
        base_rate, in_steps = 1.0, False
    elif spec.command is not None:
        raise InputError("duration: required for this command until it has a profile (its steps alone say nothing "
                         "of its speed): give 'duration', or run `gsched profile` on the job file first")
    else:
        assert spec.steps is not None and steps_per_s
        work, base_rate = float(spec.steps), steps_per_s * 3600
    caps: list[int | None] = [None]
    if device_kind == "gpu":
        caps += [c for c in spec.optimisations.power_cap_w if c < nominal_w]
    modes, described = [], []
    top = max(spec.gpus_min, min(spec.gpus_max, capacity))
    compiled = spec.optimisations.compile
    layouts = splits(spec.gpus_min, top, spec.nodes_min, spec.nodes_max) or [(top, spec.nodes_min)]
    choices = itertools.product(layouts, spec.optimisations.precision, spec.optimisations.pruning, caps)
    for (n, k), precision, pruning, cap in choices:
        speedup = GPU_SPEEDUP[precision] if device_kind == "gpu" else 1.0
        watts = cap if cap is not None else nominal_w
        rate = base_rate * n ** SCALING_EXPONENT * speedup * (watts / nominal_w) ** CAP_EXPONENT \
            * NODE_EFFICIENCY ** (k - 1)
        power_kw, source = n * watts / 1000, "default-scaling"
        # profiles are of one-node runs (a multi-node run records none)
        measured = next((p for p in profiles or [] if p.gpus == n and p.precision == precision
                         and p.power_limit_w == (cap or 0) and p.pruning == pruning_label(pruning)
                         and p.compile == compiled), None) if k == 1 else None
        if measured is not None and in_steps:
            rate, power_kw, source = measured.steps_per_s * 3600, measured.watts / 1000, "profile"
        # On an accelerated clock a real run spans `speed` times as much simulated time.
        modes.append(Mode(n, rate / clock_speed, power_kw, f"{n}x{device_kind} {precision}"
                          + (f" on {k} nodes" if k > 1 else "")
                          + (f" pruned {pruning_label(pruning)}" if pruning else "") + (f" {cap}W" if cap else ""), k))
        described.append({"gpus": n, "precision": precision, "power_limit_w": cap, "pruning": pruning,
                          "compile": compiled, "source": source, **({"nodes": k} if k > 1 else {})})
    largest = max(n for n, _k in layouts)
    requested = min((i for i, d in enumerate(described)
                     if d["gpus"] == largest and d["precision"] == spec.optimisations.precision[0]
                     and d["pruning"] == spec.optimisations.pruning[0] and d["power_limit_w"] is None),
                    key=lambda i: int(described[i].get("nodes") or 1))
    return JobModes(work, tuple(modes), tuple(described), requested)
