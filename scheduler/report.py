"""What gsched saved: per finished job, per user and overall, the measured energy priced where it ran against the
same energy had the job run in its requested mode as soon as the devices allowed after its submission (the planner
benchmark's run-now: FIFO by submission, each job at the earliest time its devices are free for its whole run),
on the same signals. Pure: the caller hands in the jobs, their runs, the pool and the signals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from scheduler.forecasts.base import Forecast
from scheduler.planner.cost import J_PER_KWH, run_cost
from scheduler.planner.pipelines import in_order
from scheduler.timeutil import rfc3339

MEASURED_SOURCES = ("nvml", "nvml-power", "rapl")
SUMS = ("energy_kwh", "measured_kwh", "estimated_kwh", "cost_eur", "co2_kg")
COMPARED = "COMPLETED"  # savings only over jobs run in full: a failed or cancelled run is not the job's whole work


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
    after: tuple[int, ...] = ()  # the jobs it waited for: run-now starts it after their run-now runs end

    @property
    def requested_s(self) -> float:
        """How long its runs would have taken in the requested mode, without pauses or resumes."""
        return sum((r.finished_at - r.started_at).total_seconds() * r.rate_ratio for r in self.runs)


# (start, end) -> the signals over it, and how they were known ("realised", "forecast", "estimated", "trace")
Signals = Callable[[datetime, datetime], tuple[Forecast, str]]


def run_now_starts(jobs: Sequence[FinishedJob], devices: int) -> dict[int, datetime]:
    """Run-now with the pool's devices: by submission, each job starts at the earliest time from its submission
    when its requested devices are free for its whole run, as the planner benchmark's run-now does; on a
    one-minute grid (a start rounds up to the minute, a run to whole minutes). A pipeline's step starts no earlier
    than its predecessors' run-now runs end (those reported with it): a plain queue holds it as gsched does."""
    if not jobs:
        return {}
    origin = min(j.submitted_at for j in jobs)
    minute = timedelta(minutes=1)
    spans = {j.id: max(1, math.ceil(j.requested_s / 60)) for j in jobs}
    last = max(math.ceil((j.submitted_at - origin) / minute) for j in jobs)
    free = np.full(last + sum(spans.values()) + 1, devices, dtype=np.int32)  # room for the longest queue
    starts: dict[int, datetime] = {}
    room_from: dict[int, int] = {}  # need -> no minute before it has room for that many (only ever moves on)
    by_submission = sorted(jobs, key=lambda j: (j.submitted_at, j.id))
    index = {job.id: k for k, job in enumerate(by_submission)}
    preds = [[index[p] for p in job.after if p in index] for job in by_submission]
    ends: dict[int, int] = {}
    for k in in_order(list(range(len(by_submission))), preds):
        job = by_submission[k]
        need, n = min(job.requested_gpus, devices), spans[job.id]
        submitted = max([math.ceil((job.submitted_at - origin) / minute), *(ends.get(p, 0) for p in preds[k])])
        t = _first_room(free, max(submitted, room_from.get(need, 0)), need)
        if submitted <= room_from.get(need, 0):
            room_from[need] = t
        while True:  # jump past the last minute in the window without room
            short = np.flatnonzero(free[t:t + n] < need)
            if not len(short):
                break
            t = _first_room(free, t + int(short[-1]) + 1, need)
        free[t:t + n] -= need
        starts[job.id], ends[k] = origin + t * minute, t + n
    return starts


def _first_room(free: np.ndarray, t: int, need: int, chunk: int = 4096) -> int:
    """The first minute from ``t`` with ``need`` devices free (the array ends with room to spare)."""
    while True:
        hit = np.flatnonzero(free[t:t + chunk] >= need)
        if len(hit):
            return t + int(hit[0])
        t += chunk


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
    compared = job.state == COMPARED
    return {"id": job.id, "name": job.name, "owner": job.owner, "state": job.state,
            "submitted_at": rfc3339(job.submitted_at), "finished_at": rfc3339(job.finished_at), "runs": len(job.runs),
            "energy_kwh": energy_j / J_PER_KWH, "measured_kwh": measured_j / J_PER_KWH,
            "estimated_kwh": (energy_j - measured_j) / J_PER_KWH, "cost_eur": cost_eur, "co2_kg": co2_g / 1000,
            "baseline_start": rfc3339(baseline_start), "compared": compared,
            "baseline_cost_eur": base_cost if compared else None,
            "baseline_co2_kg": base_g / 1000 if compared else None,
            "saved_cost_eur": base_cost - cost_eur if compared else None,
            "saved_co2_kg": (base_g - co2_g) / 1000 if compared else None,
            "signals": "+".join(sorted(bases))}


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the rows; the savings over the jobs run in full only (``compared_jobs``), each against its own
    run-now, so that both sides price the same jobs."""
    out: dict[str, Any] = {key: sum(r[key] for r in rows) for key in SUMS}
    compared = [r for r in rows if r["compared"]]
    out["jobs"], out["compared_jobs"] = len(rows), len(compared)
    out["baseline_cost_eur"] = sum(r["baseline_cost_eur"] for r in compared)
    out["baseline_co2_kg"] = sum(r["baseline_co2_kg"] for r in compared)
    out["saved_cost_eur"] = out["baseline_cost_eur"] - sum(r["cost_eur"] for r in compared)
    out["saved_co2_kg"] = out["baseline_co2_kg"] - sum(r["co2_kg"] for r in compared)
    out["saved_cost_pct"] = saving_pct(out["baseline_cost_eur"], out["baseline_cost_eur"] - out["saved_cost_eur"])
    out["saved_co2_pct"] = saving_pct(out["baseline_co2_kg"], out["baseline_co2_kg"] - out["saved_co2_kg"])
    return out


def saving_pct(baseline: float, result: float) -> float | None:
    """The saving as a percentage of the baseline, only where it means one: both sides above zero. Day-ahead prices
    go below zero on sunny, windy hours, so a cost can be negative; a saving across zero ("176%") is EUR only."""
    return round(100 * (baseline - result) / baseline, 2) if baseline > 0 and result >= 0 else None


def report(jobs: Sequence[FinishedJob], signals: Signals, devices: int) -> dict[str, Any]:
    """``jobs``: the finished jobs reported on; the run-now baseline queues them among themselves on ``devices``."""
    starts = run_now_starts(jobs, devices)
    rows = [job_report(job, signals, starts[job.id]) for job in sorted(jobs, key=lambda j: (j.finished_at, j.id))]
    users = {owner: totals([r for r in rows if r["owner"] == owner]) for owner in sorted({r["owner"] for r in rows})}
    return {"jobs": rows, "users": users, "total": totals(rows),
            "baseline": "run-now: the same measured energy, had each job run in its requested mode as soon as the "
                        "devices allowed after its submission (FIFO), priced on the same signals; savings over the "
                        "jobs that completed (a failed, cancelled or timed-out job is listed, not compared)"}


def from_store(store: Any, provider: Any, profiles: Any, since: datetime | None, until: datetime | None,
               user: str | None) -> dict[str, Any]:
    """`gsched report`: finished jobs (by their end) from the store, priced where they ran against run-now. One read
    of the signals for the whole span; each window is priced from it."""
    import bisect
    import json

    from scheduler.errors import InputError
    from scheduler.models import TERMINAL
    from scheduler.outcomes import spec_of
    from scheduler.profiles import mode_key
    from scheduler.timeutil import floor_to, parse_rfc3339

    devices = len(profiles.devices)
    jobs = [j for j in store.jobs(sorted(TERMINAL, key=lambda s: s.value))
            if j.finished_at is not None and (since is None or j.finished_at >= since)
            and (until is None or j.finished_at < until) and (user is None or j.owner_name == user)]
    runs = store.runs_of([j.id for j in jobs if j.id is not None])
    jobs = [j for j in jobs if runs.get(j.id or 0)]
    if not jobs:
        return report([], lambda a, b: (None, ""), devices)  # type: ignore[arg-type,return-value]
    span_start = floor_to(min(j.submitted_at for j in jobs), timedelta(hours=1))
    span_end = max(max(m.finished_at for m in runs[j.id or 0]) for j in jobs) + timedelta(hours=1)
    if span_end - span_start > timedelta(days=400):
        raise InputError("report: more than 400 days of jobs; narrow it with --since/--until")
    forecast = provider.forecast(span_start, span_end)
    points = provider.points(span_start, span_end)
    starts = [parse_rfc3339(p["start"]) for p in points]  # consecutive steps, in order
    trace = provider.name.startswith("trace:")

    def signals(start: datetime, end: datetime) -> tuple[Any, str]:
        if trace:
            return forecast, "trace"
        window = points[max(0, bisect.bisect_right(starts, start) - 1):bisect.bisect_left(starts, end)]
        if any(p.get("estimated") for p in window):
            return forecast, "estimated"
        return forecast, "realised" if window and all(p.get("realised") for p in window) else "forecast"

    finished = []
    for job in jobs:
        after: tuple[int, ...] = ()
        try:
            spec = spec_of(job)
        except Exception:  # an old record the model cannot read: the runs' own durations stand
            ratios, requested_gpus = {}, None
        else:
            ratios, requested_gpus = profiles.rate_ratios(job, spec)
            after = tuple(dep.job_id for dep in spec.after)
        finished.append(FinishedJob(
            job.id or 0, job.name, job.owner_name, job.state.value, job.submitted_at, job.finished_at,
            tuple(Run(m.started_at, m.finished_at, m.energy_j, m.energy_source,
                      ratios.get(mode_key(json.loads(m.mode_json)) if m.mode_json else None, 1.0))
                  for m in runs[job.id or 0]), requested_gpus or job.gpus or job.gpus_min, after))
    return report(finished, signals, devices)
