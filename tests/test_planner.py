from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from scheduler.forecasts.base import Forecast
from scheduler.planner.cost import run_cost
from scheduler.planner.placeholder import PlanJob, Reservation, Signals, plan

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=timezone.utc)
GRID = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
SLOT_S = 900


def signals(prices: list[float], carbon: list[float] | None = None) -> Signals:
    return Signals(GRID, SLOT_S, prices, carbon or [0.0] * len(prices))


def job(job_id: int, slots: float, deadline_slots: int, gpus: int = 1, gpus_max: int | None = None,
        urgent: bool = False) -> PlanJob:
    top = gpus_max or gpus
    return PlanJob(job_id, GRID + timedelta(seconds=deadline_slots * SLOT_S), gpus, top,
                   tuple(slots * SLOT_S for _ in range(top)), urgent)


def test_takes_the_cheapest_window_before_the_deadline() -> None:
    prices = [100, 90, 20, 10, 30, 5, 5, 100]
    [a] = plan([job(1, 2, 6)], signals(prices), 1, [], NOW, 0.0)
    assert a.start == GRID + timedelta(seconds=2 * SLOT_S)  # slots 2-3 (30) beat 5-6 (past the deadline)
    assert "lower cost than now" in a.reason and a.meets_deadline


def test_capacity_is_shared_and_running_jobs_hold_devices() -> None:
    prices = [50, 10, 10, 50, 50, 50]
    reservations = [Reservation(1, GRID + timedelta(seconds=2 * SLOT_S))]
    out = plan([job(1, 1, 6), job(2, 1, 6)], signals(prices), 2, reservations, NOW, 0.0)
    starts = sorted((a.start - GRID).total_seconds() / SLOT_S for a in out)
    assert starts == [1, 2]  # one device free in slots 0-1, both in slot 2 onwards


def test_urgent_runs_now_even_when_later_is_cheaper() -> None:
    [a] = plan([job(1, 1, 8, urgent=True)], signals([100, 1, 1, 1, 1, 1, 1, 1]), 1, [], NOW, 0.0)
    assert a.start == NOW and a.reason == "runs now (--now)"


def test_carbon_price_moves_the_choice() -> None:
    prices, carbon = [50, 55], [500, 50]
    assert plan([job(1, 1, 2)], signals(prices, carbon), 1, [], NOW, 0.0)[0].start == NOW
    later = plan([job(1, 1, 2)], signals(prices, carbon), 1, [], NOW, 100.0)[0]
    assert later.start == GRID + timedelta(seconds=SLOT_S)
    assert plan([job(1, 1, 2)], signals(prices, carbon), 1, [], NOW, 0.0, objective="carbon")[0].start > NOW


def test_infeasible_deadline_is_explained_and_still_planned() -> None:
    reservations = [Reservation(2, GRID + timedelta(seconds=4 * SLOT_S))]
    [a] = plan([job(1, 2, 3, gpus=2)], signals([1.0] * 12), 2, reservations, NOW, 0.0)
    assert not a.meets_deadline and "cannot meet its deadline" in a.reason
    assert a.start == GRID + timedelta(seconds=4 * SLOT_S)


def test_range_falls_back_to_fewer_devices() -> None:
    reservations = [Reservation(1, GRID + timedelta(hours=10))]
    [a] = plan([job(1, 1, 4, gpus=1, gpus_max=2)], signals([1.0] * 8), 2, reservations, NOW, 0.0)
    assert a.gpus == 1


def test_signals_must_be_aligned_to_now() -> None:
    with pytest.raises(ValueError):
        plan([], Signals(GRID - timedelta(hours=1), SLOT_S, [1.0], [1.0]), 1, [], NOW, 0.0)


def test_run_cost_splits_energy_across_steps() -> None:
    forecast = Forecast(GRID, 3600, (100.0, 300.0), (200.0, 400.0), (None, None), "test")
    # 3.6 MJ = 1 kWh, evenly over 12:30-13:30: half a kWh at each step's price.
    cost, co2 = run_cost(3.6e6, GRID + timedelta(minutes=30), GRID + timedelta(minutes=90), forecast)
    assert cost == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)
    assert co2 == pytest.approx(0.5 * 200 + 0.5 * 400)


def test_equal_windows_tie_to_the_earliest_and_stay_put_as_time_passes() -> None:
    prices = [90.0] * 4 + [0.1 + 0.2] * 8 + [90.0] * 4  # 0.30000000000000004: rounding bait
    first = plan([job(1, 2, 16)], signals(prices), 1, [], NOW, 0.0)[0]
    assert first.start == GRID + timedelta(seconds=4 * SLOT_S)
    for k in range(1, 5):  # replanning later, the window must not drift right
        later = GRID + timedelta(seconds=k * SLOT_S)
        again = plan([PlanJob(1, GRID + timedelta(seconds=16 * SLOT_S), 1, 1, (2 * SLOT_S,))],
                     Signals(later, SLOT_S, prices[k:], [0.0] * (16 - k)), 1, [], later, 0.0)[0]
        assert again.start == first.start
