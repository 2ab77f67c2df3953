"""UK Carbon Intensity API (NESO): national or regional 48 h forecast, gCO2/kWh per half hour, no key.

National: /intensity/{from}/fw48h -> {"data": [{from, to, intensity: {forecast, actual, index}}]}.
Regional: /regional/intensity/{from}/fw48h/regionid/{id} -> {"data": {regionid, shortname, data: [...]}}
(also {"data": [ {..., data: [...]} ]}); generationmix, when present, gives the renewable share
(wind + solar + hydro + biomass).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points, utc

RENEWABLE_FUELS = {"wind", "solar", "hydro", "biomass"}


def parse(body: Any, what: str = "uk-carbon-intensity") -> list[Series]:
    try:
        data = body["data"]
        if isinstance(data, dict):
            data = data["data"]
        elif data and isinstance(data[0], dict) and "data" in data[0]:
            data = data[0]["data"]
        carbon, share = [], []
        for row in data:
            t = utc(row["from"])
            carbon.append((t, float(row["intensity"]["forecast"]) if row["intensity"]["forecast"] is not None
                           else None))
            if row.get("generationmix"):
                share.append((t, sum(float(f["perc"]) for f in row["generationmix"] if f["fuel"] in RENEWABLE_FUELS)))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    out = [from_points(what, "carbon", carbon, 1800)]
    if share:
        out.append(from_points(what, "renewable_share", share, 1800))
    return out


class UkCarbonIntensity(HttpProvider):
    kind = "uk-carbon-intensity"
    default_url = "https://api.carbonintensity.org.uk"

    def region(self) -> str:
        return f"region{self.settings.regionid}" if self.settings.regionid else ""

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        stamp = start.strftime("%Y-%m-%dT%H:%MZ")
        path = (f"/regional/intensity/{stamp}/fw48h/regionid/{self.settings.regionid}" if self.settings.regionid
                else f"/intensity/{stamp}/fw48h")
        return parse(self.get_json(path, headers={"Accept": "application/json"}), self.name)
