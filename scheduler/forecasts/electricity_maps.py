"""Electricity Maps v3: carbon-intensity forecast for a zone (gCO2eq/kWh), key in the ``auth-token`` header.

/carbon-intensity/forecast?zone=DE -> {zone, forecast: [{carbonIntensity, datetime}], updatedAt}. The free
tier has no forecast; then /carbon-intensity/history?zone= ({zone, history: [...]}) still gives the past
24 h, which horizon extension turns into an estimate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.credentials import secret
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points, utc


def parse(body: Any, what: str = "electricity-maps") -> Series:
    try:
        rows = body["forecast"] if "forecast" in body else body["history"]
        points = [(utc(r["datetime"]), None if r["carbonIntensity"] is None else float(r["carbonIntensity"]))
                  for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    return from_points(what, "carbon", points)


class ElectricityMaps(HttpProvider):
    kind = "electricity-maps"
    default_url = "https://api.electricitymaps.com/v3"

    def region(self) -> str:
        return self.settings.zone

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        token = secret(self.settings.token_env, self.settings.token_file, self.name)
        body = self.get_json("/carbon-intensity/forecast", params={"zone": self.settings.zone},
                             headers={"auth-token": token})
        return [parse(body, self.name)]
