"""WattTime v3: log in for a bearer token, then the marginal-emissions (MOER) forecast for a region.

/login (HTTP basic auth) -> {"token"}; /v3/forecast?region=&signal_type=co2_moer -> {data: [{point_time,
value}], meta: {units: "lbs_co2_per_mwh", data_point_period_seconds}}. /v3/forecast/historical nests the
points as data[].forecast. MOER in lbs/MWh is converted: 1 lb/MWh = 0.45359237 g/kWh.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.credentials import secret
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points, utc

G_PER_KWH_PER_LB_PER_MWH = 0.45359237


def parse(body: Any, what: str = "watttime") -> Series:
    try:
        meta = body["meta"]
        units = meta.get("units")
        if units != "lbs_co2_per_mwh":
            raise ProviderError(f"{what}: units {units!r}, expected 'lbs_co2_per_mwh'")
        rows = body["data"]
        if rows and "forecast" in rows[0]:
            rows = rows[-1]["forecast"]  # the latest forecast of the historical endpoint
        points = [(utc(r["point_time"]), float(r["value"]) * G_PER_KWH_PER_LB_PER_MWH) for r in rows]
        step_s = int(meta.get("data_point_period_seconds") or 300)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    return from_points(what, "carbon", points, step_s)


class WattTime(HttpProvider):
    kind = "watttime"
    default_url = "https://api.watttime.org"

    def region(self) -> str:
        return self.settings.region

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        user = secret(self.settings.username_env, "", self.name)
        password = secret(self.settings.password_env, self.settings.token_file, self.name)
        login = self.get_json("/login", auth=(user, password))
        try:
            token = login["token"]
        except (KeyError, TypeError):
            raise ProviderError(f"{self.name}: login answered without a token") from None
        body = self.get_json("/v3/forecast", params={"region": self.settings.region, "signal_type": "co2_moer"},
                             headers={"Authorization": f"Bearer {token}"})
        return [parse(body, self.name)]
