"""Forecasts from the configured providers: fetched on a schedule, cached in the database, combined.

For each signal and each 15-minute step the service takes, in order:
1. the highest-priority provider (lowest ``priority``) whose cached data covers the step; it is flagged
   stale when fetched more than ``forecast.stale_after_hours`` ago;
2. for carbon only, an intensity derived from a provider's renewable share:
   share x ``renewable_g_per_kwh`` + (1 - share) x ``fossil_g_per_kwh`` (estimated);
3. beyond every provider's horizon, the median of the same time of day over the stored past week (estimated);
4. else nothing: the planner then treats that step as costing the same as any other.
Prices are converted to the report currency (``forecast.currency``) with ``[forecast.rates]``.
A failing provider (outage, bad body, wrong key) is logged once per distinct error and shown by
`gsched forecast`; it never stops the daemon.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from scheduler.config import ForecastSettings, ProviderSettings
from scheduler.errors import ConfigError, GschedError, ProviderError
from scheduler.forecasts.base import Forecast
from scheduler.forecasts.series import Series
from scheduler.store import Store
from scheduler.timeutil import floor_to, rfc3339

log = logging.getLogger("gsched.forecast")
STEP = timedelta(minutes=15)
SIGNAL_COLUMNS = {"price": "price_per_mwh", "carbon": "carbon_g_per_kwh", "renewable_share": "renewable_share_pct"}
QUOTED_CURRENCY = {"octopus": "GBP"}  # every other kind quotes EUR (ENTSO-E says so per document)


def build_provider(settings: ProviderSettings, client: httpx.Client, retries: int) -> Any:
    from scheduler.forecasts import awattar, electricity_maps, energy_charts, entsoe, octopus, uk_carbon_intensity
    from scheduler.forecasts import watttime
    from scheduler.forecasts.trace import TraceFileProvider

    kinds = {"uk-carbon-intensity": uk_carbon_intensity.UkCarbonIntensity, "energy-charts": energy_charts.EnergyCharts,
             "electricity-maps": electricity_maps.ElectricityMaps, "watttime": watttime.WattTime,
             "entsoe": entsoe.Entsoe, "awattar": awattar.Awattar, "octopus": octopus.Octopus,
             "file": TraceFileProvider}
    return kinds[settings.kind](settings, client, retries)


@dataclass
class ProviderStatus:
    name: str
    ok: bool | None = None  # None: not fetched yet
    error: str | None = None
    fetched_at: datetime | None = None


class ForecastService:
    def __init__(self, settings: ForecastSettings, store: Store, client: httpx.Client,
                 clock: Callable[[], datetime], horizon: timedelta = timedelta(hours=48)) -> None:
        self.settings, self.store, self.clock, self.horizon = settings, store, clock, horizon
        self.rates = dict(settings.rates)
        self.rates[settings.currency] = 1.0
        ordered = sorted(settings.providers, key=lambda p: p.priority)
        self.providers = [(p, build_provider(p, client, settings.retries)) for p in ordered]
        for p, _provider in self.providers:
            quoted = QUOTED_CURRENCY.get(p.kind, "EUR")
            if ("price" in (p.signals or ("price",))) and p.kind != "uk-carbon-intensity" and quoted not in self.rates:
                raise ConfigError(f"forecast: provider {p.kind} quotes {quoted} but forecast.currency is "
                                  f"{settings.currency} and [forecast.rates] has no {quoted}")
        self.status = {provider.name: ProviderStatus(provider.name) for _p, provider in self.providers}
        self.name = "+".join(provider.name for _p, provider in self.providers)

    # --- fetching ------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fetch every provider once; True when any new data arrived."""
        now = self.clock()
        changed = False
        for settings, provider in self.providers:
            status = self.status[provider.name]
            try:
                series_list = provider.fetch(floor_to(now, timedelta(hours=1)) - timedelta(hours=1), now + self.horizon)
                for series in series_list:
                    if settings.signals and series.signal not in settings.signals:
                        continue
                    self._save(provider.name, series, now)
                    changed = True
            except GschedError as exc:  # ProviderError, or a credential/config problem found at fetch time
                if status.error != str(exc):
                    log.warning("forecast provider %s failed: %s", provider.name, exc)
                status.ok, status.error = False, str(exc)
                continue
            if status.ok is False:
                log.info("forecast provider %s recovered", provider.name)
            status.ok, status.error, status.fetched_at = True, None, now
        return changed

    def _save(self, name: str, series: Series, now: datetime) -> None:
        values: list[float | None] = list(series.values)
        if series.signal == "price":
            rate = self.rates.get(series.currency or "EUR")
            if rate is None:
                raise ProviderError(f"{name}: prices in {series.currency}, no rate to {self.settings.currency}")
            values = [None if v is None else v * rate for v in values]
        self.store.save_series(name, series.signal, series.start, series.step_s, values, self.settings.currency, now)

    # --- combining -----------------------------------------------------------------------------------

    def _table(self, signal: str, start: datetime, end: datetime) -> dict[str, dict[datetime, tuple[float, datetime]]]:
        """provider -> step start -> (value, fetched_at), on the 15-minute grid (time-weighted means)."""
        out: dict[str, dict[datetime, list[tuple[float, float, datetime]]]] = {}
        for point in self.store.forecast_points(signal, start - timedelta(days=7), end):
            if point.value is None:
                continue
            t, t_end = point.start, point.start + timedelta(seconds=point.step_s)
            step = floor_to(t, STEP)
            while step < t_end:
                overlap = (min(t_end, step + STEP) - max(t, step)).total_seconds()
                out.setdefault(point.provider, {}).setdefault(step, []).append((point.value, overlap, point.fetched_at))
                step += STEP
        return {provider: {step: (sum(v * w for v, w, _f in parts) / sum(w for _v, w, _f in parts),
                                  min(f for _v, _w, f in parts)) for step, parts in steps.items()}
                for provider, steps in out.items()}

    def points(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        now = self.clock()
        stale_before = now - timedelta(hours=self.settings.stale_after_hours)
        order = [provider.name for _p, provider in self.providers]
        steps = []
        t = floor_to(start, STEP)
        while t < end:
            steps.append(t)
            t += STEP
        tables = {signal: self._table(signal, steps[0], end) for signal in SIGNAL_COLUMNS}
        out = []
        for step in steps:
            point: dict[str, Any] = {"start": rfc3339(step), "end": rfc3339(step + STEP), "source": None,
                                     "estimated": False, "stale": False, "realised": True}
            sources = []
            for signal, column in SIGNAL_COLUMNS.items():
                value, source, estimated, stale, fetched = self._pick(tables[signal], order, step, stale_before)
                if value is None and signal == "carbon":
                    share, source, _e, stale, fetched = self._pick(tables["renewable_share"], order, step,
                                                                   stale_before)
                    if share is not None:
                        value = (share * self.settings.renewable_g_per_kwh
                                 + (100 - share) * self.settings.fossil_g_per_kwh) / 100
                        source, estimated = f"derived:{source}", True
                point[column] = value
                if value is not None:
                    # fetched after the step had ended: the provider's value for what happened, not a forecast
                    point["realised"] = point["realised"] and fetched is not None and fetched >= step + STEP
                    sources.append(source)
                    point["estimated"] = point["estimated"] or estimated
                    point["stale"] = point["stale"] or stale
            point["source"] = "+".join(dict.fromkeys(sources)) if sources else "none"
            point["realised"] = point["realised"] and bool(sources)
            out.append(point)
        return out

    @staticmethod
    def _pick(table: dict[str, dict[datetime, tuple[float, datetime]]], order: list[str], step: datetime,
              stale_before: datetime) -> tuple[float | None, str, bool, bool, datetime | None]:
        for name in order:
            hit = table.get(name, {}).get(step)
            if hit is not None:
                return hit[0], name, False, hit[1] < stale_before, hit[1]
        # Beyond the horizon: the median of the same time of day over the stored past week, any provider.
        same_time = [hit[0] for name in order for day in range(1, 8)
                     if (hit := table.get(name, {}).get(step - timedelta(days=day))) is not None]
        if same_time:
            return statistics.median(same_time), "extension", True, False, None
        return None, "none", False, False, None

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        """The planner's view: price and carbon per 15 minutes; steps with no data cost the same as the rest."""
        points = self.points(start, end)
        prices = [p["price_per_mwh"] for p in points]
        carbons = [p["carbon_g_per_kwh"] for p in points]
        if all(v is None for v in prices) and all(v is None for v in carbons):
            raise ProviderError(f"no forecast data from {self.name or 'any provider'}")
        fill_price = statistics.median([v for v in prices if v is not None] or [0.0])
        fill_carbon = statistics.median([v for v in carbons if v is not None] or [0.0])
        return Forecast(floor_to(start, STEP), int(STEP.total_seconds()),
                        tuple(fill_price if v is None else v for v in prices),
                        tuple(fill_carbon if v is None else v for v in carbons),
                        tuple(p["renewable_share_pct"] for p in points), self.name,
                        any(p["estimated"] for p in points))
