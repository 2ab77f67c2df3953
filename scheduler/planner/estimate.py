"""Duration estimates until measured profiles exist.

Default scaling model: a job on n devices runs n^0.9 times as fast as on one (a typical data-parallel
efficiency). A workload's one-device rate is its ``steps_per_s`` in jobs/; a command's ``duration`` is
taken as measured at its ``gpus.min``.
"""

from __future__ import annotations

from scheduler.jobfile import JobSpec

SCALING_EXPONENT = 0.9


def durations_s(spec: JobSpec, steps_per_s: float | None) -> tuple[float, ...]:
    """Estimated duration on 1 .. gpus_max devices (entries below gpus_min are estimates too)."""
    if spec.duration_s is not None:
        base_n, base_s = spec.gpus_min, spec.duration_s
    else:
        assert spec.steps is not None and steps_per_s
        base_n, base_s = 1, spec.steps / steps_per_s
    return tuple(base_s * (base_n / n) ** SCALING_EXPONENT for n in range(1, spec.gpus_max + 1))
