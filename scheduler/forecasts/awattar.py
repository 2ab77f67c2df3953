"""aWATTar market data (DE, AT), no key: /v1/marketdata?start=&end= (epoch ms) ->
{object: "list", data: [{start_timestamp, end_timestamp (ms UTC), marketprice, unit: "Eur/MWh"}]}."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from scheduler.errors import ProviderError
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points


def parse(body: Any, what: str = "awattar") -> Series:
    try:
        rows = body["data"]
        points = []
        for r in rows:
            if str(r.get("unit", "Eur/MWh")).lower() != "eur/mwh":
                raise ProviderError(f"{what}: unit {r.get('unit')!r}, expected 'Eur/MWh'")
            points.append((datetime.fromtimestamp(r["start_timestamp"] / 1000, timezone.utc), float(r["marketprice"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected body ({exc!r})") from None
    return from_points(what, "price", points, currency="EUR", hold=True)


class Awattar(HttpProvider):
    kind = "awattar"

    def region(self) -> str:
        return self.settings.market or "de"

    def url(self, path: str = "") -> str:
        base = self.settings.base_url or f"https://api.awattar.{self.region()}"
        return base.rstrip("/") + path

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        body = self.get_json("/v1/marketdata", params={"start": int(start.timestamp() * 1000),
                                                       "end": int(end.timestamp() * 1000)})
        return [parse(body, self.name)]
