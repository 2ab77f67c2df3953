from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest

from scheduler.errors import ProviderError
from scheduler.forecasts.trace import TraceProvider


def rows() -> list[dict[str, str]]:
    text = resources.files("scheduler.data").joinpath("trace_de_2023-06.csv").read_text()
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


def test_embedded_trace_keeps_weekday_and_hour() -> None:
    trace = rows()
    monday = datetime(2026, 11, 30, 13, 20, tzinfo=timezone.utc)  # a Monday
    forecast = TraceProvider().forecast(monday, monday + timedelta(hours=48))
    assert forecast.start == monday.replace(minute=0) and len(forecast.price_eur_per_mwh) == 49  # 13:00 .. 14:00 two days on
    # The trace starts on Monday 2023-06-05; whichever week it maps to, 13:00 on a Monday is row 13 + 168k.
    week = [i for i in range(13, len(trace), 168) if float(trace[i]["price_eur_per_mwh"]) ==
            forecast.price_eur_per_mwh[0] and float(trace[i]["carbon_g_per_kwh"]) == forecast.carbon_g_per_kwh[0]]
    assert week, "Monday 13:00 must replay a Monday 13:00 of the trace"
    assert forecast.price_eur_per_mwh[1] == float(trace[week[0] + 1]["price_eur_per_mwh"])


def test_trace_shows_real_daily_swings() -> None:
    forecast = TraceProvider().forecast(datetime(2026, 12, 1, tzinfo=timezone.utc),
                                        datetime(2026, 12, 8, tzinfo=timezone.utc))
    assert max(forecast.carbon_g_per_kwh) / min(forecast.carbon_g_per_kwh) > 2
    assert max(forecast.price_eur_per_mwh) - min(forecast.price_eur_per_mwh) > 100


def test_on_grid_averages_hours_into_slots() -> None:
    forecast = TraceProvider().forecast(datetime(2026, 12, 1, tzinfo=timezone.utc),
                                        datetime(2026, 12, 2, tzinfo=timezone.utc))
    start = datetime(2026, 12, 1, 0, 30, tzinfo=timezone.utc)
    prices, carbon = forecast.on_grid(start, 3600, 2)
    assert prices[0] == pytest.approx((forecast.price_eur_per_mwh[0] + forecast.price_eur_per_mwh[1]) / 2)
    quarter, _ = forecast.on_grid(start, 900, 4)
    assert quarter[:2] == [forecast.price_eur_per_mwh[0]] * 2


def test_bad_trace_is_a_provider_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("start_utc,price\n2023-06-05T00:00:00Z,1\n")
    with pytest.raises(ProviderError, match="bad trace"):
        TraceProvider(path)
