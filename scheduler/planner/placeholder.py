"""The placeholder planner: each job, in deadline order, takes the cheapest contiguous window before its
deadline at the largest requested device count that fits, within the capacity left by the jobs before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.planner.cost import slot_weights
from scheduler.timeutil import floor_to


@dataclass(frozen=True)
class PlanJob:
    id: int
    deadline: datetime
    gpus_min: int
    gpus_max: int
    duration_s_at: tuple[float, ...]  # estimated duration on 1, 2, ... gpus_max devices
    urgent: bool = False


@dataclass(frozen=True)
class Reservation:
    """Devices already taken: a running job's until its expected end."""

    gpus: int
    end: datetime


@dataclass(frozen=True)
class Signals:
    start: datetime  # aligned to the slot grid
    slot_s: int
    price_eur_per_mwh: list[float]
    carbon_g_per_kwh: list[float]


@dataclass(frozen=True)
class Assignment:
    job_id: int
    start: datetime
    end: datetime
    gpus: int
    reason: str
    meets_deadline: bool


def plan(jobs: list[PlanJob], signals: Signals, capacity: int, reservations: list[Reservation], now: datetime,
         carbon_price_eur_per_t: float, objective: str = "cost") -> list[Assignment]:
    slot = timedelta(seconds=signals.slot_s)
    grid0 = signals.start
    if grid0 != floor_to(now, slot):
        raise ValueError("signals must start at the slot holding now")
    horizon = len(signals.price_eur_per_mwh)
    weights = slot_weights(signals.price_eur_per_mwh, signals.carbon_g_per_kwh, carbon_price_eur_per_t, objective)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    free = [capacity] * horizon
    for r in reservations:
        last = max(1, math.ceil((r.end - grid0) / slot))
        for k in range(min(last, horizon)):
            free[k] -= r.gpus

    def fits(k: int, n: int, gpus: int) -> bool:
        return all(free[i] >= gpus for i in range(k, k + n))

    def clock(t: datetime) -> str:
        return t.strftime("%H:%M")

    out: list[Assignment] = []
    for job in sorted(jobs, key=lambda j: (not j.urgent, j.deadline, j.id)):
        deadline_slot = math.floor((job.deadline - grid0) / slot)
        best: tuple[float, int, int, int] | None = None  # (cost, start slot, gpus, slots)
        fallback: tuple[int, int, int] | None = None  # earliest start past the deadline
        for gpus in range(min(job.gpus_max, capacity), job.gpus_min - 1, -1):
            n = max(1, math.ceil(job.duration_s_at[gpus - 1] / signals.slot_s))
            for k in range(0, horizon - n + 1):
                if not fits(k, n, gpus):
                    continue
                if k + n > deadline_slot:
                    if fallback is None or k + n < fallback[0] + fallback[2]:
                        fallback = (k, gpus, n)
                    break
                cost = prefix[k + n] - prefix[k]
                # Prefix sums carry rounding noise: equal-priced windows must tie, and ties go to the earliest,
                # or the chosen window wanders from tick to tick.
                if best is None or cost < best[0] - 1e-9 * max(1.0, abs(best[0])):
                    best = (cost, k, gpus, n)
                if job.urgent:
                    break
            if best is not None:
                break
        if best is not None:
            cost, k, gpus, n = best
            now_cost = prefix[n] - prefix[0]
            start = max(grid0 + k * slot, now)
            end = start + timedelta(seconds=job.duration_s_at[gpus - 1])
            if k == 0:
                reason = "runs now (--now)" if job.urgent else "runs now: no cheaper window before its deadline"
            elif now_cost > 0 and cost < now_cost:
                unit = "gCO2" if objective == "carbon" else "cost"
                saving = 100 * (now_cost - cost) / now_cost
                reason = f"waits for {clock(start)}-{clock(grid0 + (k + n) * slot)} UTC, {saving:.0f}% lower {unit} than now"
            else:
                reason = f"waits for {clock(start)}-{clock(grid0 + (k + n) * slot)} UTC: devices are busy until then"
            meets = True
        elif fallback is not None:
            k, gpus, n = fallback
            start = max(grid0 + k * slot, now)
            end = start + timedelta(seconds=job.duration_s_at[gpus - 1])
            left_h = max(0.0, (job.deadline - now).total_seconds() / 3600)
            reason = (f"cannot meet its deadline: needs {job.duration_s_at[gpus - 1] / 3600:.1f} h on {gpus} "
                      f"device(s), {left_h:.1f} h left and devices busy; planned for its earliest finish")
            meets = False
        else:
            continue  # nothing fits in the horizon: stays PENDING, the daemon states why
        for i in range(k, k + n):
            free[i] -= gpus
        out.append(Assignment(job.id, start, end, gpus, reason, meets))
    return out
