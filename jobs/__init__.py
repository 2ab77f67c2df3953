"""gsched's workloads. Importing this package must stay cheap (no torch): the CLI validates job files with it.

``steps_per_s`` is a rough default rate on one CPU device, used for the planner's duration estimate
until a measured profile exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkloadInfo:
    module: str
    summary: str
    steps_per_s: float


WORKLOADS: dict[str, WorkloadInfo] = {
    info.module: info
    for info in (
        WorkloadInfo("jobs.linear", "the seed's Linear(1000, 10) regression, MSE, SGD lr 0.01, batch 100", 1500.0),
        WorkloadInfo("jobs.mlp", "MLP classifier (3x1024 hidden) on 10 overlapping Gaussian classes, AdamW", 15.0),
        WorkloadInfo("jobs.gpt", "tiny GPT (4 layers, 128 wide) predicting the next character of a Shakespeare play",
                     7.5),
    )
}
