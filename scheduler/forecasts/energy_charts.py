"""Energy-Charts (Fraunhofer ISE), no key: day-ahead price per bidding zone and the renewable-share forecast.

/price?bzn=DE-LU&start=&end= -> {unix_seconds: [...], price: [...], unit: "EUR / MWh"} (15-minute since
October 2025, hourly before). /ren_share_forecast?country=de -> {unix_seconds, ren_share (% of load), ...};
it sometimes answers 200 with empty arrays, which counts as an empty forecast.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points


def _pairs(body: Any, key: str, what: str) -> list[tuple[datetime, float | None]]:
    try:
        stamps, values = body["unix_seconds"], body[key]
        if len(stamps) != len(values):
            raise ValueError(f"{len(stamps)} times but {len(values)} values")
        return [(datetime.fromtimestamp(int(t), timezone.utc), None if v is None else float(v))
                for t, v in zip(stamps, values)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None


def parse_price(body: Any, what: str = "energy-charts") -> Series:
    unit = str(body.get("unit", "EUR / MWh")) if isinstance(body, dict) else ""
    if unit.replace(" ", "").upper() != "EUR/MWH":
        raise ProviderError(f"{what}: price unit {unit!r}, expected 'EUR / MWh'")
    return from_points(what, "price", _pairs(body, "price", what), currency="EUR", hold=True)


def parse_share(body: Any, what: str = "energy-charts") -> Series:
    return from_points(what, "renewable_share", _pairs(body, "ren_share", what))


class EnergyCharts(HttpProvider):
    kind = "energy-charts"
    default_url = "https://api.energy-charts.info"

    def region(self) -> str:
        return self.settings.bzn or self.settings.country or "DE-LU"

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        wanted = self.settings.signals or ("price", "renewable_share")
        out = []
        if "price" in wanted:
            body = self.get_json("/price", params={"bzn": self.settings.bzn or "DE-LU",
                                                   "start": start.strftime("%Y-%m-%dT%H:%MZ"),
                                                   "end": end.strftime("%Y-%m-%dT%H:%MZ")})
            out.append(parse_price(body, self.name))
        if "renewable_share" in wanted:
            body = self.get_json("/ren_share_forecast", params={"country": self.settings.country or "de"})
            out.append(parse_share(body, self.name))
        return out
