"""What gsched saved: per finished job, per user and overall, the measured energy priced where it ran against the
same energy had the job run in its requested mode as soon as the devices allowed after its submission (the planner
benchmark's run-now: FIFO by submission, each job at the earliest time its devices are free for its whole run),
on the same signals. Pure: the caller hands in the jobs, their runs, the pool and the signals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler.forecasts.base import Forecast
from scheduler.planner.cost import J_PER_KWH, run_cost
from scheduler.timeutil import rfc3339

MEASURED_SOURCES = ("nvml", "nvml-power", "rapl")
SUMS = ("energy_kwh", "measured_kwh", "estimated_kwh", "cost_eur", "co2_kg", "baseline_cost_eur", "baseline_co2_kg")


@dataclass(frozen=True)
class Run:
    started_at: datetime
    finished_at: datetime
    energy_j: float
    energy_source: str
    rate_ratio: float = 1.0  # its mode's speed / the requested mode's (for the baseline's duration)


@dataclass(frozen=True)
class FinishedJob:
    id: int
    name: str
    owner: str
    state: str
    submitted_at: datetime
    finished_at: datetime
    runs: tuple[Run, ...]
    requested_gpus: int = 1

    @property
    def requested_s(self) -> float:
        """How long its runs would have taken in the requested mode, without pauses or resumes."""
        return sum((r.finished_at - r.started_at).total_seconds() * r.rate_ratio for r in self.runs)


# (start, end) -> the signals over it, and how they were known ("realised", "forecast", "estimated", "trace")
Signals = Callable[[datetime, datetime], tuple[Forecast, str]]


def run_now_starts(jobs: Sequence[FinishedJob], devices: int) -> dict[int, datetime]:
    """Run-now with the pool's devices: by submission, each job starts at the earliest time from its submission
    when its requested devices are free for its whole run, as the planner benchmark's run-now does."""
    placed: list[tuple[datetime, datetime, int]] = []
    starts: dict[int, datetime] = {}
    for job in sorted(jobs, key=lambda j: (j.submitted_at, j.id)):
        need = min(job.requested_gpus, devices)
        length = timedelta(seconds=job.requested_s)
        for t in sorted({job.submitted_at, *(e for _s, e, _g in placed if e > job.submitted_at)}):
            end = t + length
            # the busiest moment in [t, end) is t itself or a placed run's start inside it
            moments = [t, *(s for s, _e, _g in placed if t < s < end)]
            if all(sum(g for s, e, g in placed if s <= m < e) + need <= devices for m in moments):
                break
        starts[job.id] = t
        placed.append((t, t + length, need))
    return starts


def job_report(job: FinishedJob, signals: Signals, baseline_start: datetime) -> dict[str, Any]:
    energy_j = sum(r.energy_j for r in job.runs)
    measured_j = sum(r.energy_j for r in job.runs if r.energy_source in MEASURED_SOURCES)
    cost_eur = co2_g = 0.0
    bases = set()
    for run in job.runs:
        forecast, basis = signals(run.started_at, run.finished_at)
        bases.add(basis)
        c, g = run_cost(run.energy_j, run.started_at, run.finished_at, forecast)
        cost_eur, co2_g = cost_eur + c, co2_g + g
    # The baseline: the same energy, drawn over the run-now window in the requested mode.
    base_end = baseline_start + timedelta(seconds=job.requested_s)
    forecast, basis = signals(baseline_start, max(base_end, baseline_start + timedelta(seconds=1)))
    bases.add(basis)
    base_cost, base_g = run_cost(energy_j, baseline_start, base_end, forecast)
    return {"id": job.id, "name": job.name, "owner": job.owner, "state": job.state,
            "submitted_at": rfc3339(job.submitted_at), "finished_at": rfc3339(job.finished_at), "runs": len(job.runs),
            "energy_kwh": energy_j / J_PER_KWH, "measured_kwh": measured_j / J_PER_KWH,
            "estimated_kwh": (energy_j - measured_j) / J_PER_KWH, "cost_eur": cost_eur, "co2_kg": co2_g / 1000,
            "baseline_start": rfc3339(baseline_start), "baseline_cost_eur": base_cost, "baseline_co2_kg": base_g / 1000,
            "saved_cost_eur": base_cost - cost_eur, "saved_co2_kg": (base_g - co2_g) / 1000,
            "signals": "+".join(sorted(bases))}


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: sum(r[key] for r in rows) for key in SUMS}
    out["jobs"] = len(rows)
    out["saved_cost_eur"] = out["baseline_cost_eur"] - out["cost_eur"]
    out["saved_co2_kg"] = out["baseline_co2_kg"] - out["co2_kg"]
    out["saved_cost_pct"] = _pct(out["saved_cost_eur"], out["baseline_cost_eur"])
    out["saved_co2_pct"] = _pct(out["saved_co2_kg"], out["baseline_co2_kg"])
    return out


def _pct(saved: float, baseline: float) -> float | None:
    return round(100 * saved / baseline, 2) if baseline > 0 else None


def report(jobs: Sequence[FinishedJob], signals: Signals, devices: int) -> dict[str, Any]:
    """``jobs``: the finished jobs reported on; the run-now baseline queues them among themselves on ``devices``."""
    starts = run_now_starts(jobs, devices)
    rows = [job_report(job, signals, starts[job.id]) for job in sorted(jobs, key=lambda j: (j.finished_at, j.id))]
    users = {owner: totals([r for r in rows if r["owner"] == owner]) for owner in sorted({r["owner"] for r in rows})}
    return {"jobs": rows, "users": users, "total": totals(rows),
            "baseline": "run-now: the same measured energy, had each job run in its requested mode as soon as the "
                        "devices allowed after its submission (FIFO), priced on the same signals"}
