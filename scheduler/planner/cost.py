"""Pricing a finished run: its measured energy spread over the run, priced step by step. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from scheduler.forecasts.base import Forecast

J_PER_KWH = 3.6e6


def run_cost(energy_j: float, start: datetime, end: datetime, forecast: Forecast) -> tuple[float, float]:
    """(cost_eur, co2_g) of ``energy_j`` drawn evenly over [start, end), priced step by step."""
    duration_s = (end - start).total_seconds()
    if duration_s <= 0:
        i = forecast.index_at(start)
        kwh = energy_j / J_PER_KWH
        return kwh * forecast.price_eur_per_mwh[i] / 1000, kwh * forecast.carbon_g_per_kwh[i]
    cost_eur = co2_g = 0.0
    t = start
    while t < end:
        i = forecast.index_at(t)
        step_end = forecast.start + timedelta(seconds=(i + 1) * forecast.step_s)
        nxt = min(end, step_end) if step_end > t else end
        kwh = energy_j * (nxt - t).total_seconds() / duration_s / J_PER_KWH
        cost_eur += kwh * forecast.price_eur_per_mwh[i] / 1000
        co2_g += kwh * forecast.carbon_g_per_kwh[i]
        t = nxt
    return cost_eur, co2_g
