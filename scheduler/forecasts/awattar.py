"""aWATTar market data (DE, AT), no key: /v1/marketdata?start=&end= (epoch ms) ->
{object: "list", data: [{start_timestamp, end_timestamp (ms UTC), marketprice, unit: "Eur/MWh"}]}."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import httpx

from scheduler.config import ProviderSettings
from scheduler.errors import ProviderError
from scheduler.forecasts.http import get_json
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


class Awattar:
    kind = "awattar"

    def __init__(self, settings: ProviderSettings, client: httpx.Client, retries: int) -> None:
        self.settings, self.client, self.retries = settings, client, retries
        self.name = f"{self.kind}:{settings.market or 'de'}"

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        base = (self.settings.base_url or f"https://api.awattar.{self.settings.market or 'de'}").rstrip("/")
        body = get_json(self.client, f"{base}/v1/marketdata",
                        params={"start": int(start.timestamp() * 1000), "end": int(end.timestamp() * 1000)},
                        what=self.name, timeout_s=self.settings.timeout_s, retries=self.retries)
        return [parse(body, self.name)]
