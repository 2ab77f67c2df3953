"""Octopus Energy Agile: standard unit rates for a product and tariff, no key.

/v1/products/{product}/electricity-tariffs/{tariff}/standard-unit-rates/?period_from=&period_to= ->
{count, next, results: [{value_exc_vat, value_inc_vat (p/kWh), valid_from, valid_to}]}, newest first,
30-minute slots. Pence per kWh excluding VAT become GBP/MWh (x 10).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points, utc

GBP_PER_MWH_PER_P_PER_KWH = 10.0


def parse(body: Any, what: str = "octopus") -> Series:
    try:
        points = [(utc(r["valid_from"]), float(r["value_exc_vat"]) * GBP_PER_MWH_PER_P_PER_KWH)
                  for r in body["results"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    return from_points(what, "price", points, 1800, currency="GBP", hold=True)


class Octopus(HttpProvider):
    kind = "octopus"
    default_url = "https://api.octopus.energy"

    def region(self) -> str:
        return self.settings.tariff

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        path = (f"/v1/products/{self.settings.product}/electricity-tariffs/{self.settings.tariff}"
                "/standard-unit-rates/")
        body = self.get_json(path, params={"period_from": start.strftime("%Y-%m-%dT%H:%MZ"),
                                           "period_to": end.strftime("%Y-%m-%dT%H:%MZ")})
        return [parse(body, self.name)]
