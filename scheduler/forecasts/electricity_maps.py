"""Electricity Maps v3: carbon-intensity forecast for a zone (gCO2eq/kWh), key in the ``auth-token`` header.

/carbon-intensity/forecast?zone=DE -> {zone, forecast: [{carbonIntensity, datetime}], updatedAt}. The free
tier has no forecast; then /carbon-intensity/history?zone= ({zone, history: [...]}) still gives the past
24 h, which horizon extension turns into an estimate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from scheduler.config import ProviderSettings
from scheduler.errors import ProviderError
from scheduler.forecasts.credentials import secret
from scheduler.forecasts.http import get_json
from scheduler.forecasts.series import Series, from_points, utc


def parse(body: Any, what: str = "electricity-maps") -> Series:
    try:
        rows = body["forecast"] if "forecast" in body else body["history"]
        points = [(utc(r["datetime"]), None if r["carbonIntensity"] is None else float(r["carbonIntensity"]))
                  for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    return from_points(what, "carbon", points)


class ElectricityMaps:
    kind = "electricity-maps"
    default_url = "https://api.electricitymaps.com/v3"

    def __init__(self, settings: ProviderSettings, client: httpx.Client, retries: int) -> None:
        self.settings, self.client, self.retries = settings, client, retries
        self.name = f"{self.kind}:{settings.zone}"

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        base = (self.settings.base_url or self.default_url).rstrip("/")
        headers = {"auth-token": secret(self.settings.token_env, self.settings.token_file, self.name)}
        body = get_json(self.client, f"{base}/carbon-intensity/forecast", params={"zone": self.settings.zone},
                        headers=headers, what=self.name, timeout_s=self.settings.timeout_s, retries=self.retries)
        return [parse(body, self.name)]
