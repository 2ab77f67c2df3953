"""ENTSO-E Transparency Platform: A44 day-ahead prices (XML) for a bidding-zone EIC code, security token.

TimeSeries/Period/{timeInterval{start,end}, resolution PT15M|PT60M, Point{position (1-based),
price.amount}}, currency_Unit.name EUR, price_Measure_Unit.name MWH. Curve type A03 omits a position
whose price repeats the one before: those are forward-filled. Namespaces differ by version (7:0, 7:3).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

from scheduler.errors import ProviderError
from scheduler.forecasts.credentials import secret
from scheduler.forecasts.http import HttpProvider
from scheduler.forecasts.series import Series, from_points, utc

RESOLUTION_S = {"PT15M": 900, "PT30M": 1800, "PT60M": 3600}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(xml_text: str, what: str = "entsoe") -> Series:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ProviderError(f"{what}: malformed XML: {exc}") from None
    if _local(root.tag) == "Acknowledgement_MarketDocument":
        reason = " ".join(e.text or "" for e in root.iter() if _local(e.tag) == "text")
        raise ProviderError(f"{what}: no data: {reason.strip() or 'acknowledgement without reason'}")
    points: list[tuple[datetime, float | None]] = []
    step = None
    currency = None
    try:
        for series in (e for e in root.iter() if _local(e.tag) == "TimeSeries"):
            for child in series.iter():
                if _local(child.tag) == "currency_Unit.name":
                    currency = (child.text or "").strip()
                if _local(child.tag) == "price_Measure_Unit.name" and (child.text or "").strip() != "MWH":
                    raise ProviderError(f"{what}: price per {child.text!r}, expected MWH")
            for period in (e for e in series.iter() if _local(e.tag) == "Period"):
                fields = {_local(e.tag): e for e in period.iter()}
                start = utc(fields["start"].text or "")
                end = utc(fields["end"].text or "")
                step = RESOLUTION_S[(fields["resolution"].text or "").strip()]
                count = int((end - start).total_seconds() // step)
                by_position = {}
                for point in (e for e in period if _local(e.tag) == "Point"):
                    values = {_local(e.tag): (e.text or "").strip() for e in point}
                    by_position[int(values["position"])] = float(values["price.amount"])
                last = None
                for position in range(1, count + 1):  # A03: a missing position repeats the one before
                    last = by_position.get(position, last)
                    points.append((start + timedelta(seconds=(position - 1) * step), last))
    except (KeyError, ValueError) as exc:
        raise ProviderError(f"{what}: unexpected document ({exc!r})") from None
    if step is None:
        raise ProviderError(f"{what}: empty forecast")
    return from_points(what, "price", points, step, currency or "EUR", hold=True)


class Entsoe(HttpProvider):
    kind = "entsoe"
    default_url = "https://web-api.tp.entsoe.eu/api"

    def region(self) -> str:
        return self.settings.area

    def fetch(self, start: datetime, end: datetime) -> list[Series]:
        params = {"documentType": "A44", "in_Domain": self.settings.area, "out_Domain": self.settings.area,
                  "periodStart": start.strftime("%Y%m%d%H00"), "periodEnd": end.strftime("%Y%m%d%H00"),
                  "securityToken": secret(self.settings.token_env, self.settings.token_file, self.name)}
        return [parse(self.get(params=params).text, self.name)]
