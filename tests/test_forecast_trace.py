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


def quarter_hour_trace(tmp_path: Path, start: datetime, steps: int) -> Path:
    """A quarter-hourly trace (as European day-ahead prices have been since October 2025) from ``start``, each
    value naming its own step: the price is the step's minutes since ``start``, the carbon its minute of the day."""
    lines = ["start_utc,price_eur_per_mwh,carbon_g_per_kwh,renewable_share_pct"]
    for k in range(steps):
        at = start + timedelta(minutes=15 * k)
        lines.append(f"{at:%Y-%m-%dT%H:%M:%SZ},{15 * k},{at.hour * 60 + at.minute},")
    path = tmp_path / "quarter.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_quarter_hourly_trace_of_any_length_from_any_hour(tmp_path: Path) -> None:
    start = datetime(2025, 10, 8, 5, 0, tzinfo=timezone.utc)  # a Wednesday, 05:00: not a week's start
    provider = TraceProvider(quarter_hour_trace(tmp_path, start, 3 * 96 + 8))  # three days and two hours
    # dates the trace covers get their own values, at its own step
    inside = provider.forecast(start + timedelta(hours=1, minutes=20), start + timedelta(hours=2))
    assert inside.step_s == 900 and inside.start == start + timedelta(hours=1, minutes=15)
    assert inside.price_eur_per_mwh == (75.0, 90.0, 105.0)
    # any other date: the same time of day (the trace is shorter than a week, so it repeats in whole days)
    later = datetime(2026, 12, 5, 13, 30, tzinfo=timezone.utc)
    outside = provider.forecast(later, later + timedelta(hours=30))
    assert outside.start == later and len(outside.carbon_g_per_kwh) == 120
    assert [c for c in outside.carbon_g_per_kwh[:3]] == [810.0, 825.0, 840.0]  # 13:30, 13:45, 14:00
    assert outside.carbon_g_per_kwh[-1] == (13 * 60 + 30 + 29 * 60 + 45) % 1440
    # the planner's slots average the quarter hours
    hourly, _ = outside.on_grid(later.replace(minute=0), 3600, 2)
    assert hourly[1] == pytest.approx(sum(inside_price for inside_price in outside.price_eur_per_mwh[2:6]) / 4)


def test_hourly_trace_from_any_hour_keeps_weekday(tmp_path: Path) -> None:
    start = datetime(2023, 6, 7, 9, tzinfo=timezone.utc)  # a Wednesday, 09:00; eight days of hours
    lines = ["start_utc,price_eur_per_mwh,carbon_g_per_kwh"] + [
        f"{start + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ},{h},{(start + timedelta(hours=h)).weekday()}"
        for h in range(8 * 24)]
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    provider = TraceProvider(tmp_path / "h.csv")
    friday = datetime(2026, 12, 4, 10, tzinfo=timezone.utc)
    f = provider.forecast(friday, friday + timedelta(days=3))
    assert f.step_s == 3600 and {f.carbon_g_per_kwh[0], f.carbon_g_per_kwh[24], f.carbon_g_per_kwh[48]} == {4.0,
                                                                                                        5.0, 6.0}
    assert f.carbon_g_per_kwh[:3] == (4.0, 4.0, 4.0) and f.carbon_g_per_kwh[14] == 5.0  # midnight: Saturday


def test_a_trace_row_off_its_step_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text("# a comment\nstart_utc,price_eur_per_mwh,carbon_g_per_kwh\n2025-10-08T05:00:00Z,1,2\n"
                    "2025-10-08T05:15:00Z,1,2\n2025-10-08T05:45:00Z,1,2\n")
    with pytest.raises(ProviderError, match=r"gap.csv:5: start_utc 2025-10-08T05:45:00Z is off"):
        TraceProvider(path)
    path.write_text("start_utc,price_eur_per_mwh,carbon_g_per_kwh\n2025-10-08T05:00:00Z,1,2\n"
                    "2025-10-08T05:15:00Z,cheap,2\n")
    with pytest.raises(ProviderError, match=r"gap.csv:3: bad trace row"):
        TraceProvider(path)
