"""Commands that work without a daemon: `gsched plan` and `gsched forecast --fetch`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.errors import InputError
from scheduler.planner.baselines import BASELINES
from scheduler.planner.problem import evaluate, plan_to_json, problem_from_json
from scheduler.planner.solve import solve

if TYPE_CHECKING:
    from scheduler.config import Config


def plan_file(problem_path: Path, output: Path, time_limit_s: float, compare: bool, plot: Path | None = None
              ) -> dict[str, Any]:
    try:
        data = json.loads(problem_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{problem_path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{problem_path}: not readable JSON ({exc})") from None
    if time_limit_s <= 0:
        raise InputError("--time-limit: must be > 0")
    problem = problem_from_json(data, str(problem_path))
    solution = solve(problem, time_limit_s)
    evaluation = evaluate(problem, solution.plan)
    document = plan_to_json(solution.plan)
    document.update(objective=evaluation.objective, cost_eur=evaluation.cost_eur, energy_kwh=evaluation.energy_kwh,
                    co2_g=evaluation.co2_g, late=solution.late, unplanned=solution.unplanned)
    output.write_text(json.dumps(document, indent=1))
    if plot is not None:
        from scheduler.plots import plan_png

        plan_png(problem, solution.plan, plot)
    summary: dict[str, Any] = {
        "jobs": len(problem.jobs), "method": solution.stats.get("method"), "solve_s": solution.stats["solve_s"],
        "objective": evaluation.objective, "objective_unit": "gCO2" if problem.objective == "carbon" else "EUR",
        "cost_eur": evaluation.cost_eur, "energy_kwh": evaluation.energy_kwh, "co2_kg": evaluation.co2_g / 1000,
        "bound": solution.bound, "gap_to_bound": solution.stats.get("gap_to_bound"),
        "late": solution.late, "unplanned": solution.unplanned, "phases": solution.phases,
    }
    if compare:
        summary["baselines"] = {}
        for name, policy in BASELINES.items():
            other = evaluate(problem, policy(problem))
            late = sum(1 for job in problem.jobs if _late(other.jobs[job.id].finish_h if other.jobs[job.id].finished
                                                          else None, job.deadline_slot * problem.slot_h))
            summary["baselines"][name] = {
                "objective": other.objective, "cost_eur": other.cost_eur, "co2_kg": other.co2_g / 1000,
                "late_jobs": late,
                "saving_pct": 100 * (other.objective - evaluation.objective) / abs(other.objective)
                if other.objective else 0.0,
            }
    return summary


def _late(finish_h: float | None, deadline_h: float) -> bool:
    return finish_h is None or finish_h > deadline_h + 1e-9


def fetch_forecast(config: "Config", hours: float) -> dict[str, Any]:
    """Fetch once from the configured providers into a throwaway cache, as the daemon would."""
    import tempfile
    from datetime import datetime, timedelta, timezone

    from scheduler.forecasts.service import ForecastService
    from scheduler.service import forecast_provider
    from scheduler.store import Store
    from scheduler.timeutil import rfc3339

    if not config.forecast.providers:
        raise InputError(f"{config.source}: no [[forecast.providers]] to fetch from")
    with tempfile.TemporaryDirectory(prefix="gsched-forecast-") as tmp:
        store = Store(Path(tmp) / "cache.db")
        now = datetime.now(timezone.utc)
        service = forecast_provider(config, store, lambda: now)
        assert isinstance(service, ForecastService)
        service.refresh()
        points = service.points(now, now + timedelta(hours=hours))
        store.close()
    # the daemon's /v1/forecast shape: RFC 3339 times; "error" is why no provider answered
    failed = [s for s in service.status.values() if not s.ok]
    return {"currency": config.forecast.currency, "points": points,
            "providers": [vars(status) | {"fetched_at": rfc3339(status.fetched_at) if status.fetched_at else None}
                          for status in service.status.values()],
            "error": "; ".join(f"{s.name}: {s.error}" for s in failed) if len(failed) == len(service.status) else None}
