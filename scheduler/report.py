"""What gsched saved: per finished job, per user and overall, the measured energy priced where it ran against the
same energy had the job started at submission in its requested mode (the planner benchmark's run-now, without
queueing), on the same signals. Pure: the caller hands in the jobs, their runs and the signals."""

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


# (start, end) -> the signals over it, and how they were known ("realised", "forecast", "estimated", "trace")
Signals = Callable[[datetime, datetime], tuple[Forecast, str]]


def job_report(job: FinishedJob, signals: Signals) -> dict[str, Any]:
    energy_j = sum(r.energy_j for r in job.runs)
    measured_j = sum(r.energy_j for r in job.runs if r.energy_source in MEASURED_SOURCES)
    cost_eur = co2_g = 0.0
    bases = set()
    for run in job.runs:
        forecast, basis = signals(run.started_at, run.finished_at)
        bases.add(basis)
        c, g = run_cost(run.energy_j, run.started_at, run.finished_at, forecast)
        cost_eur, co2_g = cost_eur + c, co2_g + g
    # The baseline: the same energy, drawn from submission for as long as the runs would have taken in the
    # requested mode, without pauses or resumes.
    duration_s = sum((r.finished_at - r.started_at).total_seconds() * r.rate_ratio for r in job.runs)
    base_end = job.submitted_at + timedelta(seconds=duration_s)
    forecast, basis = signals(job.submitted_at, max(base_end, job.submitted_at + timedelta(seconds=1)))
    bases.add(basis)
    base_cost, base_g = run_cost(energy_j, job.submitted_at, base_end, forecast)
    return {"id": job.id, "name": job.name, "owner": job.owner, "state": job.state,
            "submitted_at": rfc3339(job.submitted_at), "finished_at": rfc3339(job.finished_at), "runs": len(job.runs),
            "energy_kwh": energy_j / J_PER_KWH, "measured_kwh": measured_j / J_PER_KWH,
            "estimated_kwh": (energy_j - measured_j) / J_PER_KWH, "cost_eur": cost_eur, "co2_kg": co2_g / 1000,
            "baseline_cost_eur": base_cost, "baseline_co2_kg": base_g / 1000,
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


def report(jobs: Sequence[FinishedJob], signals: Signals) -> dict[str, Any]:
    rows = [job_report(job, signals) for job in sorted(jobs, key=lambda j: (j.finished_at, j.id))]
    users = {owner: totals([r for r in rows if r["owner"] == owner]) for owner in sorted({r["owner"] for r in rows})}
    return {"jobs": rows, "users": users, "total": totals(rows),
            "baseline": "the same measured energy, had the job started at submission in its requested mode "
                        "(run-now), priced on the same signals"}
